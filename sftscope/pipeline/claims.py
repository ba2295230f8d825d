"""Claims: who is working on what in a run folder, valid across hosts on a shared filesystem.

A claim is a small JSON file (host, pid, a random token, the time of its last heartbeat) created
with ``O_EXCL``, so of two processes racing for it exactly one wins, on a local disk and on
NFS alike. While held, a daemon thread refreshes the heartbeat. A claim is stale, and taken
over, when its holder is a dead process on this host (e.g. after ``kill -9``) or when its
heartbeat is older than the timeout (a host that died or lost the filesystem). The driver
claims the run folder (``.lock``); each worker claims the job it runs (``claims/<job>.json``).
A driver that takes a dead driver's ``.lock`` over also frees the job claims that process held
itself (the local executor runs jobs in the driver): they died with it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_json


class Claim:
    def __init__(self, path: Path, timeout_s: float = 600.0, what: str = "job"):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.what = what
        self.token = secrets.token_hex(8)
        self.taken_from: dict[str, Any] | None = None  # the stale holder it replaced, if any
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "scheduler_job": scheduler_job(),
            "heartbeat": time.time(),
            "timeout_s": self.timeout_s,
        }

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # being written, or garbage: judged by its age

    def stale(self, rec: dict[str, Any]) -> bool:
        if rec.get("scheduler_job") and rec["scheduler_job"] == scheduler_job():
            return True  # our own claim from before SLURM requeued this job
        if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int):
            return rec["pid"] != os.getpid() and not _alive(rec["pid"])
        beat = rec.get("heartbeat")
        if not isinstance(beat, int | float):
            beat = self.path.stat().st_mtime if self.path.exists() else 0.0
        return time.time() - beat > self.timeout_s

    def _create(self) -> bool:
        """Create the claim file if there is none (atomic: one of two racers wins)."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._record(), f)
        return True

    def acquire(self) -> Claim:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                break
            rec = self.holder()
            if rec is None:
                continue  # released meanwhile: try again
            if not self.stale(rec):
                age = time.time() - rec.get("heartbeat", time.time())
                raise SftscopeError(
                    f"{self.path}: the {self.what} is held by {rec.get('host')} pid "
                    f"{rec.get('pid')} (heartbeat {age:.0f} s ago); wait for it, or delete "
                    f"the file if that process is gone"
                )
            atomic_write_json(self.path, self._record())  # take the stale one over
            time.sleep(0.05)  # a racing taker's write lands too; the last one wins
            if (self.holder() or {}).get("token") == self.token:
                self.taken_from = rec
                break
        else:
            raise SftscopeError(f"{self.path}: could not claim the {self.what}")
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        every = max(0.5, min(60.0, self.timeout_s / 4))
        while not self._stop.wait(every):
            if (self.holder() or {}).get("token") != self.token:
                return  # taken over (we were judged dead): stop touching it
            atomic_write_json(self.path, self._record())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if (self.holder() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def free_claims_of(folder: Path, dead: dict[str, Any]) -> list[Path]:
    """Delete the claims in ``folder`` held by the process ``dead`` (host and pid of a claim
    judged stale): the ones it held itself are as dead as it, whatever their own heartbeat
    says (it stopped at most a beat later). Other processes' claims are left to be judged."""
    if not dead.get("host") or not isinstance(dead.get("pid"), int):
        return []
    freed = []
    for path in sorted(Path(folder).glob("*.json")):
        rec = Claim(path).holder() or {}
        if (rec.get("host"), rec.get("pid")) == (dead["host"], dead["pid"]):
            path.unlink(missing_ok=True)
            freed.append(path)
    return freed


def scheduler_job() -> str | None:
    """The SLURM job (array task) this process runs in; a requeued job keeps its id."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
