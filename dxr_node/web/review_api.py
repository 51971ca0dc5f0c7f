"""Reader review as a JSON API (in /openapi.json): the queue, one exam's review state and
audit trail, and the actions correct, exclude, discard, approve and reject.

Actions need a reviewer (or admin) account, signed in (cookie session plus CSRF token)
or sending its basic-auth credentials; every action is recorded with who, when, and the
values before and after. The HTML pages call the same functions.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from dxr_node.engine.result import BONE_NAMES
from dxr_node.node import review
from dxr_node.node.review_store import ReviewStore
from dxr_node.web.api import PAGE_SIZE, parse_study_date
from dxr_node.web.auth import Principal, Reviewer, require_same_origin

QUEUE_STATUSES = ("analysed", "rejected")
Bone = Literal["MC2", "MC3", "MC4"]


class Correction(BaseModel):
    """A reader's placement of one metacarpal: its proximal base and distal head, in
    image pixel coordinates [row, col] (integer values are pixel centres)."""

    bone: Bone
    proximal_rc: tuple[float, float]
    distal_rc: tuple[float, float]


class Exclusion(BaseModel):
    bone: Bone


class Rejection(BaseModel):
    reason: Literal[tuple(review.REJECT_REASONS)]  # type: ignore[valid-type]
    text: str = Field("", max_length=review.MAX_REASON_TEXT)


def queue_page(request: Request, *, status: str | None, patient_id: str | None,
               date_from: str | None, date_to: str | None, page: int,
               per_page: int = PAGE_SIZE) -> dict[str, Any]:
    if status and status not in QUEUE_STATUSES:
        raise HTTPException(422, f"status: expected one of {', '.join(QUEUE_STATUSES)}")
    accounts = ReviewStore(request.app.state.store)
    rows, total = accounts.queue(
        status=status or None, patient_id=patient_id or None,
        date_from=parse_study_date(date_from, "date_from"),
        date_to=parse_study_date(date_to, "date_to"),
        limit=per_page, offset=(page - 1) * per_page)
    return {"mode": request.app.state.config.review.mode, "total": total, "page": page,
            "pages": max(1, math.ceil(total / per_page)), "per_page": per_page,
            "counts": accounts.counts(), "exams": rows}


def review_detail(request: Request, job_id: int) -> dict[str, Any]:
    """An exam's review: its state, the working result (the reader's draft, else the
    engine's) and every action so far."""
    store = request.app.state.store
    exam = store.exam(job_id)
    if exam is None:
        raise HTTPException(404, f"no exam {job_id}")
    accounts = ReviewStore(store)
    state = accounts.review(job_id)
    working = state is not None and state["analysis"] is not None
    return {
        "job_id": job_id,
        "state": state["state"] if state else ("waiting" if exam["analysis"] else "none"),
        "finished_at": state["finished_at"] if state else None,
        "finished_by": state["finished_by"] if state else None,
        "analysis": state["analysis"] if working and state else exam["analysis"],
        "interpretation": (state["interpretation"] if working and state
                           else exam["interpretation"]),
        "actions": accounts.actions(job_id),
        "bones": list(BONE_NAMES),
    }


def _act(action, *args: Any) -> dict[str, Any]:
    try:
        return action(*args)
    except review.ReviewError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def do_correct(request: Request, job_id: int, who: Principal, body: Correction) -> dict:
    return _act(review.correct, request.app.state.config, request.app.state.store, job_id,
                who.user, body.bone, body.proximal_rc, body.distal_rc)


def do_exclude(request: Request, job_id: int, who: Principal, bone: str) -> dict:
    return _act(review.exclude, request.app.state.config, request.app.state.store, job_id,
                who.user, bone)


def do_discard(request: Request, job_id: int, who: Principal) -> None:
    _act(review.discard, request.app.state.store, job_id, who.user)


def do_approve(request: Request, job_id: int, who: Principal) -> dict:
    return _act(review.approve, request.app.state.config, request.app.state.store, job_id,
                who.user)


def do_reject(request: Request, job_id: int, who: Principal, reason: str, text: str) -> dict:
    return _act(review.reject, request.app.state.config, request.app.state.store, job_id,
                who.user, reason, text)


router = APIRouter(prefix="/api", tags=["review"])
_action = [Depends(require_same_origin)]


@router.get("/review/queue", summary="Results awaiting a reader's review, newest first")
def get_queue(
    request: Request,
    status: str | None = Query(None, description="analysed | rejected (by QC)"),
    patient_id: str | None = Query(None, max_length=64),
    date_from: str | None = Query(None, description="study date from, YYYY-MM-DD"),
    date_to: str | None = Query(None, description="study date to (inclusive), YYYY-MM-DD"),
    page: int = Query(1, ge=1),
    per_page: int = Query(PAGE_SIZE, ge=1, le=500),
) -> dict[str, Any]:
    return queue_page(request, status=status, patient_id=patient_id, date_from=date_from,
                      date_to=date_to, page=page, per_page=per_page)


@router.get("/exams/{job_id}/review",
            summary="Review state, working result and audit trail of one exam")
def get_review(request: Request, job_id: int) -> dict[str, Any]:
    return review_detail(request, job_id)


@router.post("/exams/{job_id}/correct", dependencies=_action,
             summary="Re-measure one bone at the reader's ends (reviewer)")
def post_correct(request: Request, job_id: int, body: Correction,
                 who: Reviewer) -> dict[str, Any]:
    return do_correct(request, job_id, who, body)


@router.post("/exams/{job_id}/exclude", dependencies=_action,
             summary="Mark one bone not measurable: a partial result (reviewer)")
def post_exclude(request: Request, job_id: int, body: Exclusion,
                 who: Reviewer) -> dict[str, Any]:
    return do_exclude(request, job_id, who, body.bone)


@router.post("/exams/{job_id}/discard", dependencies=_action,
             summary="Discard the reader's corrections (reviewer)")
def post_discard(request: Request, job_id: int,
                 who: Reviewer) -> dict[str, Any]:
    do_discard(request, job_id, who)
    return {"job_id": job_id, "action": "discard"}


@router.post("/exams/{job_id}/approve", dependencies=_action,
             summary="Approve: issue the verified final objects (reviewer)")
def post_approve(request: Request, job_id: int,
                 who: Reviewer) -> dict[str, Any]:
    return do_approve(request, job_id, who)


@router.post("/exams/{job_id}/reject", dependencies=_action,
             summary="Reject: issue a final SR saying no result was issued, and why "
                     "(reviewer)")
def post_reject(request: Request, job_id: int, body: Rejection,
                who: Reviewer) -> dict[str, Any]:
    return do_reject(request, job_id, who, body.reason, body.text)
