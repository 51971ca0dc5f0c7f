"""The node's durable state: one SQLite database in WAL mode.

Tables (times are UTC seconds since the epoch, REAL):

- ``instances``: every SOP instance received (one row per SOP Instance UID; a
  duplicate only bumps ``receive_count``), with its spool path and the header fields
  needed for routing and follow-up. No patient names are stored.
- ``jobs``: one analysis job per instance. States: ``queued`` -> ``running`` ->
  ``done`` | ``failed``; ``skipped`` for instances triage found not analysable (the
  reason is in ``error``). ``attempts`` counts claims, so an image that kills its
  worker is retried a bounded number of times.
- ``results``: one per finished job: engine status, analysis and interpretation JSON,
  plus the columns ``priors()`` needs (patient, study date, laterality, DXR-BMD).
- ``objects``: the DICOM objects a job produced (SR, SC, GSPS, PDF), unique by SOP
  Instance UID so a re-run with deterministic UIDs never makes a second row;
  ``file_deleted_at`` once retention deleted the file after delivery.
- ``dispatches``: one per (object, destination). States: ``pending`` -> ``sending``
  -> ``sent`` | ``failed``; a transient failure returns it to ``pending`` with a later
  ``next_attempt_at``.

Every public method is one transaction. A ``Store`` may be shared by threads (calls are
serialised by a lock); each process opens its own.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dxr_node.clinical.result import PriorResult
from dxr_node.node.rowid import inserted_id

# Called inside finish_job's transaction with the job id (e.g. to queue HL7/FHIR
# messages with the result they report).
InTransaction = Callable[[sqlite3.Connection, int], None]

SCHEMA_VERSION = 4  # 2: objects.file_deleted_at (retention of produced objects); 3: review
# 4: orders, hl7_inbound, outbound_messages (dxr_node.node.integration_store)

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"
JOB_FAILED = "failed"
JOB_SKIPPED = "skipped"
JOB_STATES = (JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_SKIPPED)

DISPATCH_PENDING = "pending"
DISPATCH_SENDING = "sending"
DISPATCH_SENT = "sent"
DISPATCH_FAILED = "failed"
DISPATCH_STATES = (DISPATCH_PENDING, DISPATCH_SENDING, DISPATCH_SENT, DISPATCH_FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id                   INTEGER PRIMARY KEY,
    sop_instance_uid     TEXT NOT NULL UNIQUE,
    sop_class_uid        TEXT NOT NULL,
    transfer_syntax_uid  TEXT NOT NULL,
    study_instance_uid   TEXT,
    series_instance_uid  TEXT,
    patient_id           TEXT,
    issuer_of_patient_id TEXT,
    study_date           TEXT,
    modality             TEXT,
    calling_aet          TEXT,
    source_ip            TEXT,
    path                 TEXT NOT NULL,
    size_bytes           INTEGER NOT NULL,
    received_at          REAL NOT NULL,
    receive_count        INTEGER NOT NULL DEFAULT 1,
    last_received_at     REAL NOT NULL,
    spool_deleted_at     REAL
);
CREATE INDEX IF NOT EXISTS instances_patient ON instances (patient_id, issuer_of_patient_id);

CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    instance_id INTEGER NOT NULL UNIQUE REFERENCES instances (id),
    state       TEXT NOT NULL CHECK (state IN ('queued','running','done','failed','skipped')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    claimed_by  TEXT,
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);

CREATE TABLE IF NOT EXISTS results (
    job_id              INTEGER PRIMARY KEY REFERENCES jobs (id),
    instance_id         INTEGER NOT NULL REFERENCES instances (id),
    sop_instance_uid    TEXT NOT NULL,
    patient_id          TEXT,
    issuer_of_patient_id TEXT,
    study_date          TEXT,
    status              TEXT NOT NULL,
    laterality          TEXT,
    dxr_bmd_g_cm2       REAL,
    analysis_json       TEXT NOT NULL,
    interpretation_json TEXT,
    created_at          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_patient ON results (patient_id, issuer_of_patient_id);

CREATE TABLE IF NOT EXISTS objects (
    id               INTEGER PRIMARY KEY,
    job_id           INTEGER NOT NULL REFERENCES jobs (id),
    kind             TEXT NOT NULL CHECK (kind IN ('SR','SC','GSPS','PDF')),
    sop_class_uid    TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    path             TEXT NOT NULL,
    created_at       REAL NOT NULL,
    file_deleted_at  REAL
);
CREATE INDEX IF NOT EXISTS objects_job ON objects (job_id);

CREATE TABLE IF NOT EXISTS dispatches (
    id              INTEGER PRIMARY KEY,
    object_id       INTEGER NOT NULL REFERENCES objects (id),
    destination     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending','sending','sent','failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status     INTEGER,
    error           TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    sent_at         REAL,
    UNIQUE (object_id, destination)
);
CREATE INDEX IF NOT EXISTS dispatches_state ON dispatches (state, next_attempt_at);
"""


class StoreError(Exception):
    """The database cannot be opened or has an unknown schema."""


@dataclass(frozen=True)
class InstanceInfo:
    """What the SCP records about one received instance."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    study_date: str | None = None
    modality: str | None = None
    calling_aet: str | None = None
    source_ip: str | None = None


@dataclass(frozen=True)
class AddedInstance:
    instance_id: int
    job_id: int
    duplicate: bool  # the SOP Instance UID was already known: nothing new was queued
    path: str  # spool path of the stored copy (the first one, for a duplicate)


@dataclass(frozen=True)
class Job:
    id: int
    instance_id: int
    sop_instance_uid: str
    path: str
    attempts: int  # including the current claim


@dataclass(frozen=True)
class ProducedObject:
    kind: str  # "SR" | "SC" | "GSPS" | "PDF"
    sop_class_uid: str
    sop_instance_uid: str
    path: str


@dataclass(frozen=True)
class Dispatch:
    id: int
    object_id: int
    destination: str
    attempts: int  # including the current claim
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    path: str


def _now() -> float:
    return time.time()


class Store:
    """Open (and create or migrate) the node database at ``path``.

    ``read_only=True`` opens an existing database as it is (e.g. `analyze --history`):
    nothing is created, migrated or switched to WAL, and a database of another schema
    version is refused.
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0,
                 read_only: bool = False) -> None:
        self.path = Path(path)
        try:
            if read_only:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                           timeout=timeout_s, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Autocommit mode: every public method opens its own explicit transaction.
                self._db = sqlite3.connect(
                    self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
                )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        try:
            if read_only:
                self._check_version()
                return
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the SCP answers Success (power-cut safe).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{self.path} is not a usable dxr-node database: {exc}") from None
        except StoreError:
            self._db.close()
            raise

    def _check_version(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise StoreError(f"{self.path} is not a dxr-node database (no schema version)")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this dxr-node reads version "
                f"{SCHEMA_VERSION} (a node of this version upgrades it when it opens it)")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this dxr-node knows "
                f"{SCHEMA_VERSION} (upgrade dxr-node)"
            )
        if version == SCHEMA_VERSION:
            return
        with self._transaction() as db:
            # Read again under the write lock: another process may have just migrated.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    db.execute(statement)
            elif version == 1:
                db.execute("ALTER TABLE objects ADD COLUMN file_deleted_at REAL")
            if version < 3:  # reader review: accounts, sessions, reviews, audit
                from dxr_node.node.review_store import create_review_tables

                create_review_tables(db)
            if version < 4:
                from dxr_node.node.integration_store import migrate_v4

                migrate_v4(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full): else the connection stays inside
                # the transaction and every later BEGIN fails. SQLite may have rolled back.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # --- receiving (SCP) -------------------------------------------------------------

    def add_instance(self, info: InstanceInfo, *, skip_reason: str | None = None) -> AddedInstance:
        """Record a received instance and queue its job (or record it as skipped).

        A SOP Instance UID already known is not queued again: the existing row's
        ``receive_count`` goes up and ``duplicate`` is True. The spool copy at ``info.path``
        is recorded only if retention already deleted the first one."""
        now = _now()
        with self._transaction() as db:
            row = db.execute(
                "SELECT i.id, i.path, j.id AS job_id FROM instances i "
                "JOIN jobs j ON j.instance_id = i.id WHERE i.sop_instance_uid = ?",
                (info.sop_instance_uid,),
            ).fetchone()
            if row is not None:
                # Once retention purged the first copy, the caller's new copy takes its
                # place, so the next purge deletes that one too (else it is never purged).
                db.execute(
                    "UPDATE instances SET receive_count = receive_count + 1,"
                    " last_received_at = ?,"
                    " path = CASE WHEN spool_deleted_at IS NULL THEN path ELSE ? END,"
                    " spool_deleted_at = NULL WHERE id = ?",
                    (now, info.path, row["id"]),
                )
                path = db.execute("SELECT path FROM instances WHERE id = ?",
                                  (row["id"],)).fetchone()[0]
                return AddedInstance(row["id"], row["job_id"], True, path)
            instance_id = inserted_id(db.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
                " study_instance_uid, series_instance_uid, patient_id, issuer_of_patient_id,"
                " study_date, modality, calling_aet, source_ip, path, size_bytes,"
                " received_at, last_received_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    info.sop_instance_uid, info.sop_class_uid, info.transfer_syntax_uid,
                    info.study_instance_uid, info.series_instance_uid, info.patient_id,
                    info.issuer_of_patient_id, info.study_date, info.modality,
                    info.calling_aet, info.source_ip, info.path, info.size_bytes, now, now,
                ),
            ))
            if skip_reason is None:
                job_id = inserted_id(db.execute(
                    "INSERT INTO jobs (instance_id, state, created_at, updated_at)"
                    " VALUES (?, 'queued', ?, ?)",
                    (instance_id, now, now),
                ))
            else:
                job_id = inserted_id(db.execute(
                    "INSERT INTO jobs (instance_id, state, error, created_at, updated_at,"
                    " finished_at) VALUES (?, 'skipped', ?, ?, ?, ?)",
                    (instance_id, skip_reason, now, now, now),
                ))
            return AddedInstance(instance_id, job_id, False, info.path)

    # --- analysis jobs (workers) -----------------------------------------------------

    def claim_job(self, worker: str) -> Job | None:
        """Atomically take the oldest queued job, or None when the queue is empty."""
        now = _now()
        with self._transaction() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, claimed_by = ?,"
                " started_at = ?, updated_at = ?"
                " WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1)"
                " RETURNING id, instance_id, attempts",
                (worker, now, now),
            ).fetchone()
            if row is None:
                return None
            inst = db.execute(
                "SELECT sop_instance_uid, path FROM instances WHERE id = ?", (row["instance_id"],)
            ).fetchone()
            return Job(row["id"], row["instance_id"], inst["sop_instance_uid"], inst["path"],
                       row["attempts"])

    def finish_job(
        self,
        job_id: int,
        *,
        status: str,
        analysis: dict[str, Any],
        interpretation: dict[str, Any] | None,
        objects: Sequence[ProducedObject],
        destinations: Sequence[str],
        laterality: str | None = None,
        also: InTransaction | None = None,
    ) -> None:
        """Record a job's result and objects, and queue one dispatch per object and
        destination, all in one transaction (a crash leaves the job re-runnable).
        ``also`` runs in the same transaction (the result's HL7/FHIR messages).

        ``laterality`` is the exam's hand by ``dxr_node.clinical.exam_laterality`` (None:
        unknown, e.g. header and image disagree): ``priors()`` compares like with like.
        """
        now = _now()
        with self._transaction() as db:
            inst = db.execute(
                "SELECT i.id, i.sop_instance_uid, i.patient_id, i.issuer_of_patient_id,"
                " i.study_date FROM jobs j JOIN instances i ON i.id = j.instance_id"
                " WHERE j.id = ?",
                (job_id,),
            ).fetchone()
            if inst is None:
                raise KeyError(f"no job {job_id}")
            bmd = analysis.get("dxr_bmd_g_cm2") if status == "ok" else None
            db.execute(
                "INSERT OR REPLACE INTO results (job_id, instance_id, sop_instance_uid,"
                " patient_id, issuer_of_patient_id, study_date, status, laterality,"
                " dxr_bmd_g_cm2, analysis_json, interpretation_json, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id, inst["id"], inst["sop_instance_uid"], inst["patient_id"],
                    inst["issuer_of_patient_id"], inst["study_date"], status, laterality, bmd,
                    json.dumps(analysis),
                    None if interpretation is None else json.dumps(interpretation), now,
                ),
            )
            for obj in objects:
                # A re-run rewrites the file: if retention had deleted it, it is back.
                db.execute(
                    "INSERT INTO objects (job_id, kind, sop_class_uid,"
                    " sop_instance_uid, path, created_at) VALUES (?,?,?,?,?,?)"
                    # A re-run rewrote the file: it is new again for retention.
                    " ON CONFLICT (sop_instance_uid) DO UPDATE SET file_deleted_at = NULL,"
                    " created_at = excluded.created_at",
                    (job_id, obj.kind, obj.sop_class_uid, obj.sop_instance_uid, obj.path, now),
                )
                object_id = db.execute(
                    "SELECT id FROM objects WHERE sop_instance_uid = ?", (obj.sop_instance_uid,)
                ).fetchone()[0]
                for destination in destinations:
                    db.execute(
                        "INSERT OR IGNORE INTO dispatches (object_id, destination, state,"
                        " next_attempt_at, created_at, updated_at)"
                        " VALUES (?, ?, 'pending', ?, ?, ?)",
                        (object_id, destination, now, now, now),
                    )
            if also is not None:
                also(db, job_id)
            db.execute(
                "UPDATE jobs SET state = 'done', error = NULL, finished_at = ?, updated_at = ?"
                " WHERE id = ?",
                (now, now, job_id),
            )

    def fail_job(self, job_id: int, reason: str) -> None:
        """Mark a job failed for good with a reason (e.g. unreadable image)."""
        now = _now()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished_at = ?, updated_at = ?"
                " WHERE id = ?",
                (reason, now, now, job_id),
            )

    def release_job(self, job_id: int, reason: str, *, max_attempts: int) -> str:
        """A job's worker died: queue it again, or fail it once it has used
        ``max_attempts`` claims. Returns the new state."""
        with self._transaction() as db:
            row = self._requeue_or_fail(db, "id = ? AND state = 'running'", (job_id,),
                                        reason, max_attempts).fetchone()
            return row["state"] if row else ""

    def return_job(self, job_id: int, reason: str) -> None:
        """Hand a running job back without counting the claim: its outcome could not be
        recorded for a reason that is not the image's (disk full)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0),"
                " claimed_by = NULL, error = ?, updated_at = ? WHERE id = ? AND state = 'running'",
                (reason, _now(), job_id))

    @staticmethod
    def _requeue_or_fail(db: sqlite3.Connection, where: str, params: Sequence[Any],
                         reason: str, max_attempts: int) -> sqlite3.Cursor:
        """Running jobs matching ``where`` go back to the queue, or fail once they have
        used ``max_attempts`` claims; the cursor returns each one's new state."""
        now = _now()
        return db.execute(
            "UPDATE jobs SET state = CASE WHEN attempts >= ? THEN 'failed' ELSE 'queued' END,"
            " error = ?, finished_at = CASE WHEN attempts >= ? THEN ? END, updated_at = ?"
            f" WHERE {where} RETURNING state",
            (max_attempts, reason, max_attempts, now, now, *params),
        )

    def recover_interrupted(self, *, max_attempts: int) -> int:
        """At start-up: jobs left ``running`` and dispatches left ``sending`` by a dead
        node go back to their queues (jobs past ``max_attempts`` fail). Returns how
        many rows were recovered."""
        now = _now()
        reason = "interrupted: the node stopped while this job was running"
        with self._transaction() as db:
            jobs = len(self._requeue_or_fail(db, "state = 'running'", (), reason,
                                             max_attempts).fetchall())
            sends = db.execute(
                "UPDATE dispatches SET state = 'pending', next_attempt_at = ?, updated_at = ?"
                " WHERE state = 'sending'",
                (now, now),
            ).rowcount
            return jobs + sends

    # --- dispatch (SCU) --------------------------------------------------------------

    def dispatch_sent(self, dispatch_id: int, status: int) -> None:
        now = _now()
        with self._transaction() as db:
            db.execute(
                "UPDATE dispatches SET state = 'sent', last_status = ?, error = NULL,"
                " sent_at = ?, updated_at = ? WHERE id = ?",
                (status, now, now, dispatch_id),
            )

    def dispatch_retry_later(
        self, dispatch_id: int, reason: str, next_attempt_at: float, status: int | None = None
    ) -> None:
        """A transient failure: back to pending, due again at ``next_attempt_at``."""
        with self._transaction() as db:
            db.execute(
                "UPDATE dispatches SET state = 'pending', error = ?, last_status = ?,"
                " next_attempt_at = ?, updated_at = ? WHERE id = ?",
                (reason, status, next_attempt_at, _now(), dispatch_id),
            )

    def dispatch_failed(self, dispatch_id: int, reason: str, status: int | None = None) -> None:
        """A permanent failure (or retries exhausted): kept for `dxr-node retry`."""
        with self._transaction() as db:
            db.execute(
                "UPDATE dispatches SET state = 'failed', error = ?, last_status = ?,"
                " updated_at = ? WHERE id = ?",
                (reason, status, _now(), dispatch_id),
            )

    # --- follow-up (HistorySource for the pipeline) ----------------------------------

    def priors(
        self, patient_id: str, issuer: str | None, exclude_sop_instance_uid: str
    ) -> list[PriorResult]:
        """Earlier successful results of the same patient (same PatientID and issuer),
        oldest first; the instance being analysed is never its own prior."""
        rows = self._read(
            "SELECT sop_instance_uid, study_date, laterality, dxr_bmd_g_cm2 FROM results"
            " WHERE patient_id = ? AND issuer_of_patient_id IS ? AND status = 'ok'"
            " AND dxr_bmd_g_cm2 IS NOT NULL AND sop_instance_uid != ?"
            " ORDER BY study_date, created_at",
            (patient_id, issuer or None, exclude_sop_instance_uid),
        )
        return [
            PriorResult(r["sop_instance_uid"], r["study_date"] or "", r["laterality"],
                        r["dxr_bmd_g_cm2"])
            for r in rows
        ]

    # --- retention -------------------------------------------------------------------

    def spool_files_to_delete(self, older_than: float) -> list[tuple[int, str]]:
        """(instance id, path) of spooled images received before ``older_than`` whose
        job is finished (done, failed or skipped) and still on disk."""
        rows = self._read(
            "SELECT i.id, i.path FROM instances i JOIN jobs j ON j.instance_id = i.id"
            " WHERE i.received_at < ? AND i.spool_deleted_at IS NULL"
            " AND j.state IN ('done','failed','skipped') ORDER BY i.id",
            (older_than,),
        )
        return [(r["id"], r["path"]) for r in rows]

    def mark_spool_deleted(self, instance_id: int) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE instances SET spool_deleted_at = ? WHERE id = ?", (_now(), instance_id)
            )

    def object_files_to_delete(self, older_than: float) -> list[tuple[int, str]]:
        """(object id, path) of produced objects created before ``older_than``, still on
        disk and delivered: they have dispatches and every one is sent. Objects not yet
        delivered, failed or without any destination are kept."""
        rows = self._read(
            "SELECT o.id, o.path FROM objects o WHERE o.created_at < ?"
            " AND o.file_deleted_at IS NULL"
            " AND EXISTS (SELECT 1 FROM dispatches d WHERE d.object_id = o.id)"
            " AND NOT EXISTS (SELECT 1 FROM dispatches d WHERE d.object_id = o.id"
            "   AND d.state != 'sent') ORDER BY o.id",
            (older_than,),
        )
        return [(r["id"], r["path"]) for r in rows]

    def mark_object_deleted(self, object_id: int) -> None:
        """The object's file is gone; its row (and dispatch history) stays."""
        with self._transaction() as db:
            db.execute("UPDATE objects SET file_deleted_at = ? WHERE id = ?",
                       (_now(), object_id))

    # --- reading (status, console) ---------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per state: {"jobs": {...}, "dispatches": {...}} with every state present."""
        out: dict[str, dict[str, int]] = {
            "jobs": dict.fromkeys(JOB_STATES, 0),
            "dispatches": dict.fromkeys(DISPATCH_STATES, 0),
        }
        for table in ("jobs", "dispatches"):
            for row in self._read(f"SELECT state, COUNT(*) FROM {table} GROUP BY state"):
                out[table][row[0]] = row[1]
        return out

    def instance_count(self) -> int:
        return self._read("SELECT COUNT(*) FROM instances")[0][0]

    def recent_results(self, limit: int = 10) -> list[dict[str, Any]]:
        """Newest results first: job, SOP Instance UID, status and key numbers."""
        rows = self._read(
            "SELECT r.job_id, r.sop_instance_uid, r.study_date, r.status, r.laterality,"
            " r.dxr_bmd_g_cm2, r.analysis_json, r.interpretation_json, r.created_at,"
            " (SELECT COUNT(*) FROM objects o WHERE o.job_id = r.job_id) AS n_objects"
            " FROM results r ORDER BY r.created_at DESC, r.job_id DESC LIMIT ?",
            (limit,),
        )
        out = []
        for r in rows:
            analysis = json.loads(r["analysis_json"])
            interp = json.loads(r["interpretation_json"]) if r["interpretation_json"] else {}
            out.append({
                "job_id": r["job_id"],
                "sop_instance_uid": r["sop_instance_uid"],
                "study_date": r["study_date"],
                "status": r["status"],
                "laterality": r["laterality"],
                "dxr_bmd_g_cm2": r["dxr_bmd_g_cm2"],
                "mci": analysis.get("mci"),
                "bhi": analysis.get("bhi"),
                "t_score": interp.get("t_score"),
                "category": interp.get("category"),
                "reasons": analysis.get("reasons", []),
                "objects": r["n_objects"],
                "finished_at": r["created_at"],
            })
        return out

    def skipped(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest instances accepted but not analysed, with the triage reason."""
        rows = self._read(
            "SELECT j.id, i.sop_instance_uid, i.sop_class_uid, i.modality, j.error,"
            " j.updated_at FROM jobs j JOIN instances i ON i.id = j.instance_id"
            " WHERE j.state = 'skipped' ORDER BY j.id DESC LIMIT ?",
            (limit,),
        )
        return [
            {"job_id": r[0], "sop_instance_uid": r[1], "sop_class_uid": r[2], "modality": r[3],
             "reason": r[4], "at": r[5]}
            for r in rows
        ]

    def job_state(self, job_id: int) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return dict(rows[0]) if rows else None

    def objects_for_job(self, job_id: int) -> list[ProducedObject]:
        rows = self._read(
            "SELECT kind, sop_class_uid, sop_instance_uid, path FROM objects WHERE job_id = ?"
            " ORDER BY id",
            (job_id,),
        )
        return [ProducedObject(*r) for r in rows]

    # --- worker pool support (added by the worker/dispatch side, used by node.worker) -

    def running_jobs_claimed_by(self, worker: str) -> list[int]:
        """Ids of the jobs still ``running`` under the claim name ``worker`` (a dead
        worker's jobs, which the pool hands back with ``release_job``)."""
        rows = self._read(
            "SELECT id FROM jobs WHERE state = 'running' AND claimed_by = ? ORDER BY id",
            (worker,),
        )
        return [r[0] for r in rows]

    def claim_dispatches(self, destination: str, limit: int, *,
                         now: float | None = None) -> list[Dispatch]:
        """Atomically take up to ``limit`` due pending dispatches for one destination
        (oldest due first), so each destination is served on its own and a slow one
        never holds back the others."""
        now = _now() if now is None else now
        with self._transaction() as db:
            claimed = db.execute(
                "UPDATE dispatches SET state = 'sending', attempts = attempts + 1, updated_at = ?"
                " WHERE id IN (SELECT id FROM dispatches WHERE state = 'pending'"
                "   AND destination = ? AND next_attempt_at <= ?"
                "   ORDER BY next_attempt_at, id LIMIT ?)"
                " RETURNING id, object_id, destination, attempts",
                (now, destination, now, limit),
            ).fetchall()
            out = []
            for row in sorted(claimed, key=lambda r: r["id"]):
                obj = db.execute(
                    "SELECT kind, sop_class_uid, sop_instance_uid, path FROM objects"
                    " WHERE id = ?", (row["object_id"],),
                ).fetchone()
                out.append(Dispatch(row["id"], row["object_id"], row["destination"],
                                    row["attempts"], obj["kind"], obj["sop_class_uid"],
                                    obj["sop_instance_uid"], obj["path"]))
            return out

    def pending_destinations(self) -> list[str]:
        """Names of the destinations that have pending dispatches."""
        rows = self._read(
            "SELECT DISTINCT destination FROM dispatches WHERE state = 'pending' ORDER BY 1"
        )
        return [r[0] for r in rows]

    # --- console queries (dxr_node.web) ----------------------------------------------
    # Read models of the operator console plus its two operator actions (retry one
    # dispatch or job). An "exam" is one received instance and its analysis job; the
    # console names it by job id. Exam status, as an administrator reads it:
    # waiting (queued/running), analysed (result ok), rejected (engine rejected it or
    # triage skipped it), failed (job failed or the engine errored).

    _EXAM_STATUS_SQL = (
        "CASE WHEN j.state IN ('queued','running') THEN 'waiting'"
        " WHEN j.state = 'failed' THEN 'failed'"
        " WHEN j.state = 'skipped' THEN 'rejected'"
        " WHEN r.status = 'ok' THEN 'analysed'"
        " WHEN r.status = 'rejected' THEN 'rejected'"
        " ELSE 'failed' END"
    )

    def ensure_console_indexes(self) -> None:
        """Indexes the console's filters and aggregates use (idempotent)."""
        with self._transaction() as db:
            db.execute("CREATE INDEX IF NOT EXISTS instances_received"
                       " ON instances (received_at)")
            db.execute("CREATE INDEX IF NOT EXISTS instances_study_date"
                       " ON instances (study_date)")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at)")
            db.execute("CREATE INDEX IF NOT EXISTS dispatches_destination"
                       " ON dispatches (destination, state)")

    def exams(
        self,
        *,
        status: str | None = None,
        patient_id: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of exams, newest received first, and the number matching the filters.
        ``date_from``/``date_to`` bound the study date (YYYYMMDD, inclusive)."""
        where, params = [], []
        if status:
            where.append(f"{self._EXAM_STATUS_SQL} = ?")
            params.append(status)
        if patient_id:
            where.append("i.patient_id = ?")
            params.append(patient_id)
        if date_from:
            where.append("i.study_date >= ?")
            params.append(date_from)
        if date_to:
            where.append("i.study_date <= ?")
            params.append(date_to)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        joins = (" FROM instances i JOIN jobs j ON j.instance_id = i.id"
                 " LEFT JOIN results r ON r.job_id = j.id")
        total = self._read(f"SELECT COUNT(*){joins}{clause}", params)[0][0]
        rows = self._read(
            "SELECT j.id AS job_id, i.sop_instance_uid, i.patient_id, i.study_date,"
            " i.modality, i.received_at, j.state AS job_state, j.error,"
            f" {self._EXAM_STATUS_SQL} AS status, r.status AS result_status,"
            " COALESCE(r.laterality, '') AS laterality, r.dxr_bmd_g_cm2,"
            " json_extract(r.interpretation_json, '$.t_score') AS t_score,"
            " json_extract(r.interpretation_json, '$.category') AS category,"
            " json_extract(r.analysis_json, '$.reasons') AS reasons"
            f"{joins}{clause} ORDER BY i.id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [self._exam_row(r) for r in rows], total

    @staticmethod
    def _exam_row(r: sqlite3.Row) -> dict[str, Any]:
        out = dict(r)
        reasons = json.loads(out["reasons"]) if out["reasons"] else []
        error = out.pop("error")
        if error and out["job_state"] in ("failed", "skipped"):
            reasons.append(error)
        out["reasons"] = reasons
        out["laterality"] = out["laterality"] or None
        return out

    def exam(self, job_id: int) -> dict[str, Any] | None:
        """Everything the console's detail page shows about one exam, or None."""
        rows = self._read(
            "SELECT j.id AS job_id, j.state AS job_state, j.attempts, j.error,"
            " j.started_at, j.finished_at, i.sop_instance_uid, i.sop_class_uid,"
            " i.transfer_syntax_uid, i.study_instance_uid, i.series_instance_uid,"
            " i.patient_id, i.issuer_of_patient_id, i.study_date, i.modality,"
            " i.calling_aet, i.received_at, i.receive_count, i.spool_deleted_at,"
            f" {self._EXAM_STATUS_SQL} AS status, r.analysis_json, r.interpretation_json"
            " FROM jobs j JOIN instances i ON i.id = j.instance_id"
            " LEFT JOIN results r ON r.job_id = j.id WHERE j.id = ?",
            (job_id,),
        )
        if not rows:
            return None
        exam = dict(rows[0])
        analysis = exam.pop("analysis_json")
        interpretation = exam.pop("interpretation_json")
        exam["analysis"] = json.loads(analysis) if analysis else None
        exam["interpretation"] = json.loads(interpretation) if interpretation else None
        exam["objects"] = [dict(r) for r in self._read(
            "SELECT id, kind, sop_class_uid, sop_instance_uid, path, created_at"
            " FROM objects WHERE job_id = ? ORDER BY id", (job_id,))]
        exam["dispatches"] = self.exam_dispatches(job_id)
        return exam

    def exam_dispatches(self, job_id: int) -> list[dict[str, Any]]:
        """Each produced object's dispatch to each destination, by destination."""
        return [dict(r) for r in self._read(
            "SELECT d.id, d.destination, o.kind, o.sop_instance_uid, d.state, d.attempts,"
            " d.last_status, d.error, d.next_attempt_at, d.created_at, d.updated_at,"
            " d.sent_at FROM dispatches d JOIN objects o ON o.id = d.object_id"
            " WHERE o.job_id = ? ORDER BY d.destination, o.id", (job_id,))]

    def patient_results(self, patient_id: str, issuer: str | None) -> list[dict[str, Any]]:
        """All successful results of one patient, oldest study first (for the plot)."""
        return [dict(r) for r in self._read(
            "SELECT job_id, study_date, laterality, dxr_bmd_g_cm2 FROM results"
            " WHERE patient_id = ? AND issuer_of_patient_id IS ? AND status = 'ok'"
            " AND dxr_bmd_g_cm2 IS NOT NULL ORDER BY study_date, created_at",
            (patient_id, issuer or None))]

    def open_failures(self, limit: int = 200) -> list[dict[str, Any]]:
        """Failed jobs, failed dispatches and dispatches waiting to be retried after an
        error, newest first."""
        rows = self._read(
            "SELECT 'job' AS what, j.id, j.id AS job_id, i.sop_instance_uid,"
            " NULL AS destination, NULL AS kind, j.state, j.attempts, j.error AS reason,"
            " NULL AS next_attempt_at, j.updated_at"
            " FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE j.state = 'failed'"
            " UNION ALL "
            "SELECT 'dispatch', d.id, o.job_id, o.sop_instance_uid, d.destination, o.kind,"
            " d.state, d.attempts, d.error, d.next_attempt_at, d.updated_at"
            " FROM dispatches d JOIN objects o ON o.id = d.object_id"
            " WHERE d.state = 'failed' OR (d.state = 'pending' AND d.error IS NOT NULL)"
            " UNION ALL "
            "SELECT 'message', m.id, m.job_id, NULL, m.destination, m.kind, m.state,"
            " m.attempts, m.error, m.next_attempt_at, m.updated_at FROM outbound_messages m"
            " WHERE m.state = 'failed' OR (m.state = 'pending' AND m.error IS NOT NULL)"
            " ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )
        return [dict(r) for r in rows]

    def open_failure_count(self) -> int:
        """How many items ``open_failures`` would list without a limit."""
        return self._read(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE state = 'failed')"
            " + (SELECT COUNT(*) FROM dispatches WHERE state = 'failed')"
            " + (SELECT COUNT(*) FROM dispatches WHERE state = 'pending'"
            " AND error IS NOT NULL)"
            " + (SELECT COUNT(*) FROM outbound_messages WHERE state = 'failed'"
            " OR (state = 'pending' AND error IS NOT NULL))")[0][0]

    def retry_dispatch(self, dispatch_id: int) -> bool:
        """Operator action: send a failed (or waiting) dispatch again now, with fresh
        attempts and its old error cleared. False when it does not exist or is already
        sent or sending."""
        now = _now()
        with self._transaction() as db:
            return db.execute(
                "UPDATE dispatches SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                " error = NULL, updated_at = ? WHERE id = ? AND state IN ('failed','pending')",
                (now, now, dispatch_id),
            ).rowcount == 1

    def retry_job(self, job_id: int) -> bool:
        """Operator action: queue a failed analysis job again with fresh attempts."""
        with self._transaction() as db:
            return db.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, error = NULL,"
                " finished_at = NULL, updated_at = ? WHERE id = ? AND state = 'failed'",
                (_now(), job_id),
            ).rowcount == 1

    def retry_all_failures(self, *, jobs: bool = True) -> dict[str, int]:
        """Operator action (console, `dxr-node retry`): every failed or waiting dispatch
        and, unless ``jobs`` is False, every failed job, now, with fresh attempts (errors
        cleared: they are no longer open failures)."""
        now = _now()
        with self._transaction() as db:
            dispatches = db.execute(
                "UPDATE dispatches SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                " error = NULL, updated_at = ? WHERE state = 'failed'"
                " OR (state = 'pending' AND error IS NOT NULL)",
                (now, now),
            ).rowcount
            dispatches += db.execute(  # HL7/FHIR messages are dispatches too
                "UPDATE outbound_messages SET state = 'pending', attempts = 0,"
                " next_attempt_at = ?, error = NULL, updated_at = ? WHERE state = 'failed'"
                " OR (state = 'pending' AND error IS NOT NULL)",
                (now, now),
            ).rowcount
            requeued = db.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, error = NULL,"
                " finished_at = NULL, updated_at = ? WHERE state = 'failed'",
                (now,),
            ).rowcount if jobs else 0
        return {"dispatches": dispatches, "jobs": requeued}

    def exam_status_counts(self, since: float) -> dict[str, int]:
        """Exams received since ``since`` per console status (every status present)."""
        out = dict.fromkeys(("received", "analysed", "rejected", "failed", "waiting"), 0)
        for row in self._read(
            f"SELECT {self._EXAM_STATUS_SQL}, COUNT(*) FROM instances i"
            " JOIN jobs j ON j.instance_id = i.id LEFT JOIN results r ON r.job_id = j.id"
            " WHERE i.received_at >= ? GROUP BY 1",
            (since,),
        ):
            out[row[0]] = row[1]
            out["received"] += row[1]
        return out

    def analysis_durations(self, since: float) -> list[float]:
        """Seconds from claim to result of the jobs done since ``since``."""
        return [r[0] for r in self._read(
            "SELECT finished_at - started_at FROM jobs WHERE finished_at >= ?"
            " AND state = 'done' AND started_at IS NOT NULL", (since,))]

    def analysis_duration_histogram(self, bounds: Sequence[float]) -> tuple[list[int], int, float]:
        """For all done jobs' run times (claim to result): how many are <= each bound
        (cumulative), how many there are and their sum in seconds."""
        counts = ", ".join("COALESCE(SUM(seconds <= ?), 0)" for _ in bounds)
        row = self._read(
            f"SELECT {counts}, COUNT(*), COALESCE(SUM(seconds), 0.0) FROM"
            " (SELECT finished_at - started_at AS seconds FROM jobs"
            "  WHERE state = 'done' AND started_at IS NOT NULL)", tuple(bounds))[0]
        return list(row[:len(bounds)]), row[len(bounds)], row[len(bounds) + 1]

    def spool_usage(self) -> dict[str, int]:
        """Received images still in the spool: how many and their bytes."""
        row = self._read("SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM instances"
                         " WHERE spool_deleted_at IS NULL")[0]
        return {"files": row[0], "bytes": row[1]}

    def received_total(self) -> int:
        """Every C-STORE of an instance, duplicates included."""
        return self._read("SELECT COALESCE(SUM(receive_count), 0) FROM instances")[0][0]

    def destination_health(self) -> list[dict[str, Any]]:
        """Per destination: dispatches by state, attempts, last success, last failure."""
        out = []
        for r in self._read(
            "SELECT destination, SUM(state = 'pending') AS pending,"
            " SUM(state = 'sending') AS sending, SUM(state = 'sent') AS sent,"
            " SUM(state = 'failed') AS failed, SUM(attempts) AS attempts,"
            " SUM(error IS NOT NULL) AS with_error, MAX(sent_at) AS last_success_at"
            " FROM dispatches GROUP BY destination ORDER BY destination"
        ):
            item = dict(r)
            last = self._read(
                "SELECT updated_at, error FROM dispatches WHERE destination = ?"
                " AND error IS NOT NULL ORDER BY updated_at DESC LIMIT 1", (r["destination"],))
            item["last_failure_at"] = last[0]["updated_at"] if last else None
            item["last_failure_reason"] = last[0]["error"] if last else None
            out.append(item)
        return out

    def is_writable(self) -> bool:
        """Whether a write transaction can start now (for the console's /healthz)."""
        try:
            with self._transaction():
                pass
        except sqlite3.Error:
            return False
        return True
