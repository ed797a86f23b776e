"""Run claims: one file per run that names the orchestrator running it, taken atomically.

A claim is ``.claims/<run_id>.json``, created with ``O_CREAT | O_EXCL`` and
holding the owner's host name, process id, process start time, a random token
and a heartbeat time (seconds since the epoch) that the owner refreshes.

A claim is stale, and another orchestrator may take it over, when

- its owner ran on this host, and that process has exited or is a zombie;
- its owner ran on this host, and the pid now belongs to a process with another
  start time (pid reuse);
- its heartbeat is older than ``stale_after_s``. This is the only test for
  owners on other hosts, for example other Slurm jobs on a shared file system.

Every read-decide-write step (acquire, take over, heartbeat, release) holds an
exclusive ``flock`` on ``.claims/.lock`` and a lock shared by the threads of
this process, so two orchestrators never both take over the same stale claim.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

#: Default age in seconds after which a claim without a heartbeat update is stale.
STALE_AFTER_S = 120.0

#: Serialises claim operations between the threads of one process; ``flock``
#: alone does not where a network file system emulates it with per-process locks.
_PROCESS_LOCK = threading.Lock()


def process_start_time(pid: int) -> float | None:
    """Return the start time (seconds since the epoch) of process ``pid``, or None when it is gone or a zombie."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@dataclass(frozen=True)
class Owner:
    """Identity of the process that owns claims: host name, pid and process start time."""

    host: str
    pid: int
    start_time: float

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(host=socket.gethostname(), pid=pid, start_time=process_start_time(pid) or 0.0)


@dataclass(frozen=True)
class Claim:
    """The content of one claim file; ``heartbeat_at`` and ``claimed_at`` are seconds since the epoch."""

    run_id: str
    token: str
    host: str
    pid: int
    start_time: float
    claimed_at: float
    heartbeat_at: float

    @classmethod
    def from_json(cls, text: str) -> Claim:
        data = json.loads(text)
        return cls(
            run_id=str(data["run_id"]), token=str(data["token"]), host=str(data["host"]), pid=int(data["pid"]),
            start_time=float(data["start_time"]), claimed_at=float(data["claimed_at"]),
            heartbeat_at=float(data["heartbeat_at"]),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


class ClaimStore:
    """Claims of one experiment folder's runs, taken on behalf of one owner process."""

    def __init__(self, claims_dir: Path, *, stale_after_s: float = STALE_AFTER_S, owner: Owner | None = None):
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s = {stale_after_s!r}; expected a positive number of seconds")
        self.claims_dir = Path(claims_dir)
        self.stale_after_s = stale_after_s
        self.owner = owner or Owner.current()
        self.claims_dir.mkdir(parents=True, exist_ok=True)

    def path(self, run_id: str) -> Path:
        return self.claims_dir / f"{run_id}.json"

    def acquire(self, run_id: str) -> Claim | None:
        """Claim ``run_id`` by creating its claim file or taking over a stale one.

        Returns None when a live owner has the claim.
        """
        with self._locked():
            existing = self._read(run_id)
            if existing is not None and self.is_live(existing):
                return None
            if existing is not None or self.path(run_id).exists():
                logger.info("taking over stale claim of run %s (%s)", run_id, _describe(existing))
                self.path(run_id).unlink(missing_ok=True)
            return self._create(run_id)

    def release(self, claim: Claim) -> None:
        """Delete the claim file if it is still ``claim`` (same token); a claim taken over is left alone."""
        with self._locked():
            current = self._read(claim.run_id)
            if current is not None and current.token == claim.token:
                self.path(claim.run_id).unlink(missing_ok=True)

    def heartbeat(self, claims: list[Claim]) -> list[Claim]:
        """Refresh the heartbeat of ``claims``; return those that another owner took over meanwhile."""
        lost = []
        now = time.time()
        with self._locked():
            for claim in claims:
                current = self._read(claim.run_id)
                if current is None or current.token != claim.token:
                    lost.append(claim)
                    continue
                refreshed = Claim(**{**asdict(current), "heartbeat_at": now})
                self._replace(refreshed)
        return lost

    def is_live(self, claim: Claim) -> bool:
        """Tell whether the claim's owner may still be running the run (see the module docstring)."""
        # NOTE: heartbeats of other hosts are compared with this host's clock, so clocks that
        # differ by more than stale_after_s make live claims look stale (or dead ones live).
        if claim.host == self.owner.host:
            started = process_start_time(claim.pid)
            if started is None or abs(started - claim.start_time) > 1.0:
                return False
        return time.time() - claim.heartbeat_at <= self.stale_after_s

    def live_tokens(self) -> set[str]:
        """Return the tokens of every live claim; staging folders of other tokens are left over from dead runs."""
        tokens = set()
        with self._locked():
            for path in self.claims_dir.glob("*.json"):
                claim = self._read(path.stem)
                if claim is not None and self.is_live(claim):
                    tokens.add(claim.token)
        return tokens

    def remove_leftovers(self) -> None:
        """Delete temporary claim files left by an owner that died while refreshing a heartbeat."""
        with self._locked():
            for path in self.claims_dir.glob(".*.tmp"):
                path.unlink(missing_ok=True)

    def read(self, run_id: str) -> Claim | None:
        with self._locked():
            return self._read(run_id)

    def _read(self, run_id: str) -> Claim | None:
        """Read a claim; a file that cannot be parsed (its writer died while writing) counts as no claim."""
        try:
            return Claim.from_json(self.path(run_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("claim file %s is unreadable (%s); treating it as stale", self.path(run_id), err)
            return None

    def _create(self, run_id: str) -> Claim:
        now = time.time()
        claim = Claim(
            run_id=run_id, token=secrets.token_hex(8), host=self.owner.host, pid=self.owner.pid,
            start_time=self.owner.start_time, claimed_at=now, heartbeat_at=now,
        )
        descriptor = os.open(self.path(run_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(claim.to_json())
            stream.flush()
            os.fsync(stream.fileno())
        return claim

    def _replace(self, claim: Claim) -> None:
        temp_path = self.claims_dir / f".{claim.run_id}.{claim.token}.tmp"
        with open(temp_path, "w", encoding="utf-8") as stream:
            stream.write(claim.to_json())
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_path, self.path(claim.run_id))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with _PROCESS_LOCK, open(self.claims_dir / ".lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)


def _describe(claim: Claim | None) -> str:
    if claim is None:
        return "unreadable claim file"
    age = time.time() - claim.heartbeat_at
    return f"owner pid {claim.pid} on {claim.host}, heartbeat {age:.0f} s ago"
