"""The operator console: FastAPI app factory and the server `dxr-node serve` runs.

Routes: HTML pages (/, /exams, /exams/{id}, /failures), the JSON API under /api (described
at /openapi.json), /metrics (Prometheus) and /healthz. Everything but /healthz
and /static needs access (see ``auth``). The console reads the node's database through
its own ``Store`` connection and never touches the SCP.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from dxr_node import __version__
from dxr_node.node.config import NodeConfig
from dxr_node.node.logs import log_event
from dxr_node.node.review_store import ReviewStore, database_has_users
from dxr_node.node.store import Store
from dxr_node.web import api, integration, pages, review_api, review_pages
from dxr_node.web.auth import (
    ConsoleConfigError,
    LoginRequired,
    check_console_access,
    host_allowed,
    require_access,
)
from dxr_node.web.metrics import CONTENT_TYPE, render_metrics

log = logging.getLogger("dxr_node.web")

STATIC_DIR = Path(__file__).parent / "static"

# Tells /healthz whether the node's SCP is listening. The node answers from its own
# state: a TCP probe would leave a half-open association behind in pynetdicom.
ScpListening = Callable[[], bool]
# Why analysis cannot run (worker pool blocked, e.g. disk full); None when it can.
AnalysisProblem = Callable[[], "str | None"]


def create_app(config: NodeConfig, store: Store, scp_listening: ScpListening | None = None,
               analysis_problem: AnalysisProblem | None = None) -> FastAPI:
    """The console over ``store``; ``scp_listening`` feeds /healthz (None: not ready)."""
    check_console_access(config.web, accounts=ReviewStore(store).has_users())
    # No /docs or /redoc: FastAPI loads Swagger UI from a CDN, and the console must work
    # without internet. The API is described at /openapi.json (guarded, below).
    app = FastAPI(title="dxr-node console", version=__version__, docs_url=None,
                  redoc_url=None, openapi_url=None,
                  description="Operator console and JSON API of a dxr-node DICOM node.")
    app.state.config = config
    app.state.store = store
    app.state.scp_listening = scp_listening or (lambda: False)
    app.state.analysis_problem = analysis_problem or (lambda: None)

    @app.middleware("http")
    async def security_headers(request: Request, call_next) -> Response:
        if not host_allowed(request.headers.get("host", ""), config.web):
            response: Response = PlainTextResponse("Host header not allowed", 400)
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    guarded = [Depends(require_access)]
    app.include_router(api.router, dependencies=guarded)
    app.include_router(review_api.router, dependencies=guarded)
    app.include_router(pages.router, dependencies=guarded)
    app.include_router(review_pages.router, dependencies=guarded)
    app.include_router(review_pages.public)
    app.include_router(integration.router, dependencies=guarded)  # orders, HL7/FHIR
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/metrics", dependencies=guarded, response_class=PlainTextResponse,
             tags=["monitoring"], summary="Prometheus metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(render_metrics(store), media_type=CONTENT_TYPE)

    @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/healthz", tags=["monitoring"],
             summary="200 when the SCP accepts connections, the database is writable and "
                     "the analysis workers can run")
    def healthz(request: Request) -> JSONResponse:
        problem = request.app.state.analysis_problem()
        checks = {
            "scp_listening": bool(request.app.state.scp_listening()),
            "database_writable": store.is_writable(),
            "analysis_running": problem is None,
        }
        ready = all(checks.values())
        return JSONResponse({"ready": ready, **checks, "problem": problem},
                            status_code=200 if ready else 503)

    @app.exception_handler(LoginRequired)
    async def sign_in(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if _wants_json(request) or exc.status_code == 401:
            return await http_exception_handler(request, exc)
        return pages.render(request, "error.html", exc.status_code,
                            title=_TITLES.get(exc.status_code, "Error"), message=exc.detail)

    @app.exception_handler(OverflowError)
    async def number_out_of_range(request: Request, exc: OverflowError) -> Response:
        # An id or page over 64 bits reaches SQLite as an int it cannot bind.
        return await http_error(request, HTTPException(400, "number out of range"))

    @app.exception_handler(RequestValidationError)
    async def bad_input(request: Request, exc: RequestValidationError) -> Response:
        if _wants_json(request):
            return await request_validation_exception_handler(request, exc)
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}"
                            for e in exc.errors())
        return pages.render(request, "error.html", 422, title="Bad request", message=message)

    return app


# Only the console's own files, never framed by another site, never cached by proxies.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Nothing to do",
           422: "Bad request"}


def _wants_json(request: Request) -> bool:
    """API clients get FastAPI's JSON errors; people on the pages get a page."""
    path = request.url.path
    return path.startswith("/api/") or path in ("/metrics", "/healthz")


class ConsoleServer:
    """uvicorn serving the console from a background thread of the node."""

    def __init__(self, config: NodeConfig, scp_listening: ScpListening,
                 analysis_problem: AnalysisProblem | None = None) -> None:
        import uvicorn

        # Checked before anything is created: a refused console leaves no database.
        check_console_access(config.web, accounts=database_has_users(config.database_target))
        self.config = config
        self._socket = self._bind(config.web.host, config.web.port)
        self._store = Store(config.database_target)
        self.address: tuple[str, int] = self._socket.getsockname()[:2]
        app = create_app(config, self._store, scp_listening, analysis_problem)
        # No access log: request lines can carry patient IDs (exam filters).
        self._server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]},
                                        name="console", daemon=True)

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it a small response (headers and body
        # written separately) waits ~40 ms for the client's delayed ACK (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConsoleConfigError(
                f"console cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        sock.listen(64)
        return sock

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not self._server.started:
            self.stop()
            raise ConsoleConfigError("the console did not start (see the log above)")
        host, port = self.address
        log_event(log, "console_ready", url=f"http://{host}:{port}/",
                  auth="on" if self.config.web.token or self.config.web.username else "local")

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()
        self._store.close()
