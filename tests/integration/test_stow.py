"""DICOMweb STOW-RS as a destination kind: the SR, SC, GSPS and PDF of one analysis go
through the node's dispatcher to Orthanc's DICOMweb plugin (a real server), first down
(retried with backoff), then up (stored once)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from dcmtk_peers import free_port, wait_listening

from dxr_node.node.config import load_config
from dxr_node.node.dispatch import deliver_due
from dxr_node.node.store import InstanceInfo, Store
from dxr_node.node.worker import write_object

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33": "SR", "1.2.840.10008.5.1.4.1.1.7": "SC",
           "1.2.840.10008.5.1.4.1.1.11.1": "GSPS", "1.2.840.10008.5.1.4.1.1.104.1": "PDF"}

pytestmark = pytest.mark.slow


@contextmanager
def orthanc_dicomweb(workdir: Path, http_port: int):
    if shutil.which("Orthanc") is None or not PLUGIN.is_file():
        pytest.skip("Orthanc with its DICOMweb plugin not installed (scripts/setup as root)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "VNA", "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"), "DicomPort": free_port(),
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }))
    with open(workdir / "orthanc.log", "wb") as log:
        process = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=log)
        try:
            wait_listening(http_port, process, timeout_s=60)
            yield f"http://127.0.0.1:{http_port}"
        finally:
            process.terminate()
            process.wait(timeout=30)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def test_stow_rs_destination_down_then_up(tmp_path, database):
    from dxr_node.phantom.generate import write_phantom_set
    from dxr_node.pipeline import process_file

    write_phantom_set(tmp_path / "phantom", n=1, seed=41)
    image = sorted((tmp_path / "phantom").glob("*.dcm"))[0]
    http_port = free_port()
    config = load_config(environ={}, overrides={
        "data_dir": str(tmp_path / "data"), "database": str(database),
        "destinations": [{"name": "vna", "kind": "stow",
                          "url": f"http://127.0.0.1:{http_port}/dicom-web"}],
        "dispatch": {"initial_backoff_s": 0.05, "max_backoff_s": 0.1}})
    store = Store(config.database_target)
    job = store.add_instance(InstanceInfo("1.2.3", "1.2.840.10008.5.1.4.1.1.1.1", "1.2",
                                          str(image), 1)).job_id
    result = process_file(image, kinds=("SR", "SC", "GSPS", "PDF"))
    objects = [write_object(config.objects_path, ds) for ds in result.objects]
    store.finish_job(job, status=result.analysis.status, analysis=result.analysis.to_dict(),
                     interpretation=result.interpretation.to_dict(), objects=objects,
                     destinations=["vna"])
    (vna,) = config.destinations

    # Nobody listens yet: every object is a transient failure, retried later.
    assert deliver_due(config, store, vna) == 4
    states = store.exam_dispatches(job)
    assert all(d["state"] == "pending" and "ConnectError" in d["error"] for d in states)

    with orthanc_dicomweb(tmp_path / "orthanc", http_port) as base:
        deadline = time.monotonic() + 60
        while store.counts()["dispatches"]["sent"] < 4:
            assert time.monotonic() < deadline, store.exam_dispatches(job)
            deliver_due(config, store, vna)
            time.sleep(0.05)
        assert deliver_due(config, store, vna) == 0  # nothing left, nothing sent twice
        instances = _get(f"{base}/instances")
        classes = Counter(
            CLASSES.get(_get(f"{base}/instances/{i}/simplified-tags")["SOPClassUID"], "?")
            for i in instances)
        # Readable back over DICOMweb (QIDO-RS) in the source image's study.
        study = str(result.radiograph.dataset.StudyInstanceUID)
        qido = _get(f"{base}/dicom-web/studies/{study}/instances")
    store.close()
    assert classes == Counter({"SR": 1, "SC": 1, "GSPS": 1, "PDF": 1})
    assert len(qido) == 4
    assert {o.sop_instance_uid for o in objects} == {
        item["00080018"]["Value"][0] for item in qido}


def _answer(status: int, failed: dict | None = None):
    import httpx

    body = {} if failed is None else {"00081198": {"vr": "SQ", "Value": [failed]}}
    return httpx.Response(status, json=body)


def test_stow_answers_map_to_sent_retry_failed(tmp_path):
    from dxr_node.integration.stow import _classify

    uid, path = "1.2.3.4", tmp_path / "x.dcm"
    ours = {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [0xA700]}}
    other = {"00081155": {"vr": "UI", "Value": ["9.9"]}, "00081197": {"vr": "US", "Value": [272]}}
    rejected = {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [272]}}
    assert _classify(path, uid, _answer(200)).outcome == "sent"
    assert _classify(path, uid, _answer(202, other)).outcome == "sent"
    assert _classify(path, uid, _answer(202, ours)).outcome == "retry"  # out of resources
    assert _classify(path, uid, _answer(409, rejected)).outcome == "failed"
    assert _classify(path, uid, _answer(503)).outcome == "retry"
    assert _classify(path, uid, _answer(401)).outcome == "failed"
