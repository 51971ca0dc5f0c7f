"""The operator console's read models (``dxr_node.web`` and `dxr-node status`), plus its
operator action "retry all".

An "exam" is one received instance and its analysis job; the console names it by job id.
Exam status, as an administrator reads it: waiting (queued/running), analysed (result
ok), rejected (engine rejected it or triage skipped it), failed (job failed or the
engine errored).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from dxr_node.engine.result import STATUS_ERROR, Severity, legacy_problem
from dxr_node.node.database import Database
from dxr_node.node.states import DispatchState, JobState

_PENDING, _SENDING, _SENT, _FAILED = (f"'{s.value}'" for s in DispatchState)

EXAM_STATUS_SQL = (
    f"CASE WHEN j.state IN ('{JobState.QUEUED}','{JobState.RUNNING}') THEN 'waiting'"
    f" WHEN j.state = '{JobState.FAILED}' THEN 'failed'"
    f" WHEN j.state = '{JobState.SKIPPED}' THEN 'rejected'"
    " WHEN r.status = 'ok' THEN 'analysed'"
    " WHEN r.status = 'rejected' THEN 'rejected'"
    " ELSE 'failed' END"
)
EXAM_STATUSES = ("analysed", "rejected", "failed", "waiting")

# Dispatches (and HL7/FHIR messages) that are open failures: failed, or waiting to be
# retried after an error.
def exam_filters(patient_id: str | None, date_from: str | None, date_to: str | None
                 ) -> tuple[list[str], list[Any]]:
    """SQL conditions on the instances (aliased ``i``) and their parameters for the
    console's exam filters: patient ID, study date from/to (YYYYMMDD, inclusive)."""
    where: list[str] = []
    params: list[Any] = []
    for value, condition in ((patient_id, "i.patient_id = ?"),
                             (date_from, "i.study_date >= ?"), (date_to, "i.study_date <= ?")):
        if value:
            where.append(condition)
            params.append(value)
    return where, params


def _open_failure(alias: str = "") -> str:
    return (f"({alias}state = {_FAILED} OR ({alias}state = {_PENDING}"
            f" AND {alias}error IS NOT NULL))")


def _count(condition: str) -> str:
    return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"


class ConsoleQueries(Database):
    # --- status and overview -----------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per state: {"jobs": {...}, "dispatches": {...}} with every state present."""
        out: dict[str, dict[str, int]] = {
            "jobs": dict.fromkeys((s.value for s in JobState), 0),
            "dispatches": dict.fromkeys((s.value for s in DispatchState), 0),
        }
        for table in ("jobs", "dispatches"):
            for row in self._read(f"SELECT state, COUNT(*) FROM {table} GROUP BY state"):
                out[table][row[0]] = row[1]
        return out

    def instance_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM instances")[0][0])

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
            " WHERE j.state = ? ORDER BY j.id DESC LIMIT ?",
            (JobState.SKIPPED, limit),
        )
        return [
            {"job_id": r[0], "sop_instance_uid": r[1], "sop_class_uid": r[2], "modality": r[3],
             "reason": r[4], "at": r[5]}
            for r in rows
        ]

    # --- exams -------------------------------------------------------------------------

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
        where, params = exam_filters(patient_id, date_from, date_to)
        if status:
            where.append(f"{EXAM_STATUS_SQL} = ?")
            params.append(status)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        joins = (" FROM instances i JOIN jobs j ON j.instance_id = i.id"
                 " LEFT JOIN results r ON r.job_id = j.id")
        total = self._read(f"SELECT COUNT(*){joins}{clause}", params)[0][0]
        json_get = self.dialect.json_get
        rows = self._read(
            "SELECT j.id AS job_id, i.sop_instance_uid, i.patient_id, i.study_date,"
            " i.modality, i.received_at, j.state AS job_state, j.error,"
            f" {EXAM_STATUS_SQL} AS status, r.status AS result_status,"
            " COALESCE(r.laterality, '') AS laterality, r.dxr_bmd_g_cm2,"
            f" {json_get('r.interpretation_json', 't_score')} AS t_score,"
            f" {json_get('r.interpretation_json', 'category')} AS category,"
            f" {json_get('r.analysis_json', 'reasons')} AS reasons"
            f"{joins}{clause} ORDER BY i.id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [self._exam_row(r) for r in rows], total

    @staticmethod
    def _exam_row(r: Any) -> dict[str, Any]:
        out = dict(r)
        reasons = out["reasons"]
        reasons = list(json.loads(reasons) if isinstance(reasons, str) else reasons or [])
        error = out.pop("error")
        if error and out["job_state"] in (JobState.FAILED, JobState.SKIPPED):
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
            f" {EXAM_STATUS_SQL} AS status, r.analysis_json, r.interpretation_json"
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
            " WHERE patient_id = ? AND issuer_of_patient_id IS NOT DISTINCT FROM ?"
            " AND status = 'ok' AND dxr_bmd_g_cm2 IS NOT NULL ORDER BY study_date, created_at",
            (patient_id, issuer or None))]

    # --- failures and the operator's "retry all" ---------------------------------------

    def open_failures(self, limit: int = 200) -> list[dict[str, Any]]:
        """Failed jobs, failed dispatches and dispatches waiting to be retried after an
        error, newest first."""
        rows = self._read(
            "SELECT 'job' AS what, j.id, j.id AS job_id, i.sop_instance_uid,"
            " NULL AS destination, NULL AS kind, j.state, j.attempts, j.error AS reason,"
            " NULL AS next_attempt_at, j.updated_at"
            " FROM jobs j JOIN instances i ON i.id = j.instance_id"
            f" WHERE j.state = '{JobState.FAILED}'"
            " UNION ALL "
            "SELECT 'dispatch', d.id, o.job_id, o.sop_instance_uid, d.destination, o.kind,"
            " d.state, d.attempts, d.error, d.next_attempt_at, d.updated_at"
            " FROM dispatches d JOIN objects o ON o.id = d.object_id"
            f" WHERE {_open_failure('d.')}"
            " UNION ALL "
            "SELECT 'message', m.id, m.job_id, NULL, m.destination, m.kind, m.state,"
            " m.attempts, m.error, m.next_attempt_at, m.updated_at FROM outbound_messages m"
            f" WHERE {_open_failure('m.')}"
            " ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )
        return [dict(r) for r in rows]

    def open_failure_count(self) -> int:
        """How many items ``open_failures`` would list without a limit."""
        return int(self._read(
            f"SELECT (SELECT COUNT(*) FROM jobs WHERE state = '{JobState.FAILED}')"
            f" + (SELECT COUNT(*) FROM dispatches WHERE {_open_failure()})"
            f" + (SELECT COUNT(*) FROM outbound_messages WHERE {_open_failure()})")[0][0])

    def retry_all_failures(self, *, jobs: bool = True) -> dict[str, int]:
        """Operator action (console, `dxr-node retry`): every failed or waiting dispatch
        and, unless ``jobs`` is False, every failed job, now, with fresh attempts (errors
        cleared: they are no longer open failures)."""
        now = time.time()
        with self._transaction() as db:
            dispatches = 0
            for table in ("dispatches", "outbound_messages"):  # HL7/FHIR: dispatches too
                dispatches += db.execute(
                    f"UPDATE {table} SET state = {_PENDING}, attempts = 0,"
                    f" next_attempt_at = ?, error = NULL, updated_at = ? WHERE {_open_failure()}",
                    (now, now),
                ).rowcount
            requeued = db.execute(
                "UPDATE jobs SET state = ?, attempts = 0, error = NULL,"
                " finished_at = NULL, updated_at = ? WHERE state = ?",
                (JobState.QUEUED, now, JobState.FAILED),
            ).rowcount if jobs else 0
        return {"dispatches": dispatches, "jobs": requeued}

    # --- figures (console dashboard, /metrics) -----------------------------------------

    def exam_status_counts(self, since: float) -> dict[str, int]:
        """Exams received since ``since`` per console status (every status present)."""
        out = dict.fromkeys(("received", *EXAM_STATUSES), 0)
        for row in self._read(
            f"SELECT {EXAM_STATUS_SQL}, COUNT(*) FROM instances i"
            " JOIN jobs j ON j.instance_id = i.id LEFT JOIN results r ON r.job_id = j.id"
            " WHERE i.received_at >= ? GROUP BY 1",
            (since,),
        ):
            out[row[0]] = row[1]
            out["received"] += row[1]
        return out

    def rejection_counts(self, since: float | None = None) -> dict[str, int]:
        """Results (created since ``since``, else all) rejected for each cause (problem
        code of severity rejection), most frequent first; a result counts once per code.
        Only results that are not ``ok`` can carry a rejection, so only those are read.
        Results stored before problems were typed are read from their reasons' wording."""
        problems, reasons = (self.dialect.json_get("analysis_json", key)
                             for key in ("problems", "reasons"))
        where, params = "status <> 'ok'", []
        if since is not None:
            where += " AND created_at >= ?"
            params.append(since)
        tally: dict[str, int] = {}
        for status, typed, texts in self._read(
                f"SELECT status, {problems}, {reasons} FROM results WHERE {where}", params):
            for code in _rejection_codes(status, typed, texts):
                tally[code] = tally.get(code, 0) + 1
        return dict(sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))

    def analysis_durations(self, since: float) -> list[float]:
        """Seconds from claim to result of the jobs done since ``since``."""
        return [r[0] for r in self._read(
            "SELECT finished_at - started_at FROM jobs WHERE finished_at >= ?"
            " AND state = ? AND started_at IS NOT NULL", (since, JobState.DONE))]

    def analysis_duration_histogram(self, bounds: Sequence[float]) -> tuple[list[int], int, float]:
        """For all done jobs' run times (claim to result): how many are <= each bound
        (cumulative), how many there are and their sum in seconds."""
        counts = ", ".join(f"COALESCE({_count('seconds <= ?')}, 0)" for _ in bounds)
        row = self._read(
            f"SELECT {counts}, COUNT(*), COALESCE(SUM(seconds), 0.0) FROM"
            " (SELECT finished_at - started_at AS seconds FROM jobs"
            "  WHERE state = ? AND started_at IS NOT NULL) AS done",
            (*bounds, JobState.DONE))[0]
        return list(row[:len(bounds)]), row[len(bounds)], row[len(bounds) + 1]

    def spool_usage(self) -> dict[str, int]:
        """Received images still in the spool: how many and their bytes."""
        row = self._read("SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM instances"
                         " WHERE spool_deleted_at IS NULL")[0]
        return {"files": row[0], "bytes": row[1]}

    def received_total(self) -> int:
        """Every C-STORE of an instance, duplicates included."""
        return int(self._read("SELECT COALESCE(SUM(receive_count), 0) FROM instances")[0][0])

    def destination_health(self) -> list[dict[str, Any]]:
        """Per destination: dispatches by state, attempts, last success, last failure."""
        out = []
        for r in self._read(
            f"SELECT destination, {_count(f'state = {_PENDING}')} AS pending,"
            f" {_count(f'state = {_SENDING}')} AS sending,"
            f" {_count(f'state = {_SENT}')} AS sent,"
            f" {_count(f'state = {_FAILED}')} AS failed, SUM(attempts) AS attempts,"
            f" {_count('error IS NOT NULL')} AS with_error, MAX(sent_at) AS last_success_at"
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


def _rejection_codes(status: str, typed: Any, texts: Any) -> set[str]:
    """The rejection codes of one stored result; ``typed``/``texts`` are the JSON's arrays
    as text (SQLite) or decoded (PostgreSQL), None when absent."""
    def decoded(value: Any) -> list[Any]:
        return (json.loads(value) if isinstance(value, str) else value) or []

    if typed is not None:  # as stored (a code this version does not know still counts)
        return {str(p.get("code")) for p in decoded(typed)
                if p.get("severity") == Severity.REJECTION}
    found = [legacy_problem(str(t), status == STATUS_ERROR) for t in decoded(texts)]
    return {p.code.value for p in found if p.rejection}
