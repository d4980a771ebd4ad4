#!/bin/sh
# Install MATLAB_PRODUCTS into MATLAB_ROOT with MPM; on failure show MPM's log, or say there is none.
# MPM logs to mathworks_<user>.log in its temporary folder: MathWorks' own Dockerfile
# (mathworks-ref-arch/matlab-dockerfile) prints /tmp/mathworks_root.log on failure, and MPM
# takes its temporary folder from TMPDIR (MPM.md in the same repository), set below. So both
# /tmp and TMPDIR are searched, for any user's log.
set -eu
: "${MATLAB_RELEASE:?}" "${MATLAB_ROOT:?}" "${MATLAB_PRODUCTS:?}"
tmpdir=/tmp/mpm/tmp
chmod 0755 /tmp/mpm/mpm
mkdir -p "$tmpdir"

# Print every non-empty mathworks_*.log in /tmp and in TMPDIR; fails when there is none.
print_logs() {
    found=""
    for log in /tmp/mathworks_*.log "$tmpdir"/mathworks_*.log; do
        [ -s "$log" ] || continue
        echo "----- $log -----" >&2
        cat "$log" >&2
        found=1
    done
    [ -n "$found" ]
}

echo "mpm: installing ${MATLAB_PRODUCTS} for MATLAB ${MATLAB_RELEASE} into ${MATLAB_ROOT}"
# shellcheck disable=SC2086  # MATLAB_PRODUCTS is a space-separated list
if ! TMPDIR="$tmpdir" /tmp/mpm/mpm install --release="${MATLAB_RELEASE}" \
        --destination="${MATLAB_ROOT}" --products ${MATLAB_PRODUCTS}; then
    echo "mpm install failed for ${MATLAB_PRODUCTS}" >&2
    if ! print_logs; then
        echo "mpm left no log (no mathworks_*.log in /tmp or $tmpdir): it stopped before logging; check MPM_URL, the release name and access to MathWorks" >&2
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
rm -f /tmp/mathworks_*.log "$tmpdir"/mathworks_*.log
echo "mpm: done"
