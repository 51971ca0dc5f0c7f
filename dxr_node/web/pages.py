"""Server-rendered HTML pages (Jinja2 templates in ``templates/``, CSS in ``static/``;
no JavaScript, nothing from the internet)."""

from __future__ import annotations

import io
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from dxr_node.web import api, review_api
from dxr_node.web.auth import require_same_origin
from dxr_node.web.plot import bmd_history_svg

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _is_number(value: object) -> TypeGuard[int | float]:
    """False for None and for fields a result lacks (Jinja's Undefined)."""
    return isinstance(value, int | float)


def _when(epoch: float | None) -> str:
    return "—" if not _is_number(epoch) else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _ago(epoch: float | None) -> str:
    if not _is_number(epoch):
        return "never"
    seconds = max(0, time.time() - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _until(epoch: float | None) -> str:
    if not _is_number(epoch):
        return "—"
    seconds = epoch - time.time()
    if seconds <= 1:
        return "now"
    return f"in {seconds / 60:.0f} min" if seconds >= 90 else f"in {seconds:.0f} s"


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if not _is_number(value) else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 1) -> str:
    return "—" if not _is_number(value) else f"{value:+.{digits}f}".replace("-", "\u2212")


def _study_date(value: str | None) -> str:
    if not value or len(value) != 8:
        return value or "—"
    return f"{value[:4]}-{value[4:6]}-{value[6:]}"


def _bytes(value: int | None) -> str:
    if not _is_number(value):
        return "—"
    size: float = value
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


TEMPLATES.filters.update(when=_when, ago=_ago, until=_until, number=_number, signed=_signed,
                         study_date=_study_date, bytes=_bytes)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    config = request.app.state.config
    who = getattr(request.state, "principal", None)  # None on the sign-in page
    html = TEMPLATES.get_template(template).render(
        request=request, path=request.url.path, ae_title=config.ae_title,
        version=api.__version__, now=time.time(), done=request.query_params.get("done"),
        who=who, csrf=who.csrf_token if who else None, review_mode=config.review.mode,
        alarm=request.app.state.analysis_problem(),
        **context)
    return HTMLResponse(html, status_code=status_code)


router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request) -> HTMLResponse:
    data = api.overview(request.app.state.store, request.app.state.config)
    return render(request, "overview.html", title="Overview", o=data)


@router.get("/exams", response_class=HTMLResponse)
def exams_page(
    request: Request,
    status: str | None = None,
    patient_id: str | None = Query(None, max_length=64),
    date_from: str | None = None,
    date_to: str | None = None,
    page: int = Query(1, ge=1),
) -> HTMLResponse:
    filters: dict[str, Any] = {"status": status or "", "patient_id": (patient_id or "").strip(),
               "date_from": date_from or "", "date_to": date_to or ""}
    data = api.exam_page(request.app.state.store, page=page, **filters)
    query = {k: v for k, v in filters.items() if v}

    def page_url(number: int) -> str:
        return "/exams?" + urlencode({**query, "page": number})

    return render(request, "exams.html", title="Exams", data=data, filters=filters,
                  statuses=api.EXAM_STATUSES, page_url=page_url, filtered=bool(query))


@router.get("/exams/{job_id}", response_class=HTMLResponse)
def exam_detail_page(request: Request, job_id: int) -> HTMLResponse:
    exam = api.exam_detail(request.app.state.store, job_id)
    by_destination: dict[str, list[dict[str, Any]]] = {}
    for dispatch in exam["dispatches"]:
        by_destination.setdefault(dispatch["destination"], []).append(dispatch)
    plot = (Markup(bmd_history_svg(exam["history"], job_id))
            if len(exam["history"]) > 1 else None)
    has_overlay = any(o["kind"] == "SC" for o in exam["objects"])
    review = review_api.review_detail(request, job_id)
    final_uids = {o["sop_instance_uid"] for act in review["actions"]
                  for o in act["objects"] or ()}  # issued at approval or rejection
    return render(request, "exam.html", title=f"Exam {job_id}", exam=exam,
                  a=exam["analysis"] or {}, i=exam["interpretation"] or {},
                  by_destination=by_destination, plot=plot, has_overlay=has_overlay,
                  review=review, final_uids=final_uids)


@router.get("/exams/{job_id}/overlay.jpg")
def overlay_image(request: Request, job_id: int) -> Response:
    """The secondary capture's pixels (the same rendering PACS received), as JPEG."""
    store = request.app.state.store
    # The newest overlay: a reader's final one replaces the preliminary one.
    paths = [o.path for o in store.objects_for_job(job_id) if o.kind == "SC"][::-1]
    if not paths or not Path(paths[0]).is_file():
        raise HTTPException(404, f"exam {job_id} has no overlay image")
    path = Path(paths[0])
    jpeg = _secondary_capture_jpeg(str(path), path.stat().st_mtime)
    return Response(jpeg, media_type="image/jpeg")


@lru_cache(maxsize=16)
def _secondary_capture_jpeg(path: str, _mtime: float) -> bytes:
    import pydicom
    from PIL import Image

    pixels = pydicom.dcmread(path).pixel_array
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@router.get("/failures", response_class=HTMLResponse)
def failures_page(request: Request) -> HTMLResponse:
    store = request.app.state.store
    return render(request, "failures.html", title="Failures", items=store.open_failures(),
                  total=store.open_failure_count())


@router.get("/nodes", response_class=HTMLResponse)
def nodes_page(request: Request) -> HTMLResponse:
    store = request.app.state.store
    return render(request, "nodes.html", title="Nodes", nodes=store.nodes(),
                  jobs=store.held_jobs(), counts=store.counts())


def _back(back: str | None, default: str) -> str:
    """Only redirect within the console (never to another site)."""
    if back and back.startswith("/") and not back.startswith("//"):
        return back
    return default


def _redirect(url: str, done: str) -> RedirectResponse:
    separator = "&" if "?" in url else "?"
    return RedirectResponse(f"{url}{separator}{urlencode({'done': done})}", status_code=303)


@router.post("/dispatches/{dispatch_id}/retry", dependencies=[Depends(require_same_origin)])
def retry_dispatch(request: Request, dispatch_id: int, back: str | None = None) -> Response:
    ok = api.retry_dispatch(request, dispatch_id)
    message = (f"Dispatch {dispatch_id} queued to be sent again." if ok
               else f"Dispatch {dispatch_id} was not failed or waiting: nothing to retry.")
    return _redirect(_back(back, "/failures"), message)


@router.post("/jobs/{job_id}/retry", dependencies=[Depends(require_same_origin)])
def retry_job(request: Request, job_id: int, back: str | None = None) -> Response:
    ok = api.retry_job(request, job_id)
    message = (f"Exam {job_id} queued for analysis again." if ok
               else f"Exam {job_id} has not failed: nothing to retry.")
    return _redirect(_back(back, "/failures"), message)


@router.post("/failures/retry-all", dependencies=[Depends(require_same_origin)])
def retry_all(request: Request) -> Response:
    done = api.retry_all(request)
    return _redirect("/failures", f"Queued again: {done['retried_dispatches']} dispatch(es), "
                                  f"{done['retried_jobs']} analysis job(s).")
