"""The console server as the node runs it: uvicorn in a thread on a real socket."""

from __future__ import annotations

import socket

import httpx
import pytest

from dxr_node.node.config import NodeConfig
from dxr_node.web.app import ConsoleServer
from dxr_node.web.auth import ConsoleConfigError


def _config(tmp_path, port: int) -> NodeConfig:
    config = NodeConfig(data_dir=tmp_path / "node")
    return config.model_copy(update={"web": config.web.model_copy(update={"port": port})})


def test_console_serves_over_http_and_stops(tmp_path):
    console = ConsoleServer(_config(tmp_path, 0), lambda: True)
    console.start()
    try:
        host, port = console.address
        with httpx.Client(base_url=f"http://{host}:{port}") as client:
            assert client.get("/healthz").json()["ready"] is True
            page = client.get("/exams")
            assert page.status_code == 200 and "No exams received yet" in page.text
            assert client.get("/static/console.css").headers["content-type"].startswith(
                "text/css")
    finally:
        console.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{host}:{port}/healthz", timeout=2)


def test_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConsoleConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            ConsoleServer(_config(tmp_path, port), lambda: True)
