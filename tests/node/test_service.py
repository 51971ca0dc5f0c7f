"""`dxr-node serve` wiring: shutdown order, start-up clean-up, retention of produced objects."""

from __future__ import annotations

import ast
import json
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from dcmtk_peers import free_port
from node_process import serve, wait_for
from pydicom import dcmread
from pynetdicom import AE
from test_scp import write_dx

from dxr_node.node.config import load_config
from dxr_node.node.service import Node, purge_spool
from dxr_node.node.store import InstanceInfo, ProducedObject, Store


@pytest.mark.slow
def test_sigterm_stops_the_listener_before_the_workers(tmp_path):
    """An image acknowledged during the listener's grace period is still analysed."""
    image = tmp_path / "late.dcm"
    uid = write_dx(image)
    ds = dcmread(image)
    with serve(tmp_path / "data", "--workers", "1") as node:
        wait_for(lambda: "worker_started" in node.log_text(), 60, "the worker")
        # The command line handed the console to the node: it serves /healthz.
        wait_for(lambda: "event=console_ready" in node.log_text(), 60, "the console")
        url = re.search(r"event=console_ready url=(\S+)", node.log_text()).group(1)
        with urllib.request.urlopen(url + "healthz", timeout=30) as response:
            assert json.load(response)["scp_listening"] is True
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DXRNODE")
        assert assoc.is_established
        node.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "event=stopping" in node.log_text(), 30, "the node to start stopping")
        assert assoc.send_c_store(ds).Status == 0x0000  # in progress: still accepted
        # Done or failed (the engine's verdict on this tiny image does not matter here):
        # a worker took the job while the listener was still draining.
        finished = rf"event=analysis_(done|failed) .*sop={re.escape(uid)}"
        wait_for(lambda: re.search(finished, node.log_text()) is not None, 60,
                 "the image to be analysed while the listener drains")
        assoc.release()
        assert node.process.wait(timeout=120) == 0  # the one SIGTERM was enough
    assert re.search(finished + r"(.|\n)*event=stopped", node.log_text())


def test_partial_files_of_a_killed_node_are_removed_at_start(tmp_path):
    config = load_config(environ={}, overrides={
        "data_dir": str(tmp_path), "port": free_port(), "workers": 1,
        "web": {"enabled": False}})
    incoming = config.spool_path / "incoming"
    leftovers = [incoming / "4f2a.part", config.objects_path / ".1.2.3.4711.part"]
    kept = config.objects_path / "1.2.3.dcm"
    for path in [*leftovers, kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    node = Node(config)
    node.start()
    try:
        assert not any(path.exists() for path in leftovers)
        assert kept.exists()
    finally:
        node.stop()


def _object_file(folder: Path, uid: str) -> ProducedObject:
    path = folder / f"{uid}.dcm"
    path.write_bytes(b"an object")
    return ProducedObject("SC", "1.2.840.10008.5.1.4.1.1.7", uid, str(path))


def test_retention_deletes_delivered_objects_and_keeps_the_rest(tmp_path):
    config = load_config(environ={}, overrides={"data_dir": str(tmp_path), "retention_days": 1})
    folder = config.objects_path
    folder.mkdir(parents=True)
    with Store(config.database_path) as store:
        for n, destinations in enumerate((["PACS", "ARCHIVE"], ["PACS", "ARCHIVE"], [])):
            store.add_instance(InstanceInfo(f"1.{n}", "1.2.840.10008.5.1.4.1.1.1.1",
                                            "1.2.840.10008.1.2.1", str(tmp_path / f"{n}"), 1))
            job = store.claim_job("w")
            store.finish_job(job.id, status="ok", analysis={}, interpretation=None,
                             objects=[_object_file(folder, f"9.{n}")],
                             destinations=destinations)
        for destination in ("PACS", "ARCHIVE"):
            for item in store.claim_dispatches(destination, 10):
                if item.sop_instance_uid == "9.1" and destination == "ARCHIVE":
                    store.dispatch_failed(item.id, "refused")
                else:
                    store.dispatch_sent(item.id, 0)

        assert purge_spool(config, store) == 0  # nothing is a day old yet
        later = time.time() + 2 * 86400
        deleted = purge_spool(config, store, now=later)
        rows = {r["sop_instance_uid"]: r["file_deleted_at"]
                for r in store._read("SELECT sop_instance_uid, file_deleted_at FROM objects")}
        # 9.0 sent everywhere: gone (row kept); 9.1 failed at ARCHIVE and 9.2 never had a
        # destination: kept. (The spool files of the instances do not exist: not counted.)
        assert not (folder / "9.0.dcm").exists() and rows["9.0"] is not None
        assert (folder / "9.1.dcm").exists() and rows["9.1"] is None
        assert (folder / "9.2.dcm").exists() and rows["9.2"] is None
        assert deleted == 3 + 1  # three spool rows (finished jobs) and one object
        assert purge_spool(config, store, now=later) == 0  # each file once


def test_the_node_never_imports_the_web_wing():
    """docs/architecture.md: node never imports web (import-linter checks it in
    scripts/test too). The command layer (dxr_node/commands/node.py) is where the console
    is handed to the node as start/stop callbacks."""
    package = Path(__file__).resolve().parents[2] / "dxr_node" / "node"
    for module in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("dxr_node.web") for n in names), module.name
