"""The analysis job queue: instances received by the SCP become jobs that workers claim,
finish (result, objects and their dispatches in one transaction) or fail.

States are ``JobState``: queued -> running -> done | failed; skipped (triage). A claim
counts an attempt, so an image that kills its worker is failed after a bounded number.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dxr_node.node.database import Connection, Cursor, Database, inserted_id
from dxr_node.node.states import DispatchState, JobState

Q, R, D, F, S = (JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.FAILED,
                 JobState.SKIPPED)

# Called inside finish_job's transaction with the job id (e.g. to queue HL7/FHIR
# messages with the result they report).
InTransaction = Callable[[Connection, int], None]


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
    kind: str  # an ObjectKind: "SR" | "SC" | "GSPS" | "PDF"
    sop_class_uid: str
    sop_instance_uid: str
    path: str


class ClaimLost(Exception):
    """The job is no longer this claim's: its lease ran out and another node took it
    over (or an operator re-queued it). Nothing was recorded."""


def _now() -> float:
    return time.time()


class JobQueue(Database):
    """Receiving (SCP) and analysis (workers) on the ``instances``, ``jobs``,
    ``results`` and ``objects`` tables."""

    def add_instance(self, info: InstanceInfo, *, skip_reason: str | None = None) -> AddedInstance:
        """Record a received instance and queue its job (or record it as skipped).

        A SOP Instance UID already known is not queued again: the existing row's
        ``receive_count`` goes up and ``duplicate`` is True. The spool copy at ``info.path``
        is recorded only if retention already deleted the first one."""
        now = _now()
        with self._transaction() as db:
            # Two nodes receiving the same instance at once: the second INSERT waits for
            # the first's commit, then does nothing, and this is a duplicate.
            inserted = db.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
                " study_instance_uid, series_instance_uid, patient_id, issuer_of_patient_id,"
                " study_date, modality, calling_aet, source_ip, path, size_bytes,"
                " received_at, last_received_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id",
                (
                    info.sop_instance_uid, info.sop_class_uid, info.transfer_syntax_uid,
                    info.study_instance_uid, info.series_instance_uid, info.patient_id,
                    info.issuer_of_patient_id, info.study_date, info.modality,
                    info.calling_aet, info.source_ip, info.path, info.size_bytes, now, now,
                ),
            ).fetchall()
            if not inserted:
                row = db.execute(
                    "SELECT i.id, i.path, j.id AS job_id FROM instances i "
                    "JOIN jobs j ON j.instance_id = i.id WHERE i.sop_instance_uid = ?",
                    (info.sop_instance_uid,),
                ).fetchone()
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
            instance_id = int(inserted[0][0])
            if skip_reason is None:
                job_id = inserted_id(db.execute(
                    "INSERT INTO jobs (instance_id, state, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?) RETURNING id",
                    (instance_id, Q, now, now),
                ))
            else:
                job_id = inserted_id(db.execute(
                    "INSERT INTO jobs (instance_id, state, error, created_at, updated_at,"
                    " finished_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    (instance_id, S, skip_reason, now, now, now),
                ))
            return AddedInstance(instance_id, job_id, False, info.path)

    def claim_job(self, worker: str, *, node: str | None = None,
                  lease_s: float | None = None) -> Job | None:
        """Atomically take the oldest queued job, or None when the queue is empty.
        ``node`` holds it for ``lease_s`` seconds, renewed by its heartbeat (``registry``)."""
        now = _now()
        with self._transaction() as db:
            row = db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, claimed_by = ?,"
                " node = ?, lease_expires_at = ?, started_at = ?, updated_at = ?"
                " WHERE id = (SELECT id FROM jobs WHERE state = ? ORDER BY id LIMIT 1"
                f"{self.dialect.skip_locked})"
                " RETURNING id, instance_id, attempts",
                (R, worker, node, None if lease_s is None else now + lease_s, now, now, Q),
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
        attempt: int | None = None,
    ) -> None:
        """Record a job's result and objects, and queue one dispatch per object and
        destination, all in one transaction (a crash leaves the job re-runnable).
        ``also`` runs in the same transaction (the result's HL7/FHIR messages).

        ``laterality`` is the exam's hand by ``dxr_node.clinical.exam_laterality`` (None:
        unknown, e.g. header and image disagree): ``priors()`` compares like with like.

        ``attempt`` (the claim's ``Job.attempts``) fences the finish: if the job is no
        longer running under that claim, ``ClaimLost`` is raised and nothing is recorded.
        """
        now = _now()
        with self._transaction() as db:
            if attempt is not None:
                self._check_claim(db, job_id, attempt)
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
                "INSERT INTO results (job_id, instance_id, sop_instance_uid,"
                " patient_id, issuer_of_patient_id, study_date, status, laterality,"
                " dxr_bmd_g_cm2, analysis_json, interpretation_json, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (job_id) DO UPDATE SET instance_id = excluded.instance_id,"
                " sop_instance_uid = excluded.sop_instance_uid,"
                " patient_id = excluded.patient_id,"
                " issuer_of_patient_id = excluded.issuer_of_patient_id,"
                " study_date = excluded.study_date, status = excluded.status,"
                " laterality = excluded.laterality, dxr_bmd_g_cm2 = excluded.dxr_bmd_g_cm2,"
                " analysis_json = excluded.analysis_json,"
                " interpretation_json = excluded.interpretation_json,"
                " created_at = excluded.created_at",
                (
                    job_id, inst["id"], inst["sop_instance_uid"], inst["patient_id"],
                    inst["issuer_of_patient_id"], inst["study_date"], status, laterality, bmd,
                    json.dumps(analysis),
                    None if interpretation is None else json.dumps(interpretation), now,
                ),
            )
            for obj in objects:
                object_id = db.execute(
                    "INSERT INTO objects (job_id, kind, sop_class_uid,"
                    " sop_instance_uid, path, created_at) VALUES (?,?,?,?,?,?)"
                    # A re-run rewrote the file: it is new again for retention.
                    " ON CONFLICT (sop_instance_uid) DO UPDATE SET file_deleted_at = NULL,"
                    " created_at = excluded.created_at RETURNING id",
                    (job_id, obj.kind, obj.sop_class_uid, obj.sop_instance_uid, obj.path, now),
                ).fetchall()[0][0]
                for destination in destinations:
                    db.execute(
                        "INSERT INTO dispatches (object_id, destination, state,"
                        " next_attempt_at, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (object_id, destination) DO NOTHING",
                        (object_id, destination, DispatchState.PENDING, now, now, now),
                    )
            if also is not None:
                also(db, job_id)
            db.execute(
                "UPDATE jobs SET state = ?, error = NULL, finished_at = ?, updated_at = ?"
                " WHERE id = ?",
                (D, now, now, job_id),
            )

    def _check_claim(self, db: Connection, job_id: int, attempt: int) -> None:
        row = db.execute(
            "SELECT state, attempts FROM jobs WHERE id = ?"
            f"{' FOR UPDATE' if self.dialect.skip_locked else ''}", (job_id,)).fetchone()
        if row is None or row["state"] != R or row["attempts"] != attempt:
            raise ClaimLost(f"job {job_id} is no longer held by claim {attempt}")

    def fail_job(self, job_id: int, reason: str, *, attempt: int | None = None) -> None:
        """Mark a job failed for good with a reason (e.g. unreadable image); ``attempt``
        fences it as in ``finish_job``."""
        now = _now()
        with self._transaction() as db:
            if attempt is not None:
                self._check_claim(db, job_id, attempt)
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, finished_at = ?, updated_at = ?"
                " WHERE id = ?",
                (F, reason, now, now, job_id),
            )

    def release_job(self, job_id: int, reason: str, *, max_attempts: int) -> str:
        """A job's worker died: queue it again, or fail it once it has used
        ``max_attempts`` claims. Returns the new state."""
        with self._transaction() as db:
            row = self._requeue_or_fail(db, "id = ? AND state = ?", (job_id, R),
                                        reason, max_attempts).fetchone()
            return row["state"] if row else ""

    def return_job(self, job_id: int, reason: str) -> None:
        """Hand a running job back without counting the claim: its outcome could not be
        recorded for a reason that is not the image's (disk full)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?,"
                " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,"
                " claimed_by = NULL, error = ?, updated_at = ? WHERE id = ? AND state = ?",
                (Q, reason, _now(), job_id, R))

    @staticmethod
    def _requeue_or_fail(db: Connection, where: str, params: Sequence[Any],
                         reason: str, max_attempts: int) -> Cursor:
        """Running jobs matching ``where`` go back to the queue, or fail once they have
        used ``max_attempts`` claims; the cursor returns each one's new state."""
        now = _now()
        return db.execute(
            "UPDATE jobs SET state = CASE WHEN attempts >= ? THEN ? ELSE ? END,"
            " error = ?, finished_at = CASE WHEN attempts >= ? THEN ? END, updated_at = ?"
            f" WHERE {where} RETURNING state",
            (max_attempts, F, Q, reason, max_attempts, now, now, *params),
        )

    def retry_job(self, job_id: int) -> bool:
        """Operator action: queue a failed analysis job again with fresh attempts."""
        with self._transaction() as db:
            return db.execute(
                "UPDATE jobs SET state = ?, attempts = 0, error = NULL,"
                " finished_at = NULL, updated_at = ? WHERE id = ? AND state = ?",
                (Q, _now(), job_id, F),
            ).rowcount == 1

    def running_jobs_claimed_by(self, worker: str) -> list[int]:
        """Ids of the jobs still ``running`` under the claim name ``worker`` (a dead
        worker's jobs, which the pool hands back with ``release_job``)."""
        rows = self._read(
            "SELECT id FROM jobs WHERE state = ? AND claimed_by = ? ORDER BY id",
            (R, worker),
        )
        return [r[0] for r in rows]

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
