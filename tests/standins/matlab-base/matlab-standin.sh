#!/bin/sh
# STAND-IN for MATLAB (tests only): there is no MATLAB in this image.
echo "stand-in MATLAB: no MATLAB here (arguments: $*)"
exit 0
