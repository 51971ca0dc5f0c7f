"""Helpers shared by the console's tests (a module of its own: test modules importing
from ``conftest`` would get whichever conftest pytest loaded last)."""

from __future__ import annotations

import socket
import warnings

from dxr_node.node.config import NodeConfig
from dxr_node.node.store import Store

with warnings.catch_warnings():  # Starlette nudges towards httpx2, which is not installed
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

STUDY_DATES = ("20240321", "20250321", "20260321")
DESTINATION = "PACS"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def console_client(config: NodeConfig, store: Store, *, listening: bool = True,
                   client_host: str = "127.0.0.1") -> TestClient:
    """The console app over ``store``, requested from ``client_host``."""
    from dxr_node.web.app import create_app

    # TestClient sends "Host: testserver", which the console's host allow-list refuses.
    web = config.web.model_copy(update={"allowed_hosts": [*config.web.allowed_hosts,
                                                          "testserver"]})
    app = create_app(config.model_copy(update={"web": web}), store, lambda: listening)
    return TestClient(app, client=(client_host, 50000), follow_redirects=False)
