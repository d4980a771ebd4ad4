/* STAND-IN libmx written for kilosort-docker's tests; not MathWorks code. */
#include <stddef.h>
#include "matrix.h"

double mxGetScalar(const mxArray *array) { (void)array; return 0.0; }
size_t mxGetNumberOfElements(const mxArray *array) { (void)array; return 0; }
mxArray *mxCreateDoubleScalar(double value) { (void)value; return NULL; }
mxArray *mxCreateNumericArray(mwSize ndim, const mwSize *dims, mxClassID classid,
                              mxComplexity complexity)
{
    (void)ndim; (void)dims; (void)classid; (void)complexity;
    return NULL;
}
void *mxGetData(const mxArray *array) { (void)array; return NULL; }
