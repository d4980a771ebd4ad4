function run_kilosort3(data_dir, out_dir)
    % RUN_KILOSORT3 Sort one recording with Kilosort 3 and write phy output.
    %
    %   run_kilosort3(DATA_DIR, OUT_DIR) reads ops.mat, chanMap.mat and the
    %   int16 binary named in ops.fbinary from DATA_DIR, sorts with the
    %   Kilosort 3.0.2 pipeline and writes the phy files, rez.mat (without
    %   the large per-spike arrays) and ks_run.json into OUT_DIR.
    %
    %   OUT_DIR is a phy folder phy can open: it keeps Kilosort's whitened,
    %   filtered copy of the recording (ops.fproc, temp_wh.dat) and params.py
    %   names it relative to the folder (rezToPhy2 would write the absolute
    %   in-container path).
    %
    %   Path-free: relative names in ops are resolved against DATA_DIR and
    %   OUT_DIR at run time. Kilosort 3 and npy-matlab must be on the MATLAB
    %   path, or their folders named by the environment variables
    %   KILOSORT3_PATH (or KILOSORT_DIR) and NPY_MATLAB_DIR. Runs on the
    %   current GPU with stable mode, rng and gpurng seeded from ops.seed.
    %   Errors end `matlab -batch` with a non-zero exit status.

    if nargin ~= 2
        error('run_kilosort3:usage', 'usage: run_kilosort3(data_dir, out_dir)');
    end
    data_dir = char(data_dir);
    out_dir = char(out_dir);
    if ~isfolder(data_dir)
        error('run_kilosort3:noData', 'data folder %s does not exist', data_dir);
    end
    if ~isfolder(out_dir)
        mkdir(out_dir);
    end

    add_env_folders({'KILOSORT3_PATH', 'KILOSORT_DIR', 'NPY_MATLAB_DIR'});
    check_functions({'preprocessDataSub', 'datashift2', 'extract_spikes', ...
                     'template_learning', 'trackAndSort', 'final_clustering', ...
                     'find_merges', 'rezToPhy2', 'writeNPY'});

    ops = load_ops(data_dir, out_dir);
    fprintf('run_kilosort3: %d channels, NT = %d, binary %s\n', ...
            ops.NchanTOT, ops.NT, ops.fbinary);

    gpu = gpuDevice();
    seed = 1;
    if isfield(ops, 'seed')
        seed = double(ops.seed);
    end
    rng(seed, 'twister');
    % Generator names gpurng documents: 'Threefry', 'Philox', 'CombRecursive'
    % (MathWorks, Parallel Computing Toolbox, gpurng reference page).
    gpurng(seed, 'Philox');
    fprintf('run_kilosort3: GPU %s (compute %s)\n', gpu.Name, gpu.ComputeCapability);

    started = tic;
    rez = preprocessDataSub(ops);
    rez = datashift2(rez, 1);
    [rez, st3, tF] = extract_spikes(rez);
    rez = template_learning(rez, tF, st3);
    [rez, st3, tF] = trackAndSort(rez);
    rez = final_clustering(rez, tF, st3);
    rez = find_merges(rez, 1);
    % rezToPhy2 leaves an existing params.py alone: write a fresh one.
    params_file = fullfile(out_dir, 'params.py');
    if isfile(params_file)
        delete(params_file);
    end
    rezToPhy2(rez, out_dir);
    seconds = toc(started);

    save_rez(rez, out_dir);
    point_phy_at_whitened(params_file, ops.fproc, rez.ops.Nchan);
    write_run_info(out_dir, seconds, gpu, size(rez.st3, 1));
    fprintf('run_kilosort3: sorted in %.1f s\n', seconds);
end

function point_phy_at_whitened(params_file, fproc, n_channels)
    % POINT_PHY_AT_WHITENED Make params.py name the whitened file relative to
    % the phy folder.
    %
    %   Kilosort 3.0.2's utils/rezToPhy2.m writes dat_path = ops.fproc (an
    %   absolute path inside the container), n_channels_dat = ops.Nchan,
    %   dtype 'int16' and hp_filtered = True: all true of the whitened file
    %   ops.fproc, which is kept next to params.py. phy resolves a relative
    %   dat_path against the folder of params.py.
    [folder, name, ext] = fileparts(fproc);
    if ~strcmp(folder, fileparts(params_file))
        error('run_kilosort3:fproc', ...
              'the whitened file %s is not in the phy folder', fproc);
    end
    info = dir(fproc);
    if isempty(info) || mod(info.bytes, 2 * n_channels) ~= 0
        error('run_kilosort3:fproc', ...
              'the whitened file %s is missing or not %d int16 channels', ...
              fproc, n_channels);
    end
    lines = splitlines(string(fileread(params_file)));
    is_path = startsWith(lines, 'dat_path');
    if nnz(is_path) ~= 1
        error('run_kilosort3:params', 'no single dat_path line in %s', params_file);
    end
    lines(is_path) = "dat_path = '" + string([name, ext]) + "'";
    fid = fopen(params_file, 'w');
    if fid < 0
        error('run_kilosort3:write', 'cannot rewrite %s', params_file);
    end
    cleaner = onCleanup(@() fclose(fid));
    fprintf(fid, '%s\n', strjoin(lines(strlength(lines) > 0), newline));
end

function add_env_folders(variables)
    % ADD_ENV_FOLDERS Add each folder named by these environment variables,
    % with its subfolders, to the MATLAB path.
    for k = 1:numel(variables)
        folder = getenv(variables{k});
        if ~isempty(folder) && isfolder(folder)
            addpath(genpath(folder));
        end
    end
end

function check_functions(names)
    % CHECK_FUNCTIONS Error naming the first function that MATLAB cannot find.
    for k = 1:numel(names)
        if exist(names{k}, 'file') == 0
            error('run_kilosort3:missing', ...
                  ['%s not found: put Kilosort 3 and npy-matlab on the path ', ...
                   'or set KILOSORT3_PATH'], names{k});
        end
    end
end

function ops = load_ops(data_dir, out_dir)
    % LOAD_OPS Read ops.mat and make its file names absolute.
    ops_file = fullfile(data_dir, 'ops.mat');
    if ~isfile(ops_file)
        error('run_kilosort3:noOps', '%s does not exist', ops_file);
    end
    loaded = load(ops_file, 'ops');
    ops = loaded.ops;
    ops.fbinary = fullfile(data_dir, char(ops.fbinary));
    ops.chanMap = fullfile(data_dir, char(ops.chanMap));
    ops.fproc = fullfile(out_dir, char(ops.fproc));
    ops.root = data_dir;
    ops.saveDir = out_dir;
    ops.useStableMode = 1;
    ops.GPU = 1;
    if ~isfield(ops, 'trange')
        ops.trange = [0 Inf];
    end
    if ~isfile(ops.fbinary)
        error('run_kilosort3:noBinary', 'binary %s does not exist', ops.fbinary);
    end
    if ~isfile(ops.chanMap)
        error('run_kilosort3:noChanMap', 'channel map %s does not exist', ops.chanMap);
    end
end

function save_rez(rez, out_dir)
    % SAVE_REZ Save rez.mat without the per-spike feature projections.
    big = {'cProj', 'cProjPC', 'cProjPC_A', 'cProj_A', 'dWU', 'UA', 'iNeigh', 'iNeighPC'};
    for k = 1:numel(big)
        if isfield(rez, big{k})
            rez.(big{k}) = [];
        end
    end
    rez = gather_struct(rez);
    if isfield(rez, 'ops') && isstruct(rez.ops)
        rez.ops = gather_struct(rez.ops);
    end
    save(fullfile(out_dir, 'rez.mat'), 'rez', '-v7.3');
end

function s = gather_struct(s)
    % GATHER_STRUCT Move any gpuArray fields to host memory before saving.
    names = fieldnames(s);
    for k = 1:numel(names)
        value = s.(names{k});
        if isa(value, 'gpuArray')
            s.(names{k}) = gather(value);
        end
    end
end

function write_run_info(out_dir, seconds, gpu, n_spikes)
    % WRITE_RUN_INFO Write ks_run.json: sorter, device, seconds, spike count.
    info = struct('sorter', 'kilosort3', 'device', 'cuda', ...
                  'gpu', gpu.Name, 'seconds', seconds, ...
                  'n_spikes', n_spikes, 'matlab', version());
    fid = fopen(fullfile(out_dir, 'ks_run.json'), 'w');
    if fid < 0
        error('run_kilosort3:write', 'cannot write ks_run.json in %s', out_dir);
    end
    cleaner = onCleanup(@() fclose(fid));
    fprintf(fid, '%s\n', jsonencode(info));
end
