"""Several nodes on one database: the registry of nodes, their heartbeats, and the
take-over of work whose holder stopped renewing its leases.

A claim (job or dispatch) records the claiming node and a lease; the node renews the
leases of everything it holds with each heartbeat. A node that dies (SIGKILL, power,
network) stops renewing, and once a lease has run out any node hands that work back to
its queue: a job with a claim used (so an image that kills nodes is failed after
``worker_max_attempts``), a dispatch as due now. The finish of a job is fenced by its
claim (``JobQueue.finish_job(attempt=...)``), so a slow holder that lost its lease
cannot record a second result over its successor's.
"""

from __future__ import annotations

import time
from typing import Any

from dxr_node.node.database import Database
from dxr_node.node.states import DispatchState, JobState


class NodeRegistry(Database):
    def register_node(self, name: str, *, host: str, version: str, pid: int,
                      roles: str) -> None:
        """This node is (again) up: insert or refresh its row."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO nodes (name, host, version, pid, roles, started_at, heartbeat_at)"
                " VALUES (?,?,?,?,?,?,?) ON CONFLICT (name) DO UPDATE SET host = excluded.host,"
                " version = excluded.version, pid = excluded.pid, roles = excluded.roles,"
                " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
                " stopped_at = NULL",
                (name, host, version, pid, roles, now, now))

    def heartbeat(self, name: str, lease_s: float) -> int:
        """Renew this node's row and the leases of the jobs and sends it holds; returns
        how many leases were renewed."""
        now = time.time()
        with self._transaction() as db:
            db.execute("UPDATE nodes SET heartbeat_at = ? WHERE name = ?", (now, name))
            renewed = db.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE node = ? AND state = ?",
                (now + lease_s, name, JobState.RUNNING)).rowcount
            renewed += db.execute(
                "UPDATE dispatches SET lease_expires_at = ? WHERE node = ? AND state = ?",
                (now + lease_s, name, DispatchState.SENDING)).rowcount
            return renewed

    def node_stopped(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE nodes SET stopped_at = ? WHERE name = ?", (time.time(), name))

    def take_over_expired(self, *, max_attempts: int,
                          now: float | None = None) -> list[dict[str, Any]]:
        """Jobs and sends whose lease ran out go back to their queues (jobs past
        ``max_attempts`` fail). Returns one item per row: what, id and the old holder."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            jobs = db.execute(
                "UPDATE jobs SET state = CASE WHEN attempts >= ? THEN ? ELSE ? END,"
                " error = 'lease expired: node ' || COALESCE(node, '?')"
                " || ' stopped renewing it', finished_at = CASE WHEN attempts >= ? THEN ? END,"
                " updated_at = ?, lease_expires_at = NULL"
                " WHERE state = ? AND lease_expires_at < ? RETURNING id, node, state",
                (max_attempts, JobState.FAILED, JobState.QUEUED, max_attempts, now, now,
                 JobState.RUNNING, now)).fetchall()
            sends = db.execute(
                "UPDATE dispatches SET state = ?, next_attempt_at = ?, updated_at = ?,"
                " lease_expires_at = NULL WHERE state = ? AND lease_expires_at < ?"
                " RETURNING id, node, state",
                (DispatchState.PENDING, now, now, DispatchState.SENDING, now)).fetchall()
        return ([{"what": "job", "id": r[0], "node": r[1], "state": r[2]} for r in jobs]
                + [{"what": "dispatch", "id": r[0], "node": r[1], "state": r[2]}
                   for r in sends])

    def nodes(self) -> list[dict[str, Any]]:
        """Every registered node with its last heartbeat and what it holds now."""
        return [dict(r) for r in self._read(
            "SELECT n.name, n.host, n.version, n.pid, n.roles, n.started_at,"
            " n.heartbeat_at, n.stopped_at,"
            " (SELECT COUNT(*) FROM jobs j WHERE j.node = n.name AND j.state = ?)"
            "   AS running_jobs,"
            " (SELECT COUNT(*) FROM dispatches d WHERE d.node = n.name AND d.state = ?)"
            "   AS sending_dispatches"
            " FROM nodes n ORDER BY n.name",
            (JobState.RUNNING, DispatchState.SENDING))]

    def held_jobs(self, limit: int = 200) -> list[dict[str, Any]]:
        """Running jobs: which node and worker hold each, since when, until when."""
        return [dict(r) for r in self._read(
            "SELECT j.id AS job_id, i.sop_instance_uid, j.node, j.claimed_by, j.attempts,"
            " j.started_at, j.lease_expires_at FROM jobs j"
            " JOIN instances i ON i.id = j.instance_id WHERE j.state = ?"
            " ORDER BY j.started_at LIMIT ?", (JobState.RUNNING, limit))]
