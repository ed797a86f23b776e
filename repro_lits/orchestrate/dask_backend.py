"""Dask executor: each run is a task on a Dask cluster that starts one fresh worker process on its machine.

The Dask workers must see the results folder and the prepared dataset at the
same paths as the orchestrator (a shared file system), and have repro-lits
installed. Progress events travel as Dask events on one topic per
orchestrator; a stop request is a ``distributed.Event`` per run that the task
polls every second.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repro_lits.errors import UserInputError
from repro_lits.orchestrate.process import EventCallback, WorkerResult, run_worker

logger = logging.getLogger(__name__)

#: Seconds to wait for the scheduler when connecting.
CONNECT_TIMEOUT_S = 10


def connect(scheduler: str, *, timeout_s: float = CONNECT_TIMEOUT_S):
    """Connect a ``distributed.Client`` to the scheduler at ``scheduler`` (for example ``tcp://10.0.0.5:8786``)."""
    try:
        from distributed import Client
    except ImportError as err:
        raise UserInputError(
            "--backend dask needs the optional dependency dask[distributed]; install it with "
            "pip install 'repro-lits[dask]'"
        ) from err
    try:
        return Client(scheduler, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError, ValueError) as err:
        raise UserInputError(
            f"cannot connect to the Dask scheduler at {scheduler!r} ({err}); start one (dask scheduler, or "
            "dask-jobqueue on Slurm) and pass its address, for example --scheduler tcp://HOST:8786"
        ) from err


def run_on_dask_worker(spec: dict[str, Any], run_dir: str, attempt: str, topic: str, stop_event: str) -> WorkerResult:
    """Dask task: run one worker process on this Dask worker's machine and wait for it.

    Progress events go to ``topic`` tagged with ``attempt``; setting the
    ``distributed.Event`` named ``stop_event`` stops the worker process.
    """
    from distributed import Event, get_client, get_worker

    worker = get_worker()
    # Bound to this worker's client explicitly: the stop check runs in a watcher thread outside the task context.
    stop = Event(stop_event, client=get_client())

    def send(event: dict[str, Any]) -> None:
        worker.log_event(topic, {**event, "attempt": attempt})

    return run_worker(spec, Path(run_dir), on_event=send, should_stop=stop.is_set)


class DaskExecutor:
    """Runs worker specs as tasks on a Dask cluster (see the module docstring)."""

    def __init__(self, client) -> None:
        from distributed import Event

        self.client = client
        self._event_type = Event
        self.topic = f"repro-lits-{secrets.token_hex(6)}"
        self._handlers: dict[str, EventCallback] = {}
        self._stop_events: dict[str, Any] = {}
        client.subscribe_topic(self.topic, self._dispatch)

    def default_jobs(self) -> int:
        """Return the total number of worker threads in the cluster (at least 1)."""
        return max(1, sum(self.client.nthreads().values()))

    def execute(
        self,
        spec: dict[str, Any],
        run_dir: Path,
        *,
        on_event: EventCallback,
        should_stop: Callable[[], bool],
    ) -> WorkerResult:
        # The staging folder's name (run id and claim token) is unique per attempt.
        attempt = run_dir.name
        stop_name = f"{self.topic}-{attempt}"
        stop_event = self._event_type(stop_name, client=self.client)
        self._handlers[attempt] = on_event
        self._stop_events[attempt] = stop_event
        started = time.monotonic()
        future = self.client.submit(
            run_on_dask_worker, spec, str(run_dir), attempt, self.topic, stop_name,
            key=f"repro-lits-{attempt}", pure=False, retries=0,
        )
        try:
            while not future.done():
                if should_stop() and not stop_event.is_set():
                    stop_event.set()
                time.sleep(0.5)
            return future.result()
        except Exception as err:  # the task itself failed, for example its Dask worker died
            logger.error("Dask task of %s failed: %s", attempt, err)
            record_path = run_dir / "record.json"
            return WorkerResult(
                returncode=1, record_path=record_path if record_path.is_file() else None,
                stderr_tail=f"Dask task failed: {type(err).__name__}: {err}", stopped=stop_event.is_set(),
                wall_time_s=time.monotonic() - started, pid=-1,
            )
        finally:
            self._handlers.pop(attempt, None)
            self._stop_events.pop(attempt, None)

    def stop_all(self) -> None:
        for stop_event in list(self._stop_events.values()):
            stop_event.set()

    def close(self) -> None:
        self.client.unsubscribe_topic(self.topic)
        self.client.close()

    def _dispatch(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        handler = self._handlers.get(message.get("attempt", ""))
        if handler is not None:
            handler(message)
