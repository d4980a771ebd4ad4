/* STAND-IN written for kilosort-docker's tests; not MathWorks code. See the README.md at the
 * root of this stand-in tree. Each mex gets one entry point reporting the API it was built
 * against; the values here are arbitrary markers. */
#include "mex.h"

#ifndef MATLAB_MEXCMD_RELEASE
#error "stand-in: mexcuda compiles this file with -DMATLAB_MEXCMD_RELEASE"
#endif

void mexfilerequiredapiversion(unsigned int *built_by_release, unsigned int *target_api_version)
{
    *built_by_release = 0x4b5344u;  /* "KSD" */
    *target_api_version = 0x20170000u;
}
