"""Who may open the console: loopback only without credentials, else token or basic auth."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
from console_testing import console_client, free_port

from dxr_node.node.config import NodeConfig
from dxr_node.web.auth import ConsoleConfigError, check_console_access

TOKEN = "s3cret-token-for-tests"


def _with_web(config: NodeConfig, **web) -> NodeConfig:
    return config.model_copy(update={"web": config.web.model_copy(update=web)})


def _basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def test_a_console_on_the_network_without_credentials_refuses_to_start(node_config, store):
    open_config = _with_web(node_config, host="0.0.0.0")
    with pytest.raises(ConsoleConfigError, match="not a loopback address.*web.token"):
        console_client(open_config, store)
    check_console_access(_with_web(node_config, host="0.0.0.0", token=TOKEN).web)
    check_console_access(_with_web(node_config, host="::1").web)
    with pytest.raises(ConsoleConfigError, match="set together"):
        check_console_access(_with_web(node_config, username="admin").web)


def test_without_credentials_only_this_machine_is_served(node_config, store):
    assert console_client(node_config, store, client_host="127.0.0.1").get("/").status_code == 200
    remote = console_client(node_config, store, client_host="10.20.30.40")
    assert remote.get("/exams").status_code == 403
    assert remote.get("/api/exams").status_code == 403
    assert remote.get("/healthz").status_code == 200  # probes carry no patient data


def test_token_and_basic_auth(node_config, store, filled):
    config = _with_web(node_config, host="0.0.0.0", token=TOKEN, username="admin",
                       password="correct horse")
    client = console_client(config, store, client_host="10.20.30.40")
    denied = client.get("/exams")
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"].startswith("Basic")  # the browser asks
    assert filled.patient_id not in denied.text
    assert client.get("/api/exams", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers=_basic("admin", "wrong")).status_code == 401
    page = client.get("/exams", headers=_basic("admin", "correct horse"))
    assert page.status_code == 200 and filled.patient_id in page.text
    api = client.get("/api/exams", headers={"Authorization": f"Bearer {TOKEN}"})
    assert api.status_code == 200 and api.json()["total"] == 5
    assert client.get("/healthz").status_code == 200
    assert client.get("/static/console.css").status_code == 200


def test_serve_refuses_an_open_console_with_a_clear_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DXR_NODE")}
    env["DXR_NODE__WEB__HOST"] = "0.0.0.0"
    result = subprocess.run(
        [sys.executable, "-m", "dxr_node.cli", "serve", "--data-dir", str(tmp_path / "node"),
         "--port", str(free_port())], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert "not a loopback address, without credentials" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "node").exists()  # refused before anything started
