#!/bin/bash
# STAND-IN for /bin/run.sh of MathWorks' image (tests only), modelled on matlab/build/run.sh in
# https://github.com/mathworks-ref-arch/container-images: only the image's `matlab` user or
# root may run it, it starts in ~/Documents/MATLAB, prints how MATLAB is licensed and hands
# every argument to `matlab`.
set -e
uid=$(id -u)
name=$(id -un 2>/dev/null || echo "$uid")
if [ "$uid" != 0 ] && [ "$name" != matlab ]; then
    echo "Running as user '$name' (uid $uid) is not supported: run as matlab or root." >&2
    exit 1
fi
cd ~/Documents/MATLAB || exit 1
if [ -n "${MLM_LICENSE_FILE:-}" ]; then
    case "$MLM_LICENSE_FILE" in
        *@*) echo "Licensing MATLAB using the license manager $MLM_LICENSE_FILE." ;;
        *) echo "Licensing MATLAB using license file $MLM_LICENSE_FILE." ;;
    esac
fi
exec matlab "$@"
