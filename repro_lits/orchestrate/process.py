"""One run in a fresh process: start ``python -m repro_lits.worker SPEC``, pass on its events, stop it on request.

Every run gets its own interpreter, so no global state (RNG states, thread
settings, a CUDA context, deterministic-algorithm flags) leaks from one run
into the next. The worker runs in its own process group, so stopping a run
also stops any process it started. On Linux a small launcher sets
``prctl(PR_SET_PDEATHSIG, SIGKILL)`` before it execs the worker: the kernel then
kills the worker when the thread that started it exits, so runs do not outlive
an orchestrator killed with SIGKILL.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro_lits.record import RECORD_NAME
from repro_lits.worker import hash_seed_for_spec

logger = logging.getLogger(__name__)

#: Module that runs one run from a spec file (``python -m repro_lits.worker SPEC_JSON_PATH``).
WORKER_MODULE = "repro_lits.worker"

#: Names of the spec file and of the worker's standard error inside the run folder.
SPEC_NAME = "worker_spec.json"
LOG_NAME = "worker.log"

#: Seconds a stopped worker gets between SIGTERM and SIGKILL.
TERMINATE_GRACE_S = 5.0

# Arguments: parent pid, then the command to exec. prctl option 1 is PR_SET_PDEATHSIG.
# The parent check closes the window in which the parent died before prctl ran.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(70)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)

EventCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class WorkerResult:
    """Exit status, record and timing of one finished worker process.

    Attributes:
        returncode: exit status; negative is the signal that ended it (``-9`` for SIGKILL).
        record_path: ``record.json`` in the run folder when the worker wrote one, else None.
        stderr_tail: the last lines of the worker's standard error.
        stopped: True when the orchestrator stopped it (Ctrl-C, a lost claim).
        wall_time_s: seconds from process start to exit.
        pid: process id of the worker; -1 when it was stopped before it started.
    """

    returncode: int
    record_path: Path | None
    stderr_tail: str
    stopped: bool
    wall_time_s: float
    pid: int


class ProcessRegistry:
    """Worker processes in flight, so that Ctrl-C can stop them all; after ``stop_all`` no new one starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen] = set()
        self.stopping = threading.Event()

    def add(self, process: subprocess.Popen) -> bool:
        """Register a started process; False (and the process is killed) when the registry is stopping."""
        with self._lock:
            if not self.stopping.is_set():
                self._processes.add(process)
                return True
        kill_process_group(process, grace_s=0.0)
        return False

    def discard(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.discard(process)

    def stop_all(self, grace_s: float = TERMINATE_GRACE_S) -> None:
        """Stop every registered process group: SIGTERM, then SIGKILL after ``grace_s`` seconds."""
        self.stopping.set()
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            kill_process_group(process, grace_s=grace_s)


def kill_process_group(process: subprocess.Popen, *, grace_s: float) -> None:
    """Send SIGTERM to the process group of ``process``, then SIGKILL if it is still running after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        if wait_s is None:
            process.wait()
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


def worker_command(spec_path: Path) -> list[str]:
    """Return the command line that runs the worker on ``spec_path`` (through the launcher on Linux)."""
    command = [sys.executable, "-m", WORKER_MODULE, str(spec_path)]
    if sys.platform.startswith("linux"):
        return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *command[1:]]
    return command


def run_worker(
    spec: dict[str, Any],
    run_dir: Path,
    *,
    env_overrides: dict[str, str] | None = None,
    on_event: EventCallback | None = None,
    registry: ProcessRegistry | None = None,
    should_stop: Callable[[], bool] | None = None,
    poll_s: float = 1.0,
) -> WorkerResult:
    """Run one run in a fresh worker process and wait for it.

    Writes the spec to ``run_dir/worker_spec.json`` and the worker's standard
    error to ``run_dir/worker.log``. Every JSON line the worker prints goes to
    ``on_event``; a ``{"event": "started", "pid": ...}`` event comes first.

    Args:
        spec: the worker spec; its ``run_dir`` must be ``run_dir``.
        env_overrides: environment variables set for the worker only (for example ``CUDA_VISIBLE_DEVICES``).
        registry: where the process is registered so that Ctrl-C can stop it.
        should_stop: polled every ``poll_s`` seconds; when it returns True the worker is stopped.
    """
    if should_stop is not None and should_stop():
        return WorkerResult(returncode=-signal.SIGTERM, record_path=None, stderr_tail="", stopped=True,
                            wall_time_s=0.0, pid=-1)

    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / SPEC_NAME
    spec_path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    log_path = run_dir / LOG_NAME
    env = {**os.environ, **(env_overrides or {})}
    # The seeded setups need PYTHONHASHSEED when Python starts. Setting it here saves the
    # worker the restart it would otherwise do to set it itself.
    hash_seed = hash_seed_for_spec(spec)
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = hash_seed

    started = time.monotonic()
    with open(log_path, "ab") as log_stream:
        process = subprocess.Popen(
            worker_command(spec_path), stdout=subprocess.PIPE, stderr=log_stream, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True, text=True, bufsize=1,
        )
    stopped = threading.Event()
    finished = threading.Event()
    if registry is not None and not registry.add(process):
        stopped.set()
    watcher = _start_watcher(process, should_stop, stopped, finished, poll_s) if should_stop else None

    try:
        _emit(on_event, {"event": "started", "pid": process.pid})
        _pass_events(process, on_event)
        returncode = process.wait()
    except BaseException:
        kill_process_group(process, grace_s=0.0)
        raise
    finally:
        if registry is not None:
            registry.discard(process)
        if watcher is not None:
            finished.set()
            watcher.join()
    if registry is not None and registry.stopping.is_set():
        stopped.set()

    record_path = run_dir / RECORD_NAME
    return WorkerResult(
        returncode=returncode,
        record_path=record_path if record_path.is_file() else None,
        stderr_tail=read_tail(log_path),
        stopped=stopped.is_set() and returncode != 0,
        wall_time_s=time.monotonic() - started,
        pid=process.pid,
    )


def read_tail(path: Path, *, lines: int = 5, max_bytes: int = 4096) -> str:
    """Return the last non-empty ``lines`` lines of a text file, or '' when it is missing."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - max_bytes))
            text = stream.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _pass_events(process: subprocess.Popen, on_event: EventCallback | None) -> None:
    assert process.stdout is not None  # stdout=PIPE above
    for line in process.stdout:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            logger.debug("worker %d: %s", process.pid, line)
            continue
        if isinstance(event, dict) and "event" in event:
            _emit(on_event, event)
        else:
            logger.debug("worker %d: %s", process.pid, line)


def _emit(on_event: EventCallback | None, event: dict[str, Any]) -> None:
    if on_event is None:
        return
    try:
        on_event(event)
    except Exception:  # a broken progress display must not stop the run
        logger.exception("progress callback failed on event %s", event)


def _start_watcher(
    process: subprocess.Popen,
    should_stop: Callable[[], bool],
    stopped: threading.Event,
    finished: threading.Event,
    poll_s: float,
) -> threading.Thread:
    """Stop the process and set ``stopped`` when ``should_stop()`` returns True; the thread ends on ``finished``."""

    def watch() -> None:
        while not finished.wait(poll_s):
            if process.poll() is not None:
                return
            try:
                stop = should_stop()
            except Exception:  # the check may fail when the Dask client is gone
                logger.exception("stop check failed for worker %d", process.pid)
                continue
            if stop:
                stopped.set()
                kill_process_group(process, grace_s=TERMINATE_GRACE_S)
                return

    thread = threading.Thread(target=watch, name=f"watch-worker-{process.pid}", daemon=True)
    thread.start()
    return thread
