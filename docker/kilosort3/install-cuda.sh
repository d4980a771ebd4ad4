#!/bin/sh
# The mex-build stage's toolchain. /tmp/mex-toolkit/mode says where the CUDA toolkit comes from:
#   none     committed binaries are used; nothing to install
#   context  a toolkit folder was copied into CUDA_ROOT from the build context
#   runfile  NVIDIA's installer from CUDA_INSTALLER_URL, checked against CUDA_INSTALLER_SHA256
# It also makes sure make, python3 and the host compiler are there.
set -eu
mode=$(cat /tmp/mex-toolkit/mode)
if [ "$mode" = none ]; then
    echo "mex: committed binaries; no CUDA toolkit needed"
    exit 0
fi
: "${CUDA_ROOT:?}" "${HOST_COMPILER:?}"
need=""
command -v make >/dev/null 2>&1 || need="$need make"
command -v python3 >/dev/null 2>&1 || need="$need python3"
command -v "$HOST_COMPILER" >/dev/null 2>&1 || need="$need $HOST_COMPILER"
if [ "$mode" = runfile ] && ! command -v curl >/dev/null 2>&1; then
    need="$need curl ca-certificates"
fi
if [ -n "$need" ]; then
    echo "mex: installing$need"
    apt-get update -qq
    # shellcheck disable=SC2086  # a list of package names
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
    rm -rf /var/lib/apt/lists/*
fi
case "$mode" in
    context)
        echo "mex: CUDA toolkit copied in from the build context" ;;
    runfile)
        if [ -z "${CUDA_INSTALLER_SHA256}" ]; then
            echo "mex: no pinned sha256 for ${CUDA_INSTALLER_URL}: pin one in the profile, or build with --cuda-toolkit DIR" >&2
            exit 1
        fi
        echo "mex: downloading ${CUDA_INSTALLER_URL}"
        curl -fsSL -o /tmp/cuda.run "${CUDA_INSTALLER_URL}"
        echo "${CUDA_INSTALLER_SHA256}  /tmp/cuda.run" | sha256sum -c -
        sh /tmp/cuda.run --silent --toolkit --toolkitpath="${CUDA_ROOT}" --no-man-page --override
        rm -f /tmp/cuda.run ;;
    *)
        echo "mex: unknown toolkit mode '$mode'" >&2
        exit 1 ;;
esac
"${CUDA_ROOT}/bin/nvcc" --version | tail -n 2
