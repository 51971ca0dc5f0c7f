"""Node configuration: defaults, the shipped TOML, environment and CLI precedence, errors."""

from __future__ import annotations

import random
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from dxr_node.node.config import ConfigError, NodeConfig, cli_overrides, load_config
from dxr_node.node.dispatch import backoff_delay
from dxr_node.node.worker import STOP_GRACE_S

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "node.toml"


def test_shipped_file_documents_exactly_the_embedded_defaults():
    assert load_config(SHIPPED, environ={}) == NodeConfig()


def test_defaults_run_on_one_machine():
    config = load_config(environ={})
    assert (config.ae_title, config.host, config.port) == ("DXRNODE", "127.0.0.1", 11112)
    assert config.database_path == Path("data/dxr-node.sqlite")
    assert config.spool_path == Path("data/spool")
    assert config.destinations == [] and config.allowed_calling_aets == []
    assert config.send_objects == ["SR", "SC", "GSPS"]
    assert config.worker_count >= 1


def test_precedence_file_then_environment_then_command_line(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(
        'ae_title = "FROMFILE"\nport = 2000\nworkers = 2\n[dispatch]\nmax_attempts = 4\n'
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "pacs.local"\n'
        'port = 4242\n'
    )
    env = {"DXR_NODE__PORT": "3000", "DXR_NODE__DISPATCH__TIMEOUT_S": "5",
           "DXR_NODE__ALLOWED_CALLING_AETS": "CR1, DX2", "OTHER": "ignored"}
    config = load_config(path, environ=env, overrides=cli_overrides(workers=3))
    assert config.ae_title == "FROMFILE"
    assert config.port == 3000
    assert config.workers == 3
    assert config.dispatch.max_attempts == 4 and config.dispatch.timeout_s == 5.0
    assert config.allowed_calling_aets == ["CR1", "DX2"]
    assert config.destination("pacs").host == "pacs.local"


def test_command_line_destinations_replace_the_file_ones():
    config = load_config(environ={}, overrides=cli_overrides(
        destinations=["PACS@10.0.0.5:104", "VNA@[::1]:11113"], allow_aets=["MOD1"],
        data_dir="/var/lib/dxr"))
    assert [(d.name, d.ae_title, d.host, d.port) for d in config.destinations] == [
        ("PACS", "PACS", "10.0.0.5", 104), ("VNA", "VNA", "::1", 11113)]
    assert config.allowed_calling_aets == ["MOD1"]
    assert config.database_path == Path("/var/lib/dxr/dxr-node.sqlite")


def test_environment_destinations_as_items_or_json():
    items = load_config(environ={"DXR_NODE__DESTINATIONS": "ORTHANC@orthanc:4242"})
    as_json = load_config(environ={"DXR_NODE__DESTINATIONS":
                                   '[{"name": "pacs", "ae_title": "ORTHANC", '
                                   '"host": "orthanc", "port": 4242}]'})
    assert items.destinations[0].host == as_json.destinations[0].host == "orthanc"


@pytest.mark.parametrize(("toml", "message"), [
    ('prot = 1', "prot: unknown key"),
    ('port = 70000', "port: Input should be less than or equal to 65535"),
    ('ae_title = "MUCH_TOO_LONG_AE_TITLE"', "ae_title: Value error, not a valid AE title"),
    ('send_objects = ["SR", "XX"]', "send_objects.1: Input should be"),
    ('allowed_source_ips = ["10.0.0.999"]', "not an IP address or network: '10.0.0.999'"),
    ('[[destinations]]\nname = "a"\nae_title = "A"\nhost = "h"\nport = 0',
     "destinations.0.port: Input should be greater than or equal to 1"),
    ('[[destinations]]\nname="a"\nae_title="A"\nhost="h"\nport=1\n'
     '[[destinations]]\nname="a"\nae_title="B"\nhost="h"\nport=2',
     "destination names must be unique: a"),
    ('[dispatch]\nmax_attempts = 0', "dispatch.max_attempts: Input should be greater"),
    ('port = ', "not valid TOML"),
    ('reference_table = "/nonexistent/site.json"', "reference_table: Value error"),
])
def test_bad_values_name_the_key(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_site_reference_table_is_validated_and_used(tmp_path):
    import json

    from dxr_node.clinical import load_reference
    from dxr_node.clinical.reference import DEFAULT_REFERENCE_PATH

    table = json.loads(DEFAULT_REFERENCE_PATH.read_text())
    table["version"] = "site-1"
    site = tmp_path / "site.json"
    site.write_text(json.dumps(table))
    config = load_config(environ={"DXR_NODE__REFERENCE_TABLE": str(site)})
    assert config.reference_table == site
    assert load_reference(config.reference_table).version == "site-1"


def test_missing_file_and_bad_environment_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="environment: port: Input should be a valid integer"):
        load_config(environ={"DXR_NODE__PORT": "eleven"})
    with pytest.raises(ConfigError, match="expected AET@HOST:PORT"):
        cli_overrides(destinations=["PACS:104"])


def test_docker_files_configure_a_valid_node():
    """The image's ENV and the compose file's variables load, and wire node and PACS."""
    docker = SHIPPED.parents[1] / "docker"
    env = dict(re.findall(r"(DXR_NODE__\w+)=(\S+)", (docker / "Dockerfile").read_text()))
    env.update(re.findall(r"^\s+(DXR_NODE__\w+):\s*\"?([^\"\n]+)\"?$",
                          (docker / "compose.yaml").read_text(), flags=re.MULTILINE))
    config_path = re.search(r"DXR_NODE_CONFIG=/opt/dxr-node/(\S+)",
                            (docker / "Dockerfile").read_text()).group(1)
    config = load_config(SHIPPED.parents[1] / config_path, environ=env)
    assert config.host == "0.0.0.0" and config.data_dir == Path("/data")
    assert [(d.ae_title, d.host, d.port) for d in config.destinations] == [
        ("ORTHANC", "orthanc", 4242)]
    assert "ORTHANC" in config.allowed_calling_aets
    compose = (docker / "compose.yaml").read_text()
    assert '"dxrnode": ["DXRNODE", "dxr-node", 11112]' in compose  # Orthanc knows the node
    # A graceful stop needs longer than the workers' own grace for running analyses.
    grace = re.search(r"stop_grace_period:\s*(\d+)s", compose).group(1)
    assert float(grace) > STOP_GRACE_S
    assert re.search(r"image:\s*orthancteam/orthanc:\d+\.\d+\.\d+\s", compose)  # pinned


def test_default_retries_span_about_four_and_a_half_hours():
    policy = NodeConfig().dispatch
    rng = random.Random(3)
    spans = [sum(backoff_delay(policy, attempt, rng) for attempt in range(1, policy.max_attempts))
             for _ in range(200)]  # the last attempt gives up: no wait after it
    assert 4.4 < statistics.mean(spans) / 3600 < 4.7
    assert all(3.0 < span / 3600 < 6.1 for span in spans)


def test_default_worker_count_is_the_cores_this_process_may_use():
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) not installed")
    code = "from dxr_node.node.config import NodeConfig; print(NodeConfig().worker_count)"
    pinned = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=60)
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.strip() == "1"


def test_docker_cluster_example_configures_two_nodes_on_one_postgresql():
    """docker/compose.cluster.yaml: each node's variables load into a cluster node of the
    same database, under its own name, and Orthanc reaches the nodes through the balancer."""
    docker = SHIPPED.parents[1] / "docker"
    image_env = dict(re.findall(r"(DXR_NODE__\w+)=(\S+)", (docker / "Dockerfile").read_text()))
    compose = (docker / "compose.cluster.yaml").read_text()
    nodes = re.findall(r"^  (node-\d):\n    <<: \*node\n    environment:\n((?:      .+\n)+)",
                       compose, flags=re.MULTILINE)
    configs = []
    for name, block in nodes:
        env = {**image_env, **dict(re.findall(r"(DXR_NODE__\w+):\s*\"?([^\"\n]+)\"?", block))}
        config = load_config(SHIPPED, environ=env)
        assert config.cluster.node_name == name
        configs.append(config)
    assert len(configs) == 2
    assert {c.database_url for c in configs} == {
        "postgresql://dxr:dxr-demo-only@postgres:5432/dxr"}
    assert all(c.data_dir == Path("/data") and c.roles.scp for c in configs)
    assert '"dxrnode": ["DXRNODE", "dxr-lb", 11112]' in compose
    assert "server node-1:11112" in compose and "server node-2:11112" in compose
