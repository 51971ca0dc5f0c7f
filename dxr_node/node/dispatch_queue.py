"""The dispatch queue: one row per (produced object, destination), claimed by the
dispatcher thread of that destination. States are ``DispatchState``: pending -> sending
-> sent | failed; a transient failure goes back to pending, due at ``next_attempt_at``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dxr_node.node.database import Database
from dxr_node.node.states import DispatchState

PENDING, SENDING, SENT, FAILED = (DispatchState.PENDING, DispatchState.SENDING,
                                  DispatchState.SENT, DispatchState.FAILED)


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


class DispatchQueue(Database):
    """Claims and outcomes of sends to the configured destinations."""

    def claim_dispatches(self, destination: str, limit: int, *, now: float | None = None,
                         node: str | None = None,
                         lease_s: float | None = None) -> list[Dispatch]:
        """Atomically take up to ``limit`` due pending dispatches for one destination
        (oldest due first), so each destination is served on its own and a slow one
        never holds back the others. ``node`` holds them for ``lease_s`` seconds."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            claimed = db.execute(
                "UPDATE dispatches SET state = ?, attempts = attempts + 1, updated_at = ?,"
                " node = ?, lease_expires_at = ?"
                " WHERE id IN (SELECT id FROM dispatches WHERE state = ?"
                "   AND destination = ? AND next_attempt_at <= ?"
                f"   ORDER BY next_attempt_at, id LIMIT ?{self.dialect.skip_locked})"
                " RETURNING id, object_id, destination, attempts",
                (SENDING, now, node, None if lease_s is None else now + lease_s, PENDING,
                 destination, now, limit),
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
            "SELECT DISTINCT destination FROM dispatches WHERE state = ? ORDER BY 1",
            (PENDING,))
        return [r[0] for r in rows]

    def dispatch_sent(self, dispatch_id: int, status: int) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE dispatches SET state = ?, last_status = ?, error = NULL,"
                " sent_at = ?, updated_at = ? WHERE id = ?",
                (SENT, status, now, now, dispatch_id),
            )

    def dispatch_retry_later(
        self, dispatch_id: int, reason: str, next_attempt_at: float, status: int | None = None
    ) -> None:
        """A transient failure: back to pending, due again at ``next_attempt_at``."""
        with self._transaction() as db:
            db.execute(
                "UPDATE dispatches SET state = ?, error = ?, last_status = ?,"
                " next_attempt_at = ?, updated_at = ? WHERE id = ?",
                (PENDING, reason, status, next_attempt_at, time.time(), dispatch_id),
            )

    def dispatch_failed(self, dispatch_id: int, reason: str, status: int | None = None) -> None:
        """A permanent failure (or retries exhausted): kept for `dxr-node retry`."""
        with self._transaction() as db:
            db.execute(
                "UPDATE dispatches SET state = ?, error = ?, last_status = ?,"
                " updated_at = ? WHERE id = ?",
                (FAILED, reason, status, time.time(), dispatch_id),
            )

    def retry_dispatch(self, dispatch_id: int) -> bool:
        """Operator action: send a failed (or waiting) dispatch again now, with fresh
        attempts and its old error cleared. False when it does not exist or is already
        sent or sending."""
        now = time.time()
        with self._transaction() as db:
            return db.execute(
                "UPDATE dispatches SET state = ?, attempts = 0, next_attempt_at = ?,"
                " error = NULL, updated_at = ? WHERE id = ? AND state IN (?, ?)",
                (PENDING, now, now, dispatch_id, FAILED, PENDING),
            ).rowcount == 1
