#!/bin/sh
# Runs in the kilosort3 image's mex-build stage: provide Kilosort's mex files in OUT/bin and
# their manifest in OUT/manifest.json. With IN/prebuilt (committed binaries) it checks each
# file's sha256 against the manifest; otherwise it compiles IN/src with IN/compile/plan.json,
# one make job per core; the first compiler error stops the build. IN/compile/mex.pyz is the
# kilosort_docker.mex package as one zipapp (standard library only), run isolated (-I) from
# the system python3.
set -eu
in=$1
out=$2
mkdir -p "$out"
if [ -f "$in/prebuilt/manifest.json" ]; then
    echo "mex: using committed binaries; checking sha256 against the manifest"
    mkdir -p "$out/bin"
    (cd "$in/prebuilt" && sha256sum --check --strict SHA256SUMS)
    cp "$in"/prebuilt/*.mexa64 "$out/bin/"
    cp "$in/prebuilt/manifest.json" "$out/manifest.json"
elif [ -f "$in/compile/plan.json" ]; then
    echo "mex: compiling with $(nproc) jobs"
    cd "$in/compile"
    python3 -I mex.pyz build --plan plan.json --out-dir "$out/bin" --jobs "$(nproc)"
    mv "$out/bin/manifest.json" "$out/manifest.json"
else
    echo "mex: neither committed binaries nor compile inputs were staged" >&2
    exit 1
fi
echo "mex: $(ls "$out/bin" | wc -l) files ready"
