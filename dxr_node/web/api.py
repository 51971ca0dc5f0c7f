"""The console's data, as a JSON API (described at /openapi.json) and as the view models
the HTML pages render: both call the functions here, so they always agree."""

from __future__ import annotations

import logging
import math
import re
import shutil
import statistics
import time
from datetime import date
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel

from dxr_node import __version__
from dxr_node.engine.result import ProblemCode
from dxr_node.node.config import NodeConfig
from dxr_node.node.logs import log_event
from dxr_node.node.review_store import ReviewStore
from dxr_node.node.store import Store
from dxr_node.web.auth import require_same_origin

log = logging.getLogger("dxr_node.web")

EXAM_STATUSES = ("analysed", "rejected", "failed", "waiting")
PAGE_SIZE = 50


class ExamSummary(BaseModel):
    job_id: int
    sop_instance_uid: str
    patient_id: str | None
    study_date: str | None
    modality: str | None
    received_at: float
    status: str  # analysed | rejected | failed | waiting
    job_state: str
    result_status: str | None
    laterality: str | None
    dxr_bmd_g_cm2: float | None
    t_score: float | None
    category: str | None
    reasons: list[str]


class ExamPage(BaseModel):
    total: int
    page: int
    pages: int
    per_page: int
    exams: list[ExamSummary]


class RetryOutcome(BaseModel):
    retried_dispatches: int = 0
    retried_jobs: int = 0


def parse_study_date(text: str | None, name: str) -> str | None:
    """'YYYY-MM-DD' or 'YYYYMMDD' -> 'YYYYMMDD'; empty -> None; else a 422 saying why."""
    if not text:
        return None
    digits = text.replace("-", "")
    try:
        if not re.fullmatch(r"\d{8}", digits):
            raise ValueError
        date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        raise HTTPException(422, f"{name}: expected a date as YYYY-MM-DD, got {text!r}") from None
    return digits


def exam_page(store: Store, *, status: str | None, patient_id: str | None,
              date_from: str | None, date_to: str | None, page: int,
              per_page: int = PAGE_SIZE) -> dict[str, Any]:
    if status and status not in EXAM_STATUSES:
        raise HTTPException(422, f"status: expected one of {', '.join(EXAM_STATUSES)}")
    rows, total = store.exams(
        status=status or None, patient_id=patient_id or None,
        date_from=parse_study_date(date_from, "date_from"),
        date_to=parse_study_date(date_to, "date_to"),
        limit=per_page, offset=(page - 1) * per_page)
    return {"total": total, "page": page, "pages": max(1, math.ceil(total / per_page)),
            "per_page": per_page, "exams": rows}


def _percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, math.ceil(fraction * len(sorted_values)) - 1)
    return sorted_values[index]


def overview(store: Store, config: NodeConfig, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    counts = store.counts()
    durations = sorted(store.analysis_durations(since=now - 86400))
    spool: dict[str, int | None] = {**store.spool_usage()}
    try:
        disk = shutil.disk_usage(config.spool_path)
        spool.update(disk_free_bytes=disk.free, disk_total_bytes=disk.total)
    except OSError:
        spool.update(disk_free_bytes=None, disk_total_bytes=None)
    return {
        "version": __version__,
        "ae_title": config.ae_title,
        "listener": f"{config.host}:{config.port}",
        "now": now,
        "last_hour": store.exam_status_counts(now - 3600),
        "last_day": store.exam_status_counts(now - 86400),
        "rejections_last_day": rejection_causes(store, since=now - 86400),
        "queue": {
            "analysis_queued": counts["jobs"]["queued"],
            "analysis_running": counts["jobs"]["running"],
            "dispatch_pending": counts["dispatches"]["pending"],
            "dispatch_failed": counts["dispatches"]["failed"],
        },
        "analysis_seconds_last_day": {
            "count": len(durations),
            "median": statistics.median(durations) if durations else None,
            "p95": _percentile(durations, 0.95) if durations else None,
        },
        "spool": spool,
        "destinations": destination_health(store, config),
        "review": {"mode": config.review.mode, **ReviewStore(store).counts()},
    }


def rejection_causes(store: Store, since: float | None = None) -> list[dict[str, Any]]:
    """Results rejected for each cause (problem code), most frequent first; a result with
    two causes counts under both."""
    return [{"code": code, "meaning": _meaning(code), "results": n}
            for code, n in store.rejection_counts(since).items()]


def _meaning(code: str) -> str:
    try:
        return ProblemCode(code).meaning
    except ValueError:  # stored by another version of the node
        return code


def destination_health(store: Store, config: NodeConfig) -> list[dict[str, Any]]:
    """Configured destinations first (even before their first dispatch), then any
    destination only the database still knows."""
    known = {row["destination"]: row for row in store.destination_health()}
    out = []
    for dest in config.destinations:
        row = known.pop(dest.name, None) or {"destination": dest.name}
        out.append({**_health_defaults(), **row, "configured": True,
                    "address": dest.url if dest.kind == "stow"
                    else f"{dest.ae_title}@{dest.host}:{dest.port}"})
    for row in known.values():
        out.append({**_health_defaults(), **row, "configured": False, "address": None})
    for item in out:
        item["state"] = _health_state(item)
    return out


def _health_defaults() -> dict[str, Any]:
    return {"pending": 0, "sending": 0, "sent": 0, "failed": 0, "attempts": 0,
            "with_error": 0, "last_success_at": None, "last_failure_at": None,
            "last_failure_reason": None}


def _health_state(item: dict[str, Any]) -> str:
    """'failing' while anything is failed or waiting after an error, else 'ok' once
    something was sent, else 'idle'."""
    if item["failed"] or item["with_error"]:
        return "failing"
    return "ok" if item["sent"] else "idle"


def exam_detail(store: Store, job_id: int) -> dict[str, Any]:
    exam = store.exam(job_id)
    if exam is None:
        raise HTTPException(404, f"no exam {job_id}")
    for obj in exam["objects"]:
        obj.pop("path")  # a server path is no business of a client
    exam["history"] = (store.patient_results(exam["patient_id"], exam["issuer_of_patient_id"])
                       if exam["patient_id"] else [])
    return exam


# Operator actions, logged (identifiers only) as an audit trail of who retried what.

def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def retry_dispatch(request: Request, dispatch_id: int) -> bool:
    ok = request.app.state.store.retry_dispatch(dispatch_id)
    log_event(log, "operator_retry", dispatch=dispatch_id, done=ok, client=_client(request))
    return ok


def retry_job(request: Request, job_id: int) -> bool:
    ok = request.app.state.store.retry_job(job_id)
    log_event(log, "operator_retry", job=job_id, done=ok, client=_client(request))
    return ok


def retry_all(request: Request) -> dict[str, int]:
    done = request.app.state.store.retry_all_failures()
    log_event(log, "operator_retry_all", dispatches=done["dispatches"], jobs=done["jobs"],
              client=_client(request))
    return {"retried_dispatches": done["dispatches"], "retried_jobs": done["jobs"]}


# --- JSON routes -----------------------------------------------------------------------

router = APIRouter(prefix="/api", tags=["api"])


def _store(request: Request) -> Store:
    return request.app.state.store


@router.get("/overview", summary="Counts, queue depth, timing, spool use, destinations")
def get_overview(request: Request) -> dict[str, Any]:
    return overview(_store(request), request.app.state.config)


@router.get("/exams", response_model=ExamPage, summary="Exams, newest first")
def get_exams(
    request: Request,
    status: str | None = Query(None, description="analysed | rejected | failed | waiting"),
    patient_id: str | None = Query(None, max_length=64),
    date_from: str | None = Query(None, description="study date from, YYYY-MM-DD"),
    date_to: str | None = Query(None, description="study date to (inclusive), YYYY-MM-DD"),
    page: int = Query(1, ge=1),
    per_page: int = Query(PAGE_SIZE, ge=1, le=500),
) -> dict[str, Any]:
    return exam_page(_store(request), status=status, patient_id=patient_id,
                     date_from=date_from, date_to=date_to, page=page, per_page=per_page)


@router.get("/exams/{job_id}", summary="One exam: result, objects, dispatches, history")
def get_exam(request: Request, job_id: int) -> dict[str, Any]:
    return exam_detail(_store(request), job_id)


@router.get("/nodes", summary="The nodes sharing this database, their last heartbeat, "
            "what each holds, and every running job with its holder")
def get_nodes(request: Request) -> dict[str, Any]:
    store = _store(request)
    return {"nodes": store.nodes(), "running_jobs": store.held_jobs(),
            "queues": store.counts()}


@router.get("/failures", summary="Failed jobs, failed dispatches and dispatches waiting "
                                  "for a retry")
def get_failures(request: Request) -> list[dict[str, Any]]:
    return _store(request).open_failures()


@router.post("/dispatches/{dispatch_id}/retry", response_model=RetryOutcome,
             dependencies=[Depends(require_same_origin)])
def post_retry_dispatch(request: Request, dispatch_id: int) -> RetryOutcome:
    if not retry_dispatch(request, dispatch_id):
        raise HTTPException(409, f"dispatch {dispatch_id} does not exist or is not "
                                 "failed or waiting")
    return RetryOutcome(retried_dispatches=1)


@router.post("/jobs/{job_id}/retry", response_model=RetryOutcome,
             dependencies=[Depends(require_same_origin)])
def post_retry_job(request: Request, job_id: int) -> RetryOutcome:
    if not retry_job(request, job_id):
        raise HTTPException(409, f"job {job_id} does not exist or has not failed")
    return RetryOutcome(retried_jobs=1)


@router.post("/failures/retry-all", response_model=RetryOutcome,
             dependencies=[Depends(require_same_origin)])
def post_retry_all(request: Request) -> RetryOutcome:
    return RetryOutcome(**retry_all(request))
