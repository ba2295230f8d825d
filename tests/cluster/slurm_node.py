"""A one-node SLURM cluster on this machine for the cluster tests: munged, slurmctld and slurmd
started as processes of the test run from a ``slurm.conf`` written for this host (its name,
cores and memory, one partition, settings that need no cgroups, private ports and state under
a temporary folder), and stopped by pid: nothing else on the machine is touched."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psutil

DAEMONS = ("munged", "slurmctld", "slurmd")


def missing() -> str | None:
    """Why a node cannot start here (a reason for ``pytest.skip``), or None."""
    absent = [d for d in (*DAEMONS, "sbatch", "squeue") if shutil.which(d) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (make test-cluster installs slurm-wlm, munge)"
    if os.geteuid() != 0:
        return "the SLURM daemons of the test cluster run as root"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmNode:
    """Start with :meth:`start`, point clients at it with :attr:`env` (``SLURM_CONF``), end
    with :meth:`stop`; ``kill_wait`` is SLURM's ``KillWait`` (seconds from SIGTERM to SIGKILL
    when a job is cancelled or times out)."""

    def __init__(self, root: Path, kill_wait: int = 2):
        self.root, self.kill_wait = Path(root), kill_wait
        self.host = socket.gethostname().split(".")[0]
        self.cpus = psutil.cpu_count(logical=True) or 1
        self.mem_mb = int(psutil.virtual_memory().total / 2**20 * 0.8)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def write_conf(self) -> None:
        state, spool, logs = (self.root / d for d in ("state", "spool", "logs"))
        for d in (state, spool, logs):
            d.mkdir(parents=True, exist_ok=True)
        lines = {
            "ClusterName": "sftscope-test",
            "SlurmctldHost": self.host,
            "SlurmctldPort": free_port(),
            "SlurmdPort": free_port(),
            "SlurmUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            # cred_expire is also how long a requeued job waits to start again (default 120 s)
            "AuthInfo": f"socket={self.munge_socket},cred_expire=10",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "MpiDefault": "none",
            "ReturnToService": 2,
            "KillWait": self.kill_wait,
            "SlurmdTimeout": 10,  # a stopped slurmd makes its node DOWN within ~15 s
            "MinJobAge": 600,
            "SchedulerParameters": "sched_interval=1",
            "StateSaveLocation": state,
            "SlurmdSpoolDir": spool,
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": logs / "slurmctld.log",
            "SlurmdLogFile": logs / "slurmd.log",
        }
        node = f"NodeName={self.host} CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN"
        part = "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
        text = "".join(f"{k}={v}\n" for k, v in lines.items()) + f"{node}\n{part}\n"
        self.conf.write_text(text)

    def start(self, timeout: float = 60) -> SlurmNode:
        self.write_conf()
        munge = self.munge_socket.parent
        munge.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn(
            "munged",
            ["munged", "-F", "--force", f"--key-file={key}", f"--socket={self.munge_socket}"]
            + [f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}"]
            + [f"--seed-file={munge / 'munged.seed'}"],
        )
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(self.idle, timeout, "the node to be idle")
        return self

    def idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%t", check=False)
        return out.strip() in ("idle", "mix", "alloc")

    def run(self, *cmd: str, check: bool = True) -> str:
        """A SLURM client command (``squeue``, ``scontrol``, ...) against this node."""
        res = subprocess.run(
            cmd, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")
        return res.stdout

    def stop_daemon(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart_slurmd(self, timeout: float = 120) -> None:
        """Start slurmd again and wait for its node to be back (``ReturnToService=2``)."""
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(self.idle, timeout, "the node to be back")

    def wait_empty(self, timeout: float = 120) -> None:
        """Wait for the queue to hold no job (ended ones aside)."""
        self._wait(lambda: not self.run("squeue", "-h", check=False).strip(), timeout, "no job")

    def stop(self) -> None:
        """Cancel the node's jobs (their steps outlive slurmd), then stop what :meth:`start`
        started, by pid."""
        if self.procs.get("slurmctld") is not None:
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).split()
            if jobs:
                self.run("scancel", *{j.split("_")[0] for j in jobs}, check=False)
                end = time.monotonic() + self.kill_wait + 20
                while self.run("squeue", "-h", check=False).strip() and time.monotonic() < end:
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            self.stop_daemon(name)

    def log(self, name: str) -> str:
        path = self.root / ("munge/munged.log" if name == "munged" else f"logs/{name}.log")
        return path.read_text()[-2000:] if path.exists() else ""

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.root / f"{name}.out", "ab")  # noqa: SIM115 - the daemon owns it
        self.procs[name] = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited: {self.log(dead[0])}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}: {self.log('slurmctld')}")
