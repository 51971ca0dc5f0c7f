"""The console against a hostile browser or client (issue 14): DNS rebinding, the API
description without a token, numbers beyond 64 bits."""

from __future__ import annotations

from console_testing import console_client

from dxr_node.node.config import NodeConfig

TOKEN = "s3cret-token-for-tests"


def _with_web(config: NodeConfig, **web) -> NodeConfig:
    return config.model_copy(update={"web": config.web.model_copy(update=web)})


def test_a_rebinding_host_name_is_refused_in_loopback_mode(node_config, store, filled):
    """A page on another origin whose name resolves to 127.0.0.1 sends its own name as
    Host: the console must not answer it (patient IDs, retry-all)."""
    client = console_client(node_config, store)
    rebound = {"Host": "rebind.example:8080"}
    response = client.get("/api/exams", headers=rebound)
    assert response.status_code == 400
    assert filled.patient_id not in response.text
    retry = client.post("/failures/retry-all", headers={**rebound,
                                                   "Origin": "http://rebind.example:8080"})
    assert retry.status_code == 400
    for local in ("localhost:8080", "127.0.0.1:8080", "[::1]:8080", "127.0.0.1"):
        assert client.get("/api/exams", headers={"Host": local}).status_code == 200, local


def test_configured_names_are_answered(node_config, store):
    config = _with_web(node_config, allowed_hosts=["dxr.hospital.example"])
    client = console_client(config, store)
    assert client.get("/healthz", headers={"Host": "dxr.hospital.example"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "other.example"}).status_code == 400


def test_openapi_needs_the_token_when_one_is_set(node_config, store):
    config = _with_web(node_config, host="0.0.0.0", token=TOKEN)
    client = console_client(config, store, client_host="10.20.30.40")
    assert client.get("/openapi.json").status_code == 401
    described = client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert described.status_code == 200 and "/api/exams" in described.json()["paths"]


def test_integers_beyond_64_bits_are_a_bad_request_not_a_server_error(node_config, store):
    client = console_client(node_config, store)
    huge = str(2**70)
    assert client.get(f"/api/exams/{huge}").status_code == 400
    assert client.get(f"/api/exams?page={huge}").status_code == 400
    assert client.get(f"/exams/{huge}").status_code == 400
    assert client.post(f"/api/jobs/{huge}/retry").status_code == 400
