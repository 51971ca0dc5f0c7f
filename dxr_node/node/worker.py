"""Analysis worker pool: processes that claim jobs from the store and run the pipeline.

Each worker process opens its own store connection and loops: claim the oldest queued
job (atomically, in SQLite), run :func:`dxr_node.pipeline.process_file`, write the
produced objects (fsync'd, then renamed) and record result, objects and dispatches in
one transaction. A supervisor thread in the node process watches the workers:

- a worker that dies (segfault, OOM kill, kill -9) has its job handed back to the queue;
  after ``worker_max_attempts`` claims the job is failed with the reason, so an image
  that kills its worker never blocks the queue. The worker is replaced.
- a job running longer than ``job_timeout_s`` has its worker killed (same path).
- workers die with the node (PR_SET_PDEATHSIG) so a kill -9 of the node leaves no
  orphan analysing a job the next node will also claim; at start-up the service
  re-queues jobs left ``running``.

Unreadable images and pipeline exceptions end as failed jobs with the reason at once:
they are deterministic, a retry would fail the same way.

A full disk (or a database that cannot be written) is nobody's image's fault: the worker
and the supervisor outlive it, the job goes back to the queue without using a claim, and
``WorkerPool.problem()`` says why analysis is stopped (/healthz 503, the console alarm)
until a write succeeds again.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from dxr_node.clinical import ReferenceTable, exam_laterality, load_reference
from dxr_node.node.config import NodeConfig
from dxr_node.node.database import DATABASE_ERRORS
from dxr_node.node.logs import configure_logging, log_event
from dxr_node.node.store import ClaimLost, Job, ProducedObject, Store

log = logging.getLogger("dxr_node.node.worker")

JOB_TIMEOUT_S = 600.0  # an analysis takes seconds; ten minutes means it hangs
STOP_GRACE_S = 120.0  # a graceful stop waits this long for running analyses to finish
IDLE_POLL_S = 0.2  # queue polling when idle (the SCP lives in another process)
RESPAWN_DELAY_S = 1.0  # between restarts of a worker that keeps dying while idle
IO_RETRY_PAUSE_S = 10.0  # after a job was handed back for a file system error
TROUBLE_BYTES = 200  # a worker's last problem, shared with the supervisor

_SOP_CLASS_KINDS = {
    "1.2.840.10008.5.1.4.1.1.88.": "SR",  # every SR storage class
    "1.2.840.10008.5.1.4.1.1.7": "SC",  # Secondary Capture (and multi-frame .7.x)
    "1.2.840.10008.5.1.4.1.1.11.": "GSPS",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.1": "PDF",
}


class ResourceProblem(Exception):
    """The node cannot record or write results now (disk full); the job was handed back."""


# Trouble a worker or the supervisor outlives: a full disk, a database it cannot write.
_UNWRITABLE: tuple[type[Exception], ...] = (OSError, *DATABASE_ERRORS)
_BLOCKED: tuple[type[Exception], ...] = (ResourceProblem, *_UNWRITABLE)


def object_kind(sop_class_uid: str) -> str:
    """"SR" | "SC" | "GSPS" | "PDF" for a produced object's SOP Class UID."""
    for prefix, kind in _SOP_CLASS_KINDS.items():
        if sop_class_uid.startswith(prefix):
            return kind
    raise ValueError(f"the pipeline produced an object of unexpected SOP class {sop_class_uid}")


def write_object(directory: Path, dataset: Any) -> ProducedObject:
    """Write one produced dataset durably as <directory>/<SOP Instance UID>.dcm.

    Deterministic UIDs mean a re-run rewrites the same file, never a second one.
    """
    from dxr_node.reports import write_objects  # heavy (highdicom): worker processes only

    kind = object_kind(str(dataset.SOPClassUID))
    (path,) = write_objects([dataset], directory)
    return ProducedObject(kind, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), str(path))


def run_job(config: NodeConfig, store: Store, job: Job) -> str:
    """Analyse one claimed job and record its outcome; returns the job's new state
    ("lost" when another node had taken the job over meanwhile)."""
    from dxr_node.engine.image import DecodeLimits, ImageLoadError
    from dxr_node.integration.outbound import WorkerHooks
    from dxr_node.pipeline import process_file

    log_event(log, "analysis_started", job=job.id, sop=job.sop_instance_uid,
              attempt=job.attempts)
    started = time.perf_counter()
    try:
        # The HL7 order of this image, if the interfaces are on (None when they are off).
        hooks = WorkerHooks.for_job(config, store, job.id, job.path)
        result = process_file(job.path, kinds=config.send_objects, history=store,
                              objects_for_rejected=config.send_objects_for_rejected,
                              reference=_site_reference(config.reference_table),
                              amend_header=hooks.amend_header if hooks else None,
                              limits=DecodeLimits(config.max_image_pixels,
                                                  config.max_decoded_mb))
        problem = _identity_problem(job, result.radiograph)
        if problem is not None:
            return _fail(store, job, problem)
        objects = [write_object(config.objects_path, ds) for ds in result.objects]
        also = hooks.queue_with_result(result, objects) if hooks else None
    except ImageLoadError as exc:
        return _fail(store, job, f"unreadable image: {exc}")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # The disk's fault, not the image's: back to the queue without using a claim.
            store.return_job(job.id, f"cannot write files: {exc}")
            raise ResourceProblem(f"cannot write files: {exc.strerror or exc}") from None
        # Not the image's fault (spool file gone?): give it another claim.
        state = store.release_job(job.id, f"cannot read or write files: {exc}",
                                  max_attempts=config.worker_max_attempts)
        log_event(log, "analysis_io_error", logging.ERROR, job=job.id,
                  sop=job.sop_instance_uid, state=state, reason=str(exc))
        return state
    except Exception as exc:  # a pipeline bug: record it, never leave the job stuck
        log.exception("analysis error job=%s sop=%s", job.id, job.sop_instance_uid)
        return _fail(store, job, f"analysis error: {type(exc).__name__}: {exc}")
    if result.report_problem:  # measured, but nothing can go back to PACS: not a success
        return _fail(store, job, result.report_problem)

    interpretation = result.interpretation.to_dict() if result.interpretation else None
    # The one laterality rule (a header-vs-image conflict is unknown, so no comparison
    # with a prior of the other hand): the Interpretation's, else the same function.
    side = (result.interpretation.exam_laterality if result.interpretation is not None
            else exam_laterality(result.analysis)[0])
    # Held for a reader: the objects are kept, and only the final ones will be sent.
    held = config.review.mode == "hold-until-verified"
    try:
        store.finish_job(job.id, status=result.analysis.status,
                         analysis=result.analysis.to_dict(), interpretation=interpretation,
                         objects=objects,
                         destinations=[] if held else [d.name for d in config.destinations],
                         laterality=side, also=also, attempt=job.attempts)
    except ClaimLost:
        # Its lease ran out (this node was cut off) and another node took the job: that
        # node records the result. The files written are the same objects (derived UIDs
        # and content depend only on the image and the algorithm version).
        log_event(log, "analysis_claim_lost", logging.WARNING, job=job.id,
                  sop=job.sop_instance_uid)
        return "lost"
    log_event(log, "analysis_done", job=job.id, sop=job.sop_instance_uid,
              status=result.analysis.status, objects=len(objects),
              seconds=round(time.perf_counter() - started, 2))
    return "done"


def _identity_problem(job: Job, radiograph: Any) -> str | None:
    """Result objects take their UIDs from the data set: one that names another instance
    than the one received would overwrite that exam's objects (the SCP refuses such
    stores; this guards spool files from elsewhere)."""
    header = getattr(radiograph, "dataset", None)
    uid = str(header.get("SOPInstanceUID", "") or "").strip() if header is not None else ""
    if uid and uid != job.sop_instance_uid:
        return "the data set's SOP Instance UID differs from the received one: not analysed"
    return None


@functools.lru_cache(maxsize=2)
def _site_reference(path: Path | None) -> ReferenceTable | None:
    """The site's reference table, read once per worker process (None: packaged)."""
    return load_reference(path) if path is not None else None


def _fail(store: Store, job: Job, reason: str) -> str:
    try:
        store.fail_job(job.id, reason, attempt=job.attempts)
    except ClaimLost:
        log_event(log, "analysis_claim_lost", logging.WARNING, job=job.id,
                  sop=job.sop_instance_uid)
        return "lost"
    log_event(log, "analysis_failed", logging.ERROR, job=job.id, sop=job.sop_instance_uid,
              reason=reason)
    return "failed"


# --- the worker process --------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the node process goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the ppid check in the loop still ends orphans between jobs
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def worker_name(index: int, pid: int, node: str = "") -> str:
    """The claim name of a worker process: unique (the node's name first: pids repeat
    across machines), so a dead one's jobs can be found."""
    return f"{node}/worker-{index}-{pid}" if node else f"worker-{index}-{pid}"


def _claim_prefix(config: NodeConfig) -> str:
    """The node's name in a cluster (one SQLite node keeps the plain worker names)."""
    return config.cluster.node_name if config.database_url else ""


def _worker_main(config: NodeConfig, index: int, parent_pid: int, stop: Any,
                 job_started: Any, trouble: Any) -> None:
    _die_with_parent(parent_pid)
    name = worker_name(index, os.getpid(), _claim_prefix(config))
    # Ctrl-C (and a service manager's SIGTERM to the whole group) must not cut an
    # analysis short: the node decides, through the stop event, and kills if it must.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(config.log_level)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # one core per worker process
    import dxr_node.pipeline  # noqa: F401  (load the heavy modules before the first job)

    with Store(config.database_target) as store:
        held: Job | None = None  # claimed, but its outcome could not be recorded
        while not stop.is_set() and os.getppid() == parent_pid:
            job = None
            try:
                if held is not None:
                    store.return_job(held.id, "handed back after the database was unwritable")
                    held = None
                job = store.claim_job(name, node=config.cluster.node_name,
                                      lease_s=config.cluster.lease_s)
                if job is None:
                    trouble.value = b""
                    stop.wait(IDLE_POLL_S)
                    continue
                job_started.value = time.time()
                state = run_job(config, store, job)
                trouble.value = b""
            except _BLOCKED as exc:
                # Disk full (or a database that cannot be written): the worker lives on,
                # says so (the pool reports it on /healthz), and tries again later.
                held = None if isinstance(exc, ResourceProblem) else job
                reason = str(exc) or type(exc).__name__
                trouble.value = reason.encode("utf-8", "replace")[:TROUBLE_BYTES - 1]
                log_event(log, "worker_blocked", logging.ERROR, worker=name,
                          job=job.id if job else None, reason=reason)
                state = "queued"
            finally:
                job_started.value = 0.0
            if state == "queued":  # an I/O problem (disk full?): give it time to clear
                stop.wait(IO_RETRY_PAUSE_S)


# --- the pool, supervised from the node process ---------------------------------------


class _Slot:
    """One worker position: its current process and shared job clock."""

    def __init__(self, index: int, context: Any) -> None:
        self.index = index
        self.job_started = context.Value("d", 0.0, lock=False)  # 0: idle
        self.trouble = context.Array("c", TROUBLE_BYTES)  # why it cannot work; empty: fine
        self.process: Any = None
        self.name = ""
        self.last_spawn = 0.0
        self.killed_for_timeout = False


class WorkerPool:
    """A supervised pool of analysis processes; see the module docstring."""

    def __init__(self, config: NodeConfig, stop_event: threading.Event, *,
                 count: int | None = None, job_timeout_s: float = JOB_TIMEOUT_S,
                 stop_grace_s: float = STOP_GRACE_S) -> None:
        self.config = config
        self.stop_event = stop_event
        self.job_timeout_s = job_timeout_s
        self.stop_grace_s = stop_grace_s
        # spawn, not fork: the node process has threads (SCP, dispatcher, SQLite).
        self._context = multiprocessing.get_context("spawn")
        self._process_stop = self._context.Event()
        self._slots = [_Slot(i, self._context) for i in range(count or config.worker_count)]
        self._supervisor: threading.Thread | None = None
        self._ready = threading.Event()
        self._trouble: str | None = None  # the supervisor's own problem

    def problem(self) -> str | None:
        """Why analysis cannot run now (for /healthz and the console), None when it can."""
        if self._trouble is not None:
            return self._trouble
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.is_alive() \
                and not self.stop_event.is_set():
            return "the worker supervisor has stopped"
        for slot in self._slots:
            reason = slot.trouble.value.decode("utf-8", "replace")
            if reason:
                return f"analysis worker {slot.index} cannot record results: {reason}"
        return None

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [s.process.pid for s in self._slots if s.process and s.process.is_alive()]

    def start(self) -> WorkerPool:
        # Opened here so that a database problem is raised to the caller.
        store = Store(self.config.database_target)
        self._supervisor = threading.Thread(target=self._supervise, args=(store,),
                                            name="worker-supervisor", daemon=True)
        self._supervisor.start()
        self._ready.wait()
        return self

    def join(self, timeout: float | None = None) -> None:
        """Wait for the pool to stop (after ``stop_event`` is set)."""
        if self._supervisor is not None:
            self._supervisor.join(timeout)

    def stop(self, graceful: bool = True) -> None:
        """Stop the pool: graceful lets running analyses finish (up to the grace time),
        otherwise workers are terminated and their jobs wait for the next start."""
        if not graceful:
            self.stop_grace_s = 0.0
        self.stop_event.set()
        self.join()

    # Everything below runs in the supervisor thread: workers are spawned from it so
    # that their PR_SET_PDEATHSIG parent (the spawning thread) lives as long as they do.

    def _supervise(self, store: Store) -> None:
        try:
            for slot in self._slots:
                self._spawn(slot)
        finally:
            self._ready.set()  # never leave start() waiting, even if this failed
        with store:
            while not self.stop_event.is_set():
                try:
                    self._supervise_once(store)
                    self._trouble = None
                except _UNWRITABLE as exc:
                    # Disk full while handing a dead worker's job back: the supervisor must
                    # outlive it (the slot is handled again on the next round).
                    self._trouble = f"the worker supervisor cannot update the database: {exc}"
                    log_event(log, "supervisor_blocked", logging.ERROR, reason=str(exc))
                    self.stop_event.wait(IO_RETRY_PAUSE_S)
            self._shut_down(store)

    def _supervise_once(self, store: Store) -> None:
        sentinels = [s.process.sentinel for s in self._slots]
        multiprocessing.connection.wait(sentinels, timeout=min(0.5, self.job_timeout_s))
        for slot in self._slots:
            if not slot.process.is_alive():
                self._handle_death(store, slot)
                if time.monotonic() - slot.last_spawn < RESPAWN_DELAY_S:
                    time.sleep(RESPAWN_DELAY_S)
                self._spawn(slot)
            elif self._overdue(slot):
                log_event(log, "worker_timeout", logging.ERROR, worker=slot.name,
                          seconds=self.job_timeout_s)
                slot.killed_for_timeout = True
                slot.process.kill()

    def _spawn(self, slot: _Slot) -> None:
        slot.job_started.value = 0.0
        slot.killed_for_timeout = False
        slot.process = self._context.Process(
            target=_worker_main, name=f"dxr-worker-{slot.index}", daemon=True,
            args=(self.config, slot.index, os.getpid(), self._process_stop, slot.job_started,
                  slot.trouble),
        )
        slot.process.start()
        slot.name = worker_name(slot.index, slot.process.pid, _claim_prefix(self.config))
        slot.last_spawn = time.monotonic()
        log_event(log, "worker_started", worker=slot.name)

    def _overdue(self, slot: _Slot) -> bool:
        started = slot.job_started.value
        return bool(started) and time.time() - started > self.job_timeout_s \
            and not slot.killed_for_timeout

    def _handle_death(self, store: Store, slot: _Slot) -> None:
        code = slot.process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit {code}"
        if slot.killed_for_timeout:
            how = f"killed after {self.job_timeout_s:.0f} s without finishing"
        jobs = store.running_jobs_claimed_by(slot.name)
        if not jobs:
            log_event(log, "worker_exited", logging.WARNING, worker=slot.name, cause=how)
        for job_id in jobs:
            state = store.release_job(job_id, f"worker died ({how}) while analysing",
                                      max_attempts=self.config.worker_max_attempts)
            log_event(log, "worker_died", logging.ERROR, worker=slot.name, job=job_id,
                      cause=how, job_state=state)

    def _shut_down(self, store: Store) -> None:
        self._process_stop.set()
        deadline = time.monotonic() + self.stop_grace_s
        for slot in self._slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
        for slot in self._slots:
            if slot.process.is_alive():
                # Its job stays 'running' and is re-queued at the next start.
                log_event(log, "worker_terminated", logging.WARNING, worker=slot.name)
                slot.process.kill()
                slot.process.join()


def start_workers(config: NodeConfig, stop_event: threading.Event) -> WorkerPool:
    """Start the analysis pool; it stops (gracefully) once ``stop_event`` is set."""
    return WorkerPool(config, stop_event).start()
