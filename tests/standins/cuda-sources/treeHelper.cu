// Written for kilosort-docker's tests: #include'd by mexTree.cu (like a helper file that is
// not a mex of its own). A kernel that launches kernels: needs relocatable device code.
#ifndef ENABLE_STABLEMODE
#error "treeHelper.cu is only used with -DENABLE_STABLEMODE"
#endif

__global__ void addOne(int *data, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] += 1;
}

// Splits [0, n) in halves down to `leaf` elements, then launches addOne on each leaf: a
// device-side launch tree (CUDA dynamic parallelism).
__global__ void launchTree(int *data, int n, int leaf)
{
    if (n <= leaf) {
        addOne<<<(n + 127) / 128, 128>>>(data, n);
        return;
    }
    int half = n / 2;
    launchTree<<<1, 1>>>(data, half, leaf);
    launchTree<<<1, 1>>>(data + half, n - half, leaf);
}
