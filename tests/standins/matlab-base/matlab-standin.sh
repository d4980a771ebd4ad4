#!/bin/bash
# STAND-IN for MATLAB (tests only): there is no MATLAB in this image. It refuses to start
# where real MATLAB could not (no MLM_LICENSE_FILE: the real image falls back to an interactive
# online login; /dev/shm under the 512 MB MathWorks' README asks for), and records what it was
# given as JSON: printed, and for `-batch "... run_kilosort3(DATA, OUT)"` also written to
# OUT/standin-matlab.json with OUT/standin-sort.txt, so tests can check who owns the outputs.
echo "stand-in MATLAB: no MATLAB here (arguments: $*)"
if [ -z "${MLM_LICENSE_FILE:-}" ]; then
    echo "stand-in MATLAB: no MLM_LICENSE_FILE (real MATLAB would ask for an online login)" >&2
    exit 2
fi
shm_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $2 }')
if [ -z "$shm_kb" ] || [ "$shm_kb" -lt 524288 ]; then
    echo "stand-in MATLAB: /dev/shm is ${shm_kb:-?} kB, under 512 MB (docker run --shm-size=512M)" >&2
    exit 3
fi
if [ -n "${CUDA_CACHE_PATH:-}" ] && ! touch "$CUDA_CACHE_PATH/.standin-matlab" 2>/dev/null; then
    echo "stand-in MATLAB: CUDA_CACHE_PATH $CUDA_CACHE_PATH is not writable" >&2
    exit 4
fi
interfaces=$(awk -F: 'NR > 2 { gsub(/ /, "", $1); printf "%s\"%s\"", sep, $1; sep = "," }' /proc/net/dev)
json=$(printf '{"user": "%s", "uid": %s, "home": "%s", "cwd": "%s", "MLM_LICENSE_FILE": "%s", "MW_CUDA_FORWARD_COMPATIBILITY": "%s", "CUDA_CACHE_PATH": "%s", "shm_kb": %s, "interfaces": [%s]}' \
    "$(id -un 2>/dev/null)" "$(id -u)" "$HOME" "$PWD" "${MLM_LICENSE_FILE}" \
    "${MW_CUDA_FORWARD_COMPATIBILITY:-}" "${CUDA_CACHE_PATH:-}" "$shm_kb" "$interfaces")
echo "stand-in MATLAB saw: $json"
statement=""
while [ $# -gt 0 ]; do
    if [ "$1" = "-batch" ]; then statement="$2"; shift; fi
    shift
done
case "$statement" in
    *run_kilosort3\(*)
        out=$(printf '%s' "$statement" | sed -n "s/.*run_kilosort3('[^']*', *'\([^']*\)').*/\1/p")
        if [ -n "$out" ]; then
            printf '%s\n' "$json" > "$out/standin-matlab.json"
            mkdir -p "$out/standin-sub"
            echo "stand-in sort output" > "$out/standin-sub/standin-sort.txt"
        fi
        ;;
esac
case "$statement" in
    *error\(*)
        echo "Error using batch"
        exit 1
        ;;
esac
exit 0
