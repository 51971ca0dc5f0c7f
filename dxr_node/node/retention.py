"""Retention: which spooled images and produced objects may be deleted, and marking
them deleted (their rows, and the dispatch history, stay)."""

from __future__ import annotations

import time

from dxr_node.node.database import Database
from dxr_node.node.states import FINISHED_JOB_STATES, DispatchState, sql_list


class Retention(Database):
    def spool_files_to_delete(self, older_than: float) -> list[tuple[int, str]]:
        """(instance id, path) of spooled images received before ``older_than`` whose
        job is finished (done, failed or skipped) and still on disk."""
        rows = self._read(
            "SELECT i.id, i.path FROM instances i JOIN jobs j ON j.instance_id = i.id"
            " WHERE i.received_at < ? AND i.spool_deleted_at IS NULL"
            f" AND j.state IN ({sql_list(FINISHED_JOB_STATES)}) ORDER BY i.id",
            (older_than,),
        )
        return [(r["id"], r["path"]) for r in rows]

    def mark_spool_deleted(self, instance_id: int) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE instances SET spool_deleted_at = ? WHERE id = ?",
                (time.time(), instance_id))

    def object_files_to_delete(self, older_than: float) -> list[tuple[int, str]]:
        """(object id, path) of produced objects created before ``older_than``, still on
        disk and delivered: they have dispatches and every one is sent. Objects not yet
        delivered, failed or without any destination are kept."""
        rows = self._read(
            "SELECT o.id, o.path FROM objects o WHERE o.created_at < ?"
            " AND o.file_deleted_at IS NULL"
            " AND EXISTS (SELECT 1 FROM dispatches d WHERE d.object_id = o.id)"
            " AND NOT EXISTS (SELECT 1 FROM dispatches d WHERE d.object_id = o.id"
            "   AND d.state != ?) ORDER BY o.id",
            (older_than, DispatchState.SENT),
        )
        return [(r["id"], r["path"]) for r in rows]

    def mark_object_deleted(self, object_id: int) -> None:
        """The object's file is gone; its row (and dispatch history) stays."""
        with self._transaction() as db:
            db.execute("UPDATE objects SET file_deleted_at = ? WHERE id = ?",
                       (time.time(), object_id))
