"""Review pages: sign-in, the review queue, and one exam's review page (the radiograph
with the measured bands, pan/zoom and click-to-correct in ``static/review.js``).

Form posts (approve, reject, exclude, discard, sign-out) carry the session's CSRF
token; the correction is posted by the script to the JSON API with the token in a
header.
"""

from __future__ import annotations

import functools
import io
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dxr_node.node import review
from dxr_node.node.review_store import SESSION_LIFETIME_S, ReviewStore
from dxr_node.web import api, pages, review_api
from dxr_node.web.auth import (
    SESSION_COOKIE,
    Reviewer,
    form_fields,
    principal,
    require_csrf,
    require_same_origin,
)

LOGIN_COOKIE = "dxr_login"  # double-submit token of the sign-in form (no session yet)

public = APIRouter(include_in_schema=False)  # sign-in: reachable without credentials
router = APIRouter(include_in_schema=False)


def _next(value: str | None) -> str:
    return pages._back(value, "/review")


def _cookie_flags(request: Request) -> dict[str, Any]:
    return {"httponly": True, "samesite": "strict", "path": "/",
            "secure": request.url.scheme == "https"}


@public.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = pages.render(request, "login.html", title="Sign in", next=_next(next),
                            login_token=token, error=None)
    response.set_cookie(LOGIN_COOKIE, token, max_age=1800, **_cookie_flags(request))
    return response


@public.post("/login")
async def login(request: Request) -> Response:
    fields = await form_fields(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    target = _next(fields.get("next"))
    if not expected or not secrets.compare_digest(expected, fields.get("csrf", "")):
        raise HTTPException(403, "the sign-in form expired: reload it")
    accounts = ReviewStore(request.app.state.store)
    user = accounts.authenticate(fields.get("username", "")[:64],
                                 fields.get("password", "")[:1024])
    if user is None:
        token = secrets.token_urlsafe(24)
        response: Response = pages.render(
            request, "login.html", 401, title="Sign in", next=target, login_token=token,
            error="Wrong username or password, or the account is disabled.")
        response.set_cookie(LOGIN_COOKIE, token, max_age=1800, **_cookie_flags(request))
        return response
    session_token, _ = accounts.open_session(user)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, session_token, max_age=int(SESSION_LIFETIME_S),
                        **_cookie_flags(request))
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/logout", dependencies=[Depends(require_csrf)])  # viewers too
def logout(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        ReviewStore(request.app.state.store).close_session(token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/review", response_class=HTMLResponse)
def queue_page(request: Request, status: str | None = None,
               patient_id: str | None = Query(None, max_length=64),
               date_from: str | None = None, date_to: str | None = None,
               page: int = Query(1, ge=1)) -> HTMLResponse:
    filters: dict[str, Any] = {"status": status or "", "patient_id": (patient_id or "").strip(),
               "date_from": date_from or "", "date_to": date_to or ""}
    data = review_api.queue_page(request, page=page, **filters)
    query = {k: v for k, v in filters.items() if v}

    def page_url(number: int) -> str:
        return "/review?" + urlencode({**query, "page": number})

    return pages.render(request, "review_queue.html", title="Review", data=data,
                        filters=filters, statuses=review_api.QUEUE_STATUSES,
                        page_url=page_url, filtered=bool(query))


@router.get("/review/{job_id}", response_class=HTMLResponse)
def review_page(request: Request, job_id: int) -> HTMLResponse:
    exam = api.exam_detail(request.app.state.store, job_id)
    detail = review_api.review_detail(request, job_id)
    who = principal(request)
    return pages.render(request, "review.html", title=f"Review exam {job_id}", exam=exam,
                        r=detail, a=detail["analysis"] or {}, i=detail["interpretation"] or {},
                        can_review=bool(who and who.can_review),
                        reasons=review.REJECT_REASONS, open=detail["state"] in
                        ("waiting", "draft"))


@router.get("/review/{job_id}/image.jpg")
def radiograph(request: Request, job_id: int) -> Response:
    """The analysed radiograph at full resolution, as the engine saw it (bone bright)."""
    rows = request.app.state.store._read(
        "SELECT i.path FROM jobs j JOIN instances i ON i.id = j.instance_id"
        " WHERE j.id = ? AND i.spool_deleted_at IS NULL", (job_id,))
    if not rows or not Path(rows[0][0]).is_file():
        raise HTTPException(404, f"the image of exam {job_id} is not in the spool")
    path = Path(rows[0][0])
    return Response(_jpeg(str(path), path.stat().st_mtime), media_type="image/jpeg")


@functools.lru_cache(maxsize=8)
def _jpeg(path: str, _mtime: float) -> bytes:
    from PIL import Image

    from dxr_node.engine.image import load_radiograph, to_display_uint8

    display = to_display_uint8(load_radiograph(path).pixels)
    buffer = io.BytesIO()
    Image.fromarray(display).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _done(job_id: int, message: str, where: str = "review") -> RedirectResponse:
    base = f"/review/{job_id}" if where == "review" else f"/exams/{job_id}"
    return RedirectResponse(f"{base}?{urlencode({'done': message})}", status_code=303)


_form = [Depends(require_same_origin)]


@router.post("/review/{job_id}/approve", dependencies=_form)
def approve(request: Request, job_id: int, who: Reviewer) -> Response:
    done = review_api.do_approve(request, job_id, who)
    return _done(job_id, f"Approved: {len(done['objects'])} final object(s) issued.", "exam")


@router.post("/review/{job_id}/reject", dependencies=_form)
async def reject(request: Request, job_id: int, who: Reviewer) -> Response:
    fields = await form_fields(request)
    reason = fields.get("reason", "")
    if reason not in review.REJECT_REASONS:
        raise HTTPException(422, "choose a reason for the rejection")
    done = await _in_thread(review_api.do_reject, request, job_id, who, reason,
                            fields.get("text", "")[:review.MAX_REASON_TEXT])
    return _done(job_id, f"Rejected: {len(done['objects'])} final object(s) issued.", "exam")


@router.post("/review/{job_id}/exclude", dependencies=_form)
async def exclude(request: Request, job_id: int, who: Reviewer) -> Response:
    bone = (await form_fields(request)).get("bone", "")
    await _in_thread(review_api.do_exclude, request, job_id, who, bone)
    return _done(job_id, f"{bone} excluded: not measurable.")


@router.post("/review/{job_id}/discard", dependencies=_form)
def discard(request: Request, job_id: int, who: Reviewer) -> Response:
    review_api.do_discard(request, job_id, who)
    return _done(job_id, "Corrections discarded: back to the engine's result.")


async def _in_thread(function, *args: Any) -> Any:
    """Report building and fitting are CPU work: keep them off the event loop."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(function, *args)
