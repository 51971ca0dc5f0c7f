"""The one versioned migration path of the node database.

``MIGRATIONS`` is every schema change since the first, in order; a database at version
*v* gets the steps after *v*, in one transaction, when a node opens it (the version is
SQLite's ``user_version``, or the ``schema_version`` table on PostgreSQL). Each step is
written once, for SQLite, and ``Dialect.ddl`` restates it for the engine in use. A new
table, column or index is a new step here, never a statement elsewhere.

Tables (times are UTC seconds since the epoch):

- ``instances``: every SOP instance received (one row per SOP Instance UID; a duplicate
  only bumps ``receive_count``), with its spool path and the header fields needed for
  routing and follow-up. No patient names are stored.
- ``jobs``: one analysis job per instance (states: ``states.JobState``). ``attempts``
  counts claims, so an image that kills its worker is retried a bounded number of times.
- ``results``: one per finished job: engine status, analysis and interpretation JSON,
  plus the columns ``priors()`` needs (patient, study date, laterality, DXR-BMD).
- ``objects``: the DICOM objects a job produced, unique by SOP Instance UID so a re-run
  with deterministic UIDs never makes a second row; ``file_deleted_at`` once retention
  deleted the file after delivery.
- ``dispatches``: one per (object, destination) (states: ``states.DispatchState``).
- ``nodes`` (step 6): the nodes sharing the database, with their last heartbeat; a
  running job's or a sending dispatch's ``node`` holds it until ``lease_expires_at``.
- review (step 3, ``review_store``) and interfaces (step 4, ``integration_store``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dxr_node.node.database import Connection, Dialect
from dxr_node.node.states import DispatchState, JobState, ObjectKind, sql_list

_CORE_V1 = f"""
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
    state       TEXT NOT NULL CHECK (state IN ({sql_list(JobState)})),
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
    kind             TEXT NOT NULL CHECK (kind IN ({sql_list(ObjectKind)})),
    sop_class_uid    TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    path             TEXT NOT NULL,
    created_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_job ON objects (job_id);

CREATE TABLE IF NOT EXISTS dispatches (
    id              INTEGER PRIMARY KEY,
    object_id       INTEGER NOT NULL REFERENCES objects (id),
    destination     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ({sql_list(DispatchState)})),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status     INTEGER,
    error           TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    sent_at         REAL,
    UNIQUE (object_id, destination)
);
CREATE INDEX IF NOT EXISTS dispatches_state ON dispatches (state, next_attempt_at)
"""

# The console's filters and aggregates (exams by received time and study date, recent
# durations, destination health).
_CONSOLE_INDEXES_V5 = """
CREATE INDEX IF NOT EXISTS instances_received ON instances (received_at);
CREATE INDEX IF NOT EXISTS instances_study_date ON instances (study_date);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at);
CREATE INDEX IF NOT EXISTS dispatches_destination ON dispatches (destination, state)
"""


# Several nodes on one database: who holds a running job or a send, until when (renewed by
# the holder's heartbeat; taken over by another node once past), and the nodes themselves.
_CLUSTER_V6 = """
ALTER TABLE jobs ADD COLUMN node TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_at REAL;
ALTER TABLE dispatches ADD COLUMN node TEXT;
ALTER TABLE dispatches ADD COLUMN lease_expires_at REAL;
CREATE INDEX IF NOT EXISTS jobs_node ON jobs (node, state);
CREATE INDEX IF NOT EXISTS dispatches_node ON dispatches (node, state);
CREATE TABLE IF NOT EXISTS nodes (
    name         TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    version      TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    roles        TEXT NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    stopped_at   REAL
)
"""


def run_script(db: Connection, dialect: Dialect, script: str) -> None:
    """Run ``;``-separated DDL statements (idempotent ones: IF NOT EXISTS)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(dialect.ddl(statement))


def _review_tables(db: Connection, dialect: Dialect) -> None:
    from dxr_node.node.review_store import REVIEW_SCHEMA

    run_script(db, dialect, REVIEW_SCHEMA)


def _interface_tables(db: Connection, dialect: Dialect) -> None:
    from dxr_node.node.integration_store import SCHEMA_V4

    run_script(db, dialect, SCHEMA_V4)


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    apply: Callable[[Connection, Dialect], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "instances, jobs, results, objects, dispatches",
              lambda db, d: run_script(db, d, _CORE_V1)),
    Migration(2, "objects.file_deleted_at (retention of produced objects)",
              lambda db, d: run_script(
                  db, d, "ALTER TABLE objects ADD COLUMN file_deleted_at REAL")),
    Migration(3, "reader review: users, sessions, reviews, review_actions", _review_tables),
    Migration(4, "interfaces: orders, hl7_inbound, outbound_messages", _interface_tables),
    Migration(5, "console indexes", lambda db, d: run_script(db, d, _CONSOLE_INDEXES_V5)),
    Migration(6, "cluster: leases of jobs and sends, the nodes' registry",
              lambda db, d: run_script(db, d, _CLUSTER_V6)),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
