"""A throw-away single-node Slurm cluster (munged + slurmctld + slurmd) for tests and trials.

Uses the Debian ``slurm-wlm`` and ``munge`` binaries; every file (key, config, state, spool,
logs, sockets) lives in one temporary folder, ports are picked free, so it never touches a
system Slurm. Needs root (slurmd launches jobs as their user).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from pathstrat.errors import PathstratError

log = logging.getLogger(__name__)

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


class MiniClusterError(PathstratError, RuntimeError):
    """The throw-away Slurm cluster did not come up."""


def missing_requirements() -> str | None:
    """Why a mini cluster cannot start here (None when it can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "the single-node Slurm test cluster needs root (slurmd starts jobs as their user)"
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return (f"Slurm/munge binaries not found: {', '.join(absent)} "
                "(install with: apt-get install slurm-wlm munge, or bash scripts/setup.sh --test)")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_mem_mb() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available / 2**20)
    except ImportError:  # pragma: no cover
        return 2048


class MiniCluster:
    """Handle of a running mini cluster: ``env`` holds SLURM_CONF for client commands."""

    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root = Path(root)
        self.cpus = cpus
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # -- configuration ------------------------------------------------------------------------
    def _write_files(self) -> None:
        for d in ("munge", "state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        mem = max(256, int(_free_mem_mb() * 0.5))
        r = self.root
        self.conf.write_text(f"""\
ClusterName=pathstrat-test
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=600
SchedulerParameters=sched_interval=1
SlurmctldParameters=enable_configless
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    # -- processes ----------------------------------------------------------------------------
    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen:
        out = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 - kept for the process
        p = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def start(self, timeout_s: float = 60.0) -> MiniCluster:
        """Write the config, start the three daemons and wait (bounded) until a node is idle."""
        self._write_files()
        r = self.root
        self._spawn(["munged", "-F", "--force", f"--socket={self.munge_socket}",
                     f"--key-file={r / 'munge' / 'munge.key'}", f"--pid-file={r / 'munge' / 'munged.pid'}",
                     f"--log-file={r / 'log' / 'munged.log'}", f"--seed-file={r / 'munge' / 'seed'}"],
                    "munged")
        self._wait(lambda: self.munge_socket.exists(), timeout_s, "munged")
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), timeout_s, "slurmctld")
        self._spawn(["slurmd", "-D", "-f", str(self.conf), "-N", "localhost"], "slurmd")
        self._wait(lambda: self._ok(["sinfo", "-h", "-o", "%t"], "idle"), timeout_s, "slurmd")
        log.info("mini Slurm cluster up in %s", r)
        return self

    def _ok(self, argv: list[str], needle: str) -> bool:
        try:
            res = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0 and needle in res.stdout

    def _wait(self, cond, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while time.monotonic() < deadline:
            if cond():
                return
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                break
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        raise MiniClusterError(f"{what} did not come up within {timeout_s:.0f} s; logs:\n{self.logs()}")

    def logs(self, tail: int = 30) -> str:
        """The last lines of every daemon log (for error messages)."""
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def cancel_jobs(self, timeout_s: float = 10.0) -> None:
        """Cancel every job still queued or running, so no job step outlives the daemons."""
        import getpass

        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        run = functools.partial(subprocess.run, env=env, capture_output=True, text=True, timeout=10)
        try:
            run(["scancel", "--user", getpass.getuser()])
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and run(["squeue", "-h", "-o", "%i"]).stdout.strip():
                time.sleep(0.2)
        except (OSError, subprocess.SubprocessError):  # daemons already gone: nothing to cancel
            pass

    def stop(self) -> None:
        """Cancel leftover jobs, then stop the daemons (slurmd, slurmctld, munged), escalating to SIGKILL."""
        if any(p.poll() is None for p in self.procs):
            self.cancel_jobs()
        for p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        self.procs.clear()


@contextlib.contextmanager
def mini_cluster(root: str | os.PathLike, cpus: int = 2, timeout_s: float = 60.0) -> Iterator[MiniCluster]:
    """Start a single-node Slurm cluster under ``root``; set SLURM_CONF while inside."""
    why = missing_requirements()
    if why:
        raise MiniClusterError(why)
    c = MiniCluster(Path(root), cpus=cpus)
    old = os.environ.get("SLURM_CONF")
    try:
        c.start(timeout_s)
        os.environ["SLURM_CONF"] = str(c.conf)
        yield c
    finally:
        c.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
