function check_gpu()
    % CHECK_GPU Prove that MATLAB sees a GPU and can run a CUDA mex file.
    %
    %   check_gpu() prints gpuDevice's description, then runs mexGPUExample
    %   (MATLAB's own example, which doubles its input) on ones(4, 4) and
    %   expects all twos. It compiles mexGPUExample into a temporary folder
    %   with mexcuda when it is not on the path. Any failure is an error, so
    %   `matlab -batch check_gpu` exits non-zero.

    if gpuDeviceCount() < 1
        error('check_gpu:noGpu', 'MATLAB sees no GPU (is the container run with --gpus all?)');
    end
    gpu = gpuDevice();
    fprintf('GPU: %s, compute capability %s\n', gpu.Name, gpu.ComputeCapability);
    fprintf('driver %g, toolkit %g, memory %.1f GB\n', ...
            gpu.DriverVersion, gpu.ToolkitVersion, gpu.TotalMemory / 1e9);

    if exist('mexGPUExample', 'file') ~= 3
        build_example();
    end

    result = gather(mexGPUExample(ones(4, 4, 'gpuArray')));
    if ~isequal(result, 2 * ones(4, 4))
        disp(result);
        error('check_gpu:wrongResult', 'mexGPUExample(ones(4,4)) did not return all twos');
    end
    fprintf('mexGPUExample(ones(4,4)) returned all twos: GPU check passed\n');
end

function build_example()
    % BUILD_EXAMPLE Compile MATLAB's mexGPUExample.cu into a temporary folder.
    source = fullfile(matlabroot, 'toolbox', 'parallel', 'gpu', 'extern', ...
                      'src', 'mex', 'mexGPUExample.cu');
    if ~isfile(source)
        error('check_gpu:noSource', '%s not found (Parallel Computing Toolbox missing?)', source);
    end
    out = fullfile(tempdir, 'kilosort_docker_check_gpu');
    if ~isfolder(out)
        mkdir(out);
    end
    mexcuda('-outdir', out, source);
    addpath(out);
end
