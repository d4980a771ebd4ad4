"""A real one-node SLURM cluster on this host, for the batch tests and the benchmark.

:func:`cluster` starts ``munged`` (its own key, socket, pid, seed and log files), then
``slurmctld`` and ``slurmd`` in the foreground (``-D``) with a generated ``slurm.conf``, all in
one temporary folder, waits until ``sinfo`` shows the node idle, and yields a :class:`Cluster`.
On exit it stops every daemon by its pid and checks that each is gone.

The clients (``sbatch``, ``squeue``, ``sinfo``, ``scontrol``) find the cluster through
``SLURM_CONF`` (set in ``os.environ`` while the cluster runs), and reach ``munged`` through
``AuthInfo=socket=...`` in that file. There is no ``slurmdbd`` (no accounting database):
``JobCompType=jobcomp/filetxt`` writes each finished job to a text file instead.

Settings from SLURM 22.05's ``slurm.conf(5)``: ``ProctrackType=proctrack/linuxproc`` and
``TaskPlugin=task/none`` need no cgroup; ``SelectType=select/cons_tres`` with ``CR_Core`` hands
out cores; the node line is ``slurmd -C``'s own (its real CPUs and memory). The daemons talk
over 127.0.0.1 on ports picked free at start (not SLURM's default 6817/6818). SLURM has no
setting to bind ``slurmctld``/``slurmd`` to one address: they listen on every interface while
the tests run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The daemons and clients the cluster needs (Debian's munge and slurm-wlm).
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")
PARTITION = "debug"
CLUSTER_NAME = "kilosort-docker-test"
#: How long the daemons get to start (slurmd registers within seconds here).
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20


@dataclass(frozen=True)
class Cluster:
    """A running one-node cluster.

    Attributes:
        conf: its ``slurm.conf`` (what ``SLURM_CONF`` names).
        folder: the temporary folder holding its state, spool, logs and munge files.
        partition: the only partition, holding the node.
        node: the node's name (this host's, as ``slurmd -C`` gives it).
        cpus: CPUs of the node.
        memory_mb: RealMemory of the node, in MB.
        jobcomp: the jobcomp/filetxt file (one line per finished job).
        pids: name -> pid of each daemon.
    """

    conf: Path
    folder: Path
    partition: str
    node: str
    cpus: int
    memory_mb: int
    jobcomp: Path
    pids: dict[str, int]


def missing_programs() -> list[str]:
    """The programs of :data:`PROGRAMS` not on PATH (scripts/setup-host.sh installs them)."""
    return [p for p in PROGRAMS if shutil.which(p) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_line() -> dict[str, str]:
    """``slurmd -C``'s node description (NodeName, CPUs, ..., RealMemory) as a dict."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0]
    return dict(field.split("=", 1) for field in first.split())


def write_conf(folder: Path, *, node: dict[str, str], munge_socket: Path) -> Path:
    """Write ``slurm.conf`` for a one-node cluster into ``folder``; returns its path."""
    ports = (_free_port(), _free_port())
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir(exist_ok=True)
    node_fields = " ".join(f"{k}={v}" for k, v in node.items() if k not in ("NodeName", "UpTime"))
    lines = [
        f"ClusterName={CLUSTER_NAME}",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "ReturnToService=2",
        # a finished job stays in slurmctld's memory (scontrol show job) this long
        "MinJobAge=600",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/linux",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={folder / 'log' / 'jobcomp.txt'}",
        "InactiveLimit=0",
        "KillWait=5",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        f"NodeName={node['NodeName']} NodeAddr=127.0.0.1 NodeHostname={node['NodeName']} "
        f"{node_fields} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node['NodeName']} Default=YES MaxTime=INFINITE State=UP",
    ]
    conf = folder / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _start(argv: list[str], log_file: Path, env: dict[str, str]) -> subprocess.Popen:
    log.debug("starting %s", " ".join(argv))
    with log_file.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _stop(process: subprocess.Popen, name: str) -> None:
    """SIGTERM the daemon by pid, SIGKILL after :data:`STOP_TIMEOUT_S`; raise if it lives on."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT_S)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(process.pid, os.WNOHANG)
    if Path(f"/proc/{process.pid}").exists() and process.poll() is None:
        raise RuntimeError(f"{name} (pid {process.pid}) did not stop")


def _cancel_all(env: dict[str, str]) -> None:
    """Cancel every job of the cluster and wait (up to :data:`STOP_TIMEOUT_S`) until squeue
    lists none, so no job step outlives the daemons."""
    subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        listed = subprocess.run(
            ["squeue", "--noheader", "--format", "%i"], env=env, capture_output=True, text=True
        )
        if listed.returncode != 0 or not listed.stdout.strip():
            return
        time.sleep(0.5)


def _stepds_of(folder: Path) -> list[int]:
    """Pids of the ``slurmstepd`` processes holding a file open under ``folder``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "cmdline").read_bytes().startswith(b"slurmstepd"):
                continue
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith(str(folder)) for link in links):
            found.append(int(proc.name))
    return found


def _wait_for(check, what: str, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tails = "\n".join(
        f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists()
    )
    raise RuntimeError(f"{what} within {timeout:.0f} s\n{tails}")


def node_state(env: dict[str, str]) -> str:
    """The node's state as ``sinfo -h -o %T`` gives it ('' if sinfo fails)."""
    done = subprocess.run(
        ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


@contextlib.contextmanager
def cluster(parent: Path | None = None) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd (root) in a temporary folder; yield the Cluster with
    ``SLURM_CONF`` set in ``os.environ``; stop the daemons by pid and remove the folder after.

    Raises RuntimeError (with the daemons' log tails) if the node is not idle within
    :data:`START_TIMEOUT_S`, or if a daemon does not stop.
    """
    folder = Path(tempfile.mkdtemp(prefix="kilosort-docker-slurm-", dir=parent))
    folder.chmod(0o755)  # munged checks the permissions of the folders on the way to its files
    munge = folder / "munge"
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = munge / "munge.socket"
    node = node_line()
    conf = write_conf(folder, node=node, munge_socket=munge_socket)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    processes: dict[str, subprocess.Popen] = {}
    old_conf = os.environ.get("SLURM_CONF")
    try:
        processes["munged"] = _start(
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={munge_socket}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--seed-file={munge / 'munged.seed'}",
                f"--log-file={munge / 'munged.log'}",
            ],
            folder / "log" / "munged.out",
            env,
        )
        _wait_for(
            munge_socket.exists,
            "munged did not open its socket",
            START_TIMEOUT_S,
            [munge / "munged.log", folder / "log" / "munged.out"],
        )
        logs = [folder / "log" / n for n in ("slurmctld.log", "slurmd.log", "daemons.out")]
        processes["slurmctld"] = _start(["slurmctld", "-D", "-i"], logs[2], env)
        processes["slurmd"] = _start(["slurmd", "-D"], logs[2], env)
        _wait_for(
            lambda: node_state(env) == "idle",
            "the SLURM node did not become idle",
            START_TIMEOUT_S,
            logs,
        )
        os.environ["SLURM_CONF"] = str(conf)
        yield Cluster(
            conf=conf,
            folder=folder,
            partition=PARTITION,
            node=node["NodeName"],
            cpus=int(node["CPUs"]),
            memory_mb=int(node["RealMemory"]),
            jobcomp=folder / "log" / "jobcomp.txt",
            pids={name: p.pid for name, p in processes.items()},
        )
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        errors = []
        if "slurmctld" in processes and processes["slurmctld"].poll() is None:
            _cancel_all(env)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in processes:
                try:
                    _stop(processes[name], name)
                except RuntimeError as exc:
                    errors.append(str(exc))
        # a job step's slurmstepd outlives slurmd (it is re-parented to init): stop those of
        # this cluster, known by the files they hold open in its folder
        stray = _stepds_of(folder)
        for pid in stray:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if stray:
            log.warning("killed slurmstepd pids %s: they outlived slurmd", stray)
        shutil.rmtree(folder, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))
