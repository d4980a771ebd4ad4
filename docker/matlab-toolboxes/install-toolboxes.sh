#!/bin/sh
# Install MATLAB_PRODUCTS into MATLAB_ROOT with MPM; on failure show MPM's log, or say there is none.
set -eu
: "${MATLAB_RELEASE:?}" "${MATLAB_ROOT:?}" "${MATLAB_PRODUCTS:?}"
log=/tmp/mathworks_root.log
chmod 0755 /tmp/mpm/mpm
mkdir -p /tmp/mpm/tmp
echo "mpm: installing ${MATLAB_PRODUCTS} for MATLAB ${MATLAB_RELEASE} into ${MATLAB_ROOT}"
# shellcheck disable=SC2086  # MATLAB_PRODUCTS is a space-separated list
if ! TMPDIR=/tmp/mpm/tmp /tmp/mpm/mpm install --release="${MATLAB_RELEASE}" \
        --destination="${MATLAB_ROOT}" --products ${MATLAB_PRODUCTS}; then
    echo "mpm install failed for ${MATLAB_PRODUCTS}" >&2
    if [ -s "$log" ]; then
        echo "----- $log -----" >&2
        cat "$log" >&2
    else
        echo "mpm left no log ($log is missing or empty): it stopped before logging; check MPM_URL, the release name and access to MathWorks" >&2
    fi
    exit 1
fi
# MPM must have put each toolbox's folder into the MATLAB root.
missing=""
for product in ${MATLAB_PRODUCTS}; do
    case "$product" in
        Parallel_Computing_Toolbox) folder=parallel ;;
        Signal_Processing_Toolbox) folder=signal ;;
        Statistics_and_Machine_Learning_Toolbox) folder=stats ;;
        *) continue ;;
    esac
    [ -d "${MATLAB_ROOT}/toolbox/${folder}" ] || missing="$missing $product"
done
if [ -n "$missing" ]; then
    echo "mpm reported success but these toolboxes are absent from ${MATLAB_ROOT}/toolbox:${missing}" >&2
    exit 1
fi
rm -f "$log"
echo "mpm: done"
