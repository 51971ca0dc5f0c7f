"""The node's durable state, one ``Store`` per process over the node database.

``Store`` puts together the modules that each own one responsibility:

- ``database``: connection, transactions, the dialect (SQLite, PostgreSQL);
- ``schema``: the tables and the one versioned migration path;
- ``job_queue``: instances received and their analysis jobs (``JobState``);
- ``dispatch_queue``: produced objects to destinations (``DispatchState``);
- ``history``: a patient's earlier results (the pipeline's ``HistorySource``);
- ``retention``: which spooled and produced files may go;
- ``console_queries``: the console's and `dxr-node status`'s read models;
- ``registry``: the nodes sharing a database, heartbeats, take-over of expired leases.

Every public method is one transaction. A ``Store`` may be shared by threads (calls are
serialised by a lock); each process opens its own.
"""

from __future__ import annotations

import time

from dxr_node.node.console_queries import ConsoleQueries
from dxr_node.node.database import StoreError
from dxr_node.node.dispatch_queue import Dispatch, DispatchQueue
from dxr_node.node.history import History
from dxr_node.node.job_queue import (
    AddedInstance,
    ClaimLost,
    InstanceInfo,
    InTransaction,
    Job,
    JobQueue,
    ProducedObject,
)
from dxr_node.node.registry import NodeRegistry
from dxr_node.node.retention import Retention
from dxr_node.node.schema import SCHEMA_VERSION
from dxr_node.node.states import DispatchState, JobState

__all__ = [
    "AddedInstance", "ClaimLost", "Dispatch", "InTransaction", "InstanceInfo", "Job",
    "ProducedObject", "SCHEMA_VERSION", "Store", "StoreError",
]


class Store(JobQueue, DispatchQueue, History, Retention, ConsoleQueries, NodeRegistry):
    """Open (and create or migrate) the node database at ``path``; see ``Database``."""

    def __enter__(self) -> Store:
        return self

    def recover_interrupted(self, *, max_attempts: int, node: str | None = None) -> int:
        """At start-up: jobs left ``running`` and dispatches left ``sending`` by a dead
        node go back to their queues (jobs past ``max_attempts`` fail). Returns how
        many rows were recovered. With ``node`` (a cluster), only what that node held
        (or nobody holds): the other nodes' work is theirs until their leases run out."""
        now = time.time()
        reason = "interrupted: the node stopped while this job was running"
        mine, params = "", tuple[str, ...]()
        if node is not None:
            mine, params = " AND (node = ? OR node IS NULL)", (node,)
        with self._transaction() as db:
            jobs = len(self._requeue_or_fail(db, f"state = ?{mine}",
                                             (JobState.RUNNING, *params), reason,
                                             max_attempts).fetchall())
            sends = db.execute(
                "UPDATE dispatches SET state = ?, next_attempt_at = ?, updated_at = ?"
                f" WHERE state = ?{mine}",
                (DispatchState.PENDING, now, now, DispatchState.SENDING, *params),
            ).rowcount
            return jobs + sends
