# nvcc's profile for this runfile-style layout (TEST IMAGE, written for kilosort-docker's tests;
# the variables are the ones NVIDIA's CUDA Compiler Driver NVCC documentation describes for
# nvcc.profile, "_HERE_" being the folder of nvcc itself).
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64"
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
