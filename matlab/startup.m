function startup()
    % STARTUP Put Kilosort and npy-matlab on the MATLAB path when MATLAB starts.
    %   The kilosort3 images set MATLABPATH to this folder, so MATLAB runs this file at start.
    %   KILOSORT_DIR and NPY_MATLAB_DIR (environment) name the folders.

    kilosortDir = getenv('KILOSORT_DIR');
    if ~isempty(kilosortDir) && isfolder(kilosortDir)
        addpath(genpath(kilosortDir));
    end
    npyDir = getenv('NPY_MATLAB_DIR');
    if ~isempty(npyDir) && isfolder(fullfile(npyDir, 'npy-matlab'))
        addpath(fullfile(npyDir, 'npy-matlab'));
    elseif ~isempty(npyDir) && isfolder(npyDir)
        addpath(npyDir);
    end
end
