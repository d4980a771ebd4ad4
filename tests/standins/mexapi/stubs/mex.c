/* STAND-IN libmex written for kilosort-docker's tests; not MathWorks code. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include "mex.h"

void mexErrMsgIdAndTxt(const char *identifier, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fprintf(stderr, "%s: ", identifier);
    vfprintf(stderr, format, args);
    va_end(args);
    abort();
}

int mexPrintf(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    int n = vprintf(format, args);
    va_end(args);
    return n;
}
