"""`dxr-node serve`: wire the store, SCP, worker pool and dispatcher; stop gracefully.

Start order: database (and recovery of work a dead node left running), workers and
dispatcher, then the listener, so nothing is acknowledged before it can be processed.
Stop order on SIGTERM/SIGINT: listener first (no new images; associations in progress
get a grace period while workers and dispatcher still run), then workers and dispatcher
finish or hand back what they hold. A second signal exits at once; nothing is lost
either way because every state change is committed before it is acted on.

The operator console is not wired here (the node never imports ``dxr_node.web``): the
command line passes it in as ``start_console``/``stop_console`` callbacks.

Parts provided by the worker/dispatch modules (called with the shared stop event):
``worker.start_workers(config, stop_event)`` starts the analysis pool and returns a
handle whose ``join()`` returns once the pool has stopped after ``stop_event`` is set;
``dispatch.run_dispatcher(config, store, stop_event)`` runs in a thread until it is set.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dxr_node import __version__
from dxr_node.node.audit import AuditTrail, open_audit_trail
from dxr_node.node.config import NodeConfig
from dxr_node.node.database import DATABASE_ERRORS
from dxr_node.node.logs import log_event
from dxr_node.node.scp import StorageSCP
from dxr_node.node.store import Store
from dxr_node.node.tls import TlsConfigError

if TYPE_CHECKING:
    from dxr_node.integration.service import Integration
    from dxr_node.node.worker import WorkerPool

log = logging.getLogger("dxr_node.node")

HOUSEKEEPING_INTERVAL_S = 3600.0  # retention runs at start and then hourly
PART_FILE_AGE_S = 3600.0  # a half-written file this old on shared storage is nobody's
PRIVATE_UMASK = 0o077


def _roles(config: NodeConfig) -> str:
    roles = config.roles
    return ",".join(name for name, on in (("scp", roles.scp), ("workers", roles.workers),
                                          ("dispatch", roles.dispatch)) if on) or "none"


class ServiceError(Exception):
    """The node cannot start (e.g. the port is taken); the message says why."""


def purge_spool(config: NodeConfig, store: Store, now: float | None = None) -> int:
    """Delete spooled images past ``retention_days`` whose analysis is finished, and
    produced objects past ``retention_days`` sent to every destination (rows are kept).
    Returns how many files were deleted."""
    if config.retention_days <= 0:
        return 0
    cutoff = (time.time() if now is None else now) - config.retention_days * 86400
    images = objects = 0
    for instance_id, path in store.spool_files_to_delete(cutoff):
        Path(path).unlink(missing_ok=True)
        store.mark_spool_deleted(instance_id)
        images += 1
    for object_id, path in store.object_files_to_delete(cutoff):
        Path(path).unlink(missing_ok=True)
        store.mark_object_deleted(object_id)
        objects += 1
    if images or objects:
        log_event(log, "spool_purged", files=images, objects=objects,
                  retention_days=config.retention_days)
    return images + objects


def _make_private(path: Path) -> None:
    """Drop group/other permissions of an existing file or folder we own (not recursive:
    a private data folder already hides what is inside)."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077 and path.stat().st_uid == os.getuid():
            path.chmod(mode & ~0o077)
    except FileNotFoundError:
        pass


def remove_partial_files(config: NodeConfig, *, older_than_s: float = 0.0) -> int:
    """Delete the ``*.part`` files a killed SCP or worker left half-written (never
    acknowledged, never recorded). Only at start, before anything writes; on storage
    shared with other nodes only those older than ``older_than_s``."""
    removed = 0
    cutoff = time.time() - older_than_s
    for folder in (config.spool_path / "incoming", config.objects_path):
        for leftover in folder.glob("*.part"):  # also ".<uid>.<pid>.part"
            try:
                if older_than_s and leftover.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            leftover.unlink(missing_ok=True)
            removed += 1
    if removed:
        log_event(log, "partial_files_removed", files=removed)
    return removed


ScpListening = Callable[[], bool]
AnalysisProblem = Callable[[], "str | None"]  # why analysis cannot run now, None: it can


class Node:
    """The running node; ``start()`` returns once it listens, ``stop()`` shuts it down.

    ``start_console`` is called once the listener is up, with a function telling whether
    it still listens and one telling why analysis cannot run (for the console's /healthz
    and alarm); ``stop_console`` right after the listener stops.
    """

    def __init__(self, config: NodeConfig, *,
                 start_console: Callable[[ScpListening, AnalysisProblem], None] | None = None,
                 stop_console: Callable[[], None] | None = None) -> None:
        self.config = config
        self.shutdown_requested = threading.Event()  # set by a signal: stop() follows
        self.stop_event = threading.Event()  # stops workers and dispatcher, after the SCP
        self.store: Store | None = None
        self.scp: StorageSCP | None = None
        self.audit: AuditTrail | None = None
        self._threads: list[threading.Thread] = []
        self._workers: WorkerPool | None = None
        self._integration: Integration | None = None
        self.address: tuple[str, int] | None = None
        self._start_console = start_console
        self._stop_console = stop_console

    def start(self) -> None:
        from dxr_node.node.dispatch import run_dispatcher
        from dxr_node.node.worker import start_workers

        config = self.config
        # Patient data: everything the node (and its workers and console) writes from here
        # on is private to its user, 0600 files and 0700 folders.
        os.umask(PRIVATE_UMASK)
        for directory in (config.data_dir, config.spool_path, config.objects_path):
            try:
                Path(directory).mkdir(parents=True, exist_ok=True)
                _make_private(Path(directory))  # made by an older version, or by hand
            except OSError as exc:
                raise ServiceError(f"cannot create {directory}: {exc.strerror}") from None
        for suffix in ("", "-wal", "-shm") if config.database_url is None else ():
            _make_private(Path(f"{config.database_path}{suffix}"))
        store = self.store = Store(config.database_target)
        try:
            self.audit = open_audit_trail(config)
        except TlsConfigError as exc:
            store.close()
            raise ServiceError(str(exc)) from None
        cluster = config.database_url is not None
        recovered = store.recover_interrupted(
            max_attempts=config.worker_max_attempts,
            node=config.cluster.node_name if cluster else None)
        if recovered:
            log_event(log, "recovered", rows=recovered,
                      reason="work left running by a previous node was re-queued")
        store.register_node(config.cluster.node_name, host=socket.gethostname(),
                                 version=__version__, pid=os.getpid(), roles=_roles(config))
        # Shared storage: another node may be writing its own .part files right now.
        remove_partial_files(config, older_than_s=PART_FILE_AGE_S if cluster else 0.0)
        if not config.allowed_calling_aets:
            log_event(log, "open_to_any_aet", logging.WARNING,
                      reason="allowed_calling_aets is empty: any calling AE title is accepted")
        if not config.destinations:
            log_event(log, "no_destinations", logging.WARNING,
                      reason="no destinations: results stay in the database")
        purge_spool(config, store)

        if config.roles.workers:
            self._workers = start_workers(config, self.stop_event)
        if config.roles.dispatch:
            self._spawn("dispatcher", run_dispatcher, config, store, self.stop_event,
                        self.audit)
        self._spawn("housekeeping", self._housekeeping)
        self._spawn("heartbeat", self._heartbeat)
        from dxr_node.integration.service import Integration  # HL7/FHIR, off by default

        try:
            self._integration = Integration(config, store, self.stop_event).start()
        except OSError as exc:
            self.stop()
            raise ServiceError(f"cannot listen for HL7 on {config.hl7.host}:"
                               f"{config.hl7.port}: {exc.strerror or exc}") from None
        if config.roles.scp:
            self._start_scp()
        if self._start_console is not None:
            self._start_console(self._listening, self.analysis_problem)
        if self.audit is not None:
            self.audit.application(started=True)
        log_event(log, "ready", node=config.cluster.node_name, roles=_roles(config),
                  ae_title=config.ae_title, host=self.address[0] if self.address else None,
                  port=self.address[1] if self.address else None,
                  workers=config.worker_count if config.roles.workers else 0,
                  destinations=",".join(d.url or "" if d.kind == "stow"
                                        else f"{d.ae_title}@{d.host}:{d.port}"
                                        for d in config.destinations) or None,
                  data_dir=config.data_dir, pid=os.getpid())

    def _start_scp(self) -> None:
        assert self.store is not None  # opened by start() before the SCP
        try:
            self.scp = StorageSCP(self.config, self.store, self.audit)
        except TlsConfigError as exc:
            self.stop()
            raise ServiceError(str(exc)) from None
        try:
            self.address = self.scp.start()
        except OSError as exc:
            self.stop()
            raise ServiceError(f"cannot listen on {self.config.host}:{self.config.port}: "
                               f"{exc.strerror or exc}") from None

    def _listening(self) -> bool:
        """The SCP has bound its port (or this node does not receive: --no-scp) and the
        node is not stopping (for /healthz)."""
        bound = self.address is not None or not self.config.roles.scp
        return bound and not self.shutdown_requested.is_set()

    def analysis_problem(self) -> str | None:
        """Why images received now would not be analysed (disk full, a dead supervisor);
        None on a node without workers (--no-workers): other nodes analyse."""
        if not self.config.roles.workers:
            return None
        if self._workers is None:
            return "the analysis workers are not running"
        return self._workers.problem()

    def _heartbeat(self) -> None:
        """Renew this node's leases, and take over the work of nodes whose leases ran
        out (on SQLite too: harmless with one node, and it frees a stuck claim)."""
        cluster = self.config.cluster
        while not self.stop_event.wait(cluster.heartbeat_s):
            assert self.store is not None
            try:
                self.store.heartbeat(cluster.node_name, cluster.lease_s)
                for item in self.store.take_over_expired(
                        max_attempts=self.config.worker_max_attempts):
                    log_event(log, "taken_over", logging.WARNING, what=item["what"],
                              id=item["id"], from_node=item["node"], state=item["state"])
            except DATABASE_ERRORS as exc:
                log_event(log, "heartbeat_failed", logging.ERROR, reason=str(exc))

    def _spawn(self, name: str, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _housekeeping(self) -> None:
        assert self.store is not None  # opened by start() before the thread
        while not self.stop_event.wait(HOUSEKEEPING_INTERVAL_S):
            try:
                purge_spool(self.config, self.store)
            except OSError as exc:
                log_event(log, "purge_failed", logging.ERROR, reason=str(exc))

    def stop(self) -> None:
        """Listener first (with its grace period), then the console, then workers and
        dispatcher."""
        log_event(log, "stopping")
        self.shutdown_requested.set()
        if self.scp is not None:
            self.scp.stop()
        if self._integration is not None:
            self._integration.stop_listener()
        if self._stop_console is not None:
            self._stop_console()
        self.stop_event.set()
        if self._workers is not None:
            self._workers.join()
        for thread in self._threads:
            thread.join(timeout=self.config.dispatch.timeout_s + 5)
        if self._integration is not None:
            self._integration.join(timeout=self.config.hl7.timeout_s + 5)
        if self.store is not None:
            try:
                self.store.node_stopped(self.config.cluster.node_name)
            except DATABASE_ERRORS as exc:
                log_event(log, "deregister_failed", logging.ERROR, reason=str(exc))
            self.store.close()
        if self.audit is not None:
            self.audit.application(started=False)
            self.audit.stop()
        log_event(log, "stopped")


def run(config: NodeConfig, *,
        start_console: Callable[[ScpListening, AnalysisProblem], None] | None = None,
        stop_console: Callable[[], None] | None = None) -> int:
    """Run the node until SIGTERM or SIGINT; returns the exit status."""
    node = Node(config, start_console=start_console, stop_console=stop_console)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: object) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            log_event(log, "forced_exit", logging.WARNING, signal=signal.Signals(signum).name)
            os._exit(1)
        log_event(log, "shutdown_requested", signal=signal.Signals(signum).name)
        # Not stop_event: workers and dispatcher must run on while the listener drains.
        node.shutdown_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.start()
        while not node.shutdown_requested.wait(0.5):  # short waits keep signal handling prompt
            pass
        node.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
