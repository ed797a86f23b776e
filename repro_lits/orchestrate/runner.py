"""Run the runs of an experiment: claim each one, execute it in a fresh process, publish it, rebuild the tables.

Runs execute through an executor: :class:`LocalExecutor` (worker processes on
this machine, one joblib thread per run in flight) or the Dask executor
(worker processes on the machines of a Dask cluster). Either way the
orchestrator claims the run, the worker writes into a staging folder, and the
orchestrator publishes the folder once the record exists.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
from joblib import Parallel, delayed

from repro_lits import __version__
from repro_lits.orchestrate.claims import STALE_AFTER_S, Claim, ClaimStore
from repro_lits.orchestrate.plan import (
    ExperimentLayout,
    RunSpec,
    SETUPS,
    load_run_record,
    published_records,
)
from repro_lits.orchestrate.process import SPEC_NAME, EventCallback, ProcessRegistry, WorkerResult, run_worker
from repro_lits.errors import UserInputError
from repro_lits.record import SCHEMA_VERSION, read_record, write_record
from repro_lits.results import remove_table_leftovers, write_tables

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunEvent:
    """Progress of one run, sent to the ``on_event`` callback.

    ``kind`` is one of ``skipped`` (finished earlier), ``busy`` (claimed by a
    live orchestrator elsewhere), ``started``, ``epoch``, ``finished``,
    ``failed`` and ``interrupted``.
    """

    kind: str
    run_id: str
    setup: str
    run_index: int
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    pid: int | None = None
    wall_time_s: float | None = None
    error: str | None = None
    weights_sha256: str | None = None


RunEventCallback = Callable[[RunEvent], None]


@dataclass(frozen=True)
class RunOutcome:
    """Result of one planned run in this orchestrator: the final ``RunEvent`` kind as ``status``, with details."""

    run_id: str
    setup: str
    run_index: int
    status: str
    wall_time_s: float | None = None
    train_time_s: float | None = None
    peak_memory_mb: float | None = None
    error: str | None = None
    weights_sha256: str | None = None


class Executor(Protocol):
    """Runs one worker spec in a fresh process somewhere and waits for it."""

    def execute(
        self,
        spec: dict[str, Any],
        run_dir: Path,
        *,
        on_event: EventCallback,
        should_stop: Callable[[], bool],
    ) -> WorkerResult: ...

    def stop_all(self) -> None: ...


class LocalExecutor:
    """Worker processes on this machine; with CUDA devices, each run in flight gets one device to itself.

    Args:
        devices: CUDA device ids to pin runs to through ``CUDA_VISIBLE_DEVICES``;
            empty for CPU runs. A run waits until a device is free.
    """

    def __init__(self, devices: list[str] | None = None) -> None:
        self.registry = ProcessRegistry()
        self.devices = list(devices or [])
        self._free_devices: queue.Queue[str] = queue.Queue()
        for device in self.devices:
            self._free_devices.put(device)

    def execute(
        self,
        spec: dict[str, Any],
        run_dir: Path,
        *,
        on_event: EventCallback,
        should_stop: Callable[[], bool],
    ) -> WorkerResult:
        device = self._free_devices.get() if self.devices else None
        env = {"CUDA_VISIBLE_DEVICES": device} if device is not None else None
        try:
            return run_worker(
                spec, run_dir, env_overrides=env, on_event=on_event, registry=self.registry, should_stop=should_stop
            )
        finally:
            if device is not None:
                self._free_devices.put(device)

    def stop_all(self) -> None:
        self.registry.stop_all()


@dataclass
class Orchestrator:
    """Claims, executes and publishes the runs of one experiment folder.

    Attributes:
        layout: the experiment's results folder.
        specs: the runs to make exist, in the order they start.
        cache_dir: prepared dataset folder the workers read.
        dataset_fingerprint: fingerprint of that dataset (stored in failure records).
        executor: where the worker processes run.
        jobs: runs in flight at once.
        on_event: progress callback; it is called from several threads.
        stale_after_s: claims whose heartbeat is older than this are taken over.
    """

    layout: ExperimentLayout
    specs: list[RunSpec]
    cache_dir: Path
    dataset_fingerprint: str | None
    executor: Executor
    jobs: int
    on_event: RunEventCallback | None = None
    stale_after_s: float = STALE_AFTER_S
    claims: ClaimStore = field(init=False)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _claimed: dict[str, Claim] = field(init=False, default_factory=dict)
    _lost_tokens: set[str] = field(init=False, default_factory=set)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise UserInputError(f"--jobs {self.jobs}: expected 1 or more runs in flight")
        self.layout.create()
        self.claims = ClaimStore(self.layout.claims_dir, stale_after_s=self.stale_after_s)

    def run(self) -> list[RunOutcome]:
        """Make every planned run exist; return one outcome per planned run.

        Finished runs are skipped, failed or interrupted ones are redone, and
        runs claimed by a live orchestrator elsewhere are left to it. After a
        pass, runs whose owner died meanwhile are taken over in another pass.
        On Ctrl-C (KeyboardInterrupt) the runs in flight are stopped, their
        claims released and staging folders removed, and the interrupt re-raised.
        """
        self.remove_leftovers()
        heartbeat = threading.Thread(target=self._beat, name="claim-heartbeat", daemon=True)
        heartbeat.start()
        outcomes: dict[str, RunOutcome] = {}
        attempted: set[str] = set()

        try:
            while True:
                pending = [spec for spec in self.specs if spec.run_id not in attempted]
                started = False
                for outcome in self._run_pass_interruptibly(pending):
                    outcomes[outcome.run_id] = outcome
                    # A busy run is tried again in the next pass, in case its owner died meanwhile.
                    if outcome.status != "busy":
                        attempted.add(outcome.run_id)
                    if outcome.status not in ("busy", "skipped"):
                        started = True
                if not started:
                    break
        finally:
            self._stop.set()
            heartbeat.join()
        self._rebuild_tables()
        return [outcomes[spec.run_id] for spec in self.specs if spec.run_id in outcomes]

    def remove_leftovers(self) -> None:
        """Delete staging folders of dead runs, replaced run folders and temporary claim and table files."""
        self.claims.remove_leftovers()
        live = self.claims.live_tokens()
        for staging in self.layout.staging_dir.iterdir():
            token = staging.name.rsplit(".", 1)[-1]
            if token not in live:
                logger.info("removing staging folder of an interrupted run: %s", staging)
                shutil.rmtree(staging, ignore_errors=True)
        for trashed in self.layout.trash_dir.iterdir():
            shutil.rmtree(trashed, ignore_errors=True)
        remove_table_leftovers(self.layout.root)

    def _run_pass_interruptibly(self, specs: list[RunSpec]) -> list[RunOutcome]:
        """Run one pass in a background thread, so that Ctrl-C in the main thread can stop the workers first."""
        result: list[RunOutcome] = []
        failure: list[BaseException] = []
        finished = threading.Event()

        def run_pass() -> None:
            try:
                result.extend(self._run_pass(specs))
            except BaseException as err:  # re-raised in the calling thread
                failure.append(err)
            finally:
                finished.set()

        # Waiting on an Event, not Thread.join: on Python 3.11 a KeyboardInterrupt during
        # join() can mark the thread as stopped while it runs, and a later join() returns at once.
        threading.Thread(target=run_pass, name="orchestrator-pass", daemon=True).start()
        try:
            while not finished.wait(0.2):
                pass
        except KeyboardInterrupt:
            logger.warning("interrupted: stopping the runs in flight")
            self._stop.set()
            self.executor.stop_all()
            finished.wait()
            if failure:
                logger.debug("the interrupted pass ended with %r", failure[0])
            raise
        if failure:
            raise failure[0]
        return result

    def _run_pass(self, specs: list[RunSpec]) -> list[RunOutcome]:
        if not specs:
            return []
        parallel = Parallel(n_jobs=min(self.jobs, len(specs)), backend="threading", pre_dispatch="n_jobs")
        return list(parallel(delayed(self._attempt)(spec) for spec in specs))

    def _attempt(self, spec: RunSpec) -> RunOutcome:
        """Claim, execute and publish one run."""
        if self._stop.is_set():
            return RunOutcome(spec.run_id, spec.setup, spec.run_index, "interrupted")
        finished = self._finished_outcome(spec)
        if finished is not None:
            return finished

        claim = self.claims.acquire(spec.run_id)
        if claim is None:
            self._emit(RunEvent("busy", spec.run_id, spec.setup, spec.run_index))
            return RunOutcome(spec.run_id, spec.setup, spec.run_index, "busy")
        with self._lock:
            self._claimed[spec.run_id] = claim
        try:
            finished = self._finished_outcome(spec)
            if finished is not None:
                return finished
            return self._execute(spec, claim)
        finally:
            with self._lock:
                self._claimed.pop(spec.run_id, None)
            self.claims.release(claim)

    def _finished_outcome(self, spec: RunSpec) -> RunOutcome | None:
        record = load_run_record(self.layout, spec.run_id)
        if record is None or record["status"] != "finished":
            return None
        self._emit(RunEvent("skipped", spec.run_id, spec.setup, spec.run_index))
        return _outcome_from_record(spec, "skipped", record)

    def _execute(self, spec: RunSpec, claim: Claim) -> RunOutcome:
        staging = self.layout.staging_dir / f"{spec.run_id}.{claim.token}"
        started_at = _utc_now()
        worker_spec = spec.worker_spec(cache_dir=self.cache_dir, run_dir=staging)

        def forward(event: dict[str, Any]) -> None:
            self._forward_worker_event(spec, event)

        def should_stop() -> bool:
            return self._stop.is_set() or claim.token in self._lost_tokens

        result = self.executor.execute(worker_spec, staging, on_event=forward, should_stop=should_stop)

        if result.stopped:
            shutil.rmtree(staging, ignore_errors=True)
            reason = "claim lost to another orchestrator" if claim.token in self._lost_tokens else "stopped"
            self._emit(RunEvent("interrupted", spec.run_id, spec.setup, spec.run_index, error=reason))
            return RunOutcome(spec.run_id, spec.setup, spec.run_index, "interrupted", error=reason)

        record = self._checked_record(spec, staging, result, started_at)
        self._publish(spec, staging, claim)
        try:
            self._rebuild_tables()
        except (pa.ArrowException, OSError):  # the records are safe; the final rebuild raises it again
            logger.exception("rebuilding the tables after run %s failed", spec.run_id)

        status = record["status"]
        outcome = _outcome_from_record(spec, status, record, wall_time_s=result.wall_time_s)
        self._emit(RunEvent(
            status, spec.run_id, spec.setup, spec.run_index, wall_time_s=result.wall_time_s,
            error=record.get("error"), weights_sha256=record.get("weights_sha256"),
        ))
        if status == "failed":
            logger.error("run %s failed: %s", spec.run_id, record.get("error"))
        return outcome

    def _checked_record(self, spec: RunSpec, staging: Path, result: WorkerResult, started_at: str) -> dict:
        """Read the worker's record, or write a failure record when the worker left none or a wrong one."""
        error = None
        if result.record_path is None:
            error = _describe_exit(result)
        else:
            try:
                record = read_record(result.record_path)
            except UserInputError as err:
                error = f"the worker wrote an invalid record: {err}"
            else:
                if record["run_id"] != spec.run_id or record["config_hash"] != spec.config.config_hash:
                    error = (
                        f"the worker wrote a record for run {record['run_id']} with config hash "
                        f"{record['config_hash'][:12]}; expected run {spec.run_id} with {spec.config.config_hash[:12]}"
                    )
                else:
                    return record

        record = failure_record(
            spec, error=error, dataset_fingerprint=self.dataset_fingerprint, started_at=started_at,
            wall_time_s=result.wall_time_s,
        )
        write_record(staging, record)
        return record

    def _publish(self, spec: RunSpec, staging: Path, claim: Claim) -> None:
        """Move the staging folder to ``runs/<run_id>``, replacing an earlier failed run of the same id."""
        (staging / SPEC_NAME).unlink(missing_ok=True)
        target = self.layout.run_dir(spec.run_id)
        trashed = self.layout.trash_dir / f"{spec.run_id}.{claim.token}"
        if target.exists():
            existing = load_run_record(self.layout, spec.run_id)
            if existing is not None and existing["status"] == "finished":
                logger.warning("run %s was published meanwhile by another orchestrator; discarding this copy",
                               spec.run_id)
                shutil.rmtree(staging, ignore_errors=True)
                return
            os.rename(target, trashed)
        try:
            os.rename(staging, target)
        except OSError as err:  # another orchestrator published the same run id in between
            logger.warning("cannot publish run %s (%s); keeping the published one", spec.run_id, err)
            shutil.rmtree(staging, ignore_errors=True)
        _fsync_dir(self.layout.runs_dir)
        shutil.rmtree(trashed, ignore_errors=True)

    def _rebuild_tables(self) -> None:
        write_tables(self.layout.root)

    def _forward_worker_event(self, spec: RunSpec, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "started":
            self._emit(RunEvent("started", spec.run_id, spec.setup, spec.run_index, pid=event.get("pid")))
        elif kind == "epoch":
            self._emit(RunEvent(
                "epoch", spec.run_id, spec.setup, spec.run_index,
                epoch=event.get("epoch"), epochs=event.get("epochs"), loss=event.get("loss"),
            ))

    def _emit(self, event: RunEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # a broken progress display must not stop the runs
            logger.exception("progress callback failed on %s", event)

    def _beat(self) -> None:
        """Refresh the heartbeat of this orchestrator's claims; stop runs whose claim another orchestrator took over."""
        interval = max(0.5, min(15.0, self.stale_after_s / 4))
        while not self._stop.wait(interval):
            with self._lock:
                claimed = list(self._claimed.values())
            for claim in self.claims.heartbeat(claimed):
                logger.warning("claim of run %s was taken over by another orchestrator; stopping it", claim.run_id)
                self._lost_tokens.add(claim.token)


def failure_record(
    spec: RunSpec, *, error: str, dataset_fingerprint: str | None, started_at: str, wall_time_s: float | None
) -> dict[str, Any]:
    """Build the record of a run whose worker died or wrote no valid record (status ``failed``)."""
    config = spec.config
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "experiment": config.name,
        "config_hash": config.config_hash,
        "config": config.to_dict(),
        "setup": spec.setup,
        "run_index": spec.run_index,
        "seeds": {},
        "switches": {},
        "threads": {"intra_op": config.run["threads"], "inter_op": config.run["interop_threads"]},
        "replay_epochs": None,
        "dataset_fingerprint": dataset_fingerprint,
        "package_version": __version__,
        "git_commit": None,
        "environment": {},
        "device": "unknown",
        "status": "failed",
        "error": error,
        "model_parameters": None,
        "epochs": [],
        "test": None,
        "weights_sha256": None,
        "predictions_sha256": None,
        "files": {},
        "wall_time_s": wall_time_s,
        "train_time_s": None,
        "peak_memory_mb": None,
        "started_at": started_at,
        "finished_at": _utc_now(),
    }


def _describe_exit(result: WorkerResult) -> str:
    if result.returncode < 0:
        cause = f"the worker process was killed by signal {-result.returncode}"
    else:
        cause = f"the worker process exited with status {result.returncode}"
    tail = result.stderr_tail.splitlines()[-1] if result.stderr_tail else "no output on stderr"
    return f"{cause} without writing its record ({tail})"


def _outcome_from_record(spec: RunSpec, status: str, record: dict, wall_time_s: float | None = None) -> RunOutcome:
    return RunOutcome(
        spec.run_id, spec.setup, spec.run_index, status,
        wall_time_s=wall_time_s if wall_time_s is not None else record.get("wall_time_s"),
        train_time_s=record.get("train_time_s"), peak_memory_mb=record.get("peak_memory_mb"),
        error=record.get("error"), weights_sha256=record.get("weights_sha256"),
    )


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class SetupSummary:
    """Published runs of one setup among the requested ones.

    ``missing`` counts requested runs without a record (interrupted, or still
    running in another orchestrator); ``distinct_weights`` counts distinct
    weight hashes among the finished runs.
    """

    setup: str
    requested: int
    finished: int
    failed: int
    missing: int
    distinct_weights: int


def summarise(layout: ExperimentLayout, specs: list[RunSpec]) -> list[SetupSummary]:
    """Count finished, failed and missing runs and distinct weight hashes per setup, from the published records."""
    records = published_records(layout)
    summaries = []
    for setup in SETUPS:
        requested_specs = [spec for spec in specs if spec.setup == setup]
        if not requested_specs:
            continue
        found = [records[spec.run_id] for spec in requested_specs if spec.run_id in records]
        finished = [record for record in found if record["status"] == "finished"]
        summaries.append(SetupSummary(
            setup=setup,
            requested=len(requested_specs),
            finished=len(finished),
            failed=len(found) - len(finished),
            missing=len(requested_specs) - len(found),
            distinct_weights=len({record["weights_sha256"] for record in finished}),
        ))
    return summaries
