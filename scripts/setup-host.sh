#!/usr/bin/env bash
# Set up a Debian/Ubuntu host for kilosort-docker: Docker Engine (started if not running),
# Debian's registry, debootstrap and tini (used by the tests), SLURM, munge and podman (the batch
# tests start their own daemons), git, and this package with its tools.
# Run as root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v debootstrap >/dev/null || need+=(debootstrap)
# the stand-in MATLAB base of the tests starts like MathWorks' image: tini -> run.sh
command -v tini-static >/dev/null || need+=(tini)
command -v git >/dev/null || need+=(git)
command -v gcc >/dev/null || need+=(gcc)
# the batch tests: a one-node SLURM cluster (started by the tests, not here) and podman
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
command -v podman >/dev/null || need+=(podman)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    echo "setup: starting dockerd (log: /var/log/kilosort-docker-dockerd.log)"
    # a dockerd that was killed leaves its pid file behind
    pgrep -x dockerd >/dev/null || rm -f /var/run/docker.pid
    # Only the local unix socket: no TCP listener.
    nohup dockerd --host unix:///var/run/docker.sock >/var/log/kilosort-docker-dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/kilosort-docker-dockerd.log" >&2; exit 1; }
fi

echo "setup: installing kilosort-docker and its tools (invoke, nox)"
python3 -m pip install --quiet --disable-pip-version-check -e .
echo "setup: done ($(docker version --format 'Docker Engine {{.Server.Version}}'))"
