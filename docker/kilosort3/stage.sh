#!/bin/sh
# Runs in the kilosort3 image's mex-build stage: provide Kilosort's mex files in OUT/bin and
# their manifest in OUT/manifest.json. With IN/prebuilt (committed binaries) it checks each
# file's sha256 against the manifest; otherwise it compiles them (IN/compile).
set -eu
in=$1
out=$2
mkdir -p "$out/bin"
if [ -f "$in/prebuilt/manifest.json" ]; then
    echo "mex: using committed binaries; checking sha256 against the manifest"
    (cd "$in/prebuilt" && sha256sum --check --strict SHA256SUMS)
    cp "$in"/prebuilt/*.mexa64 "$out/bin/"
    cp "$in/prebuilt/manifest.json" "$out/manifest.json"
elif [ -f "$in/compile/build.sh" ]; then
    echo "mex: compiling"
    sh "$in/compile/build.sh" "$in/compile" "$out"
else
    echo "mex: neither committed binaries nor compile inputs were staged" >&2
    exit 1
fi
echo "mex: $(ls "$out/bin" | wc -l) files ready"
