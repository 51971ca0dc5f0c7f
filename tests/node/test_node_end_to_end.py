"""The whole node with real peers: dcmtk storescu -> `dxr-node serve` -> dcmtk storescp.

Phantom hand radiographs go in uncompressed, as JPEG Lossless SV1 (dcmcjpeg) and as JPEG
2000 lossless; the PACS must receive exactly the configured objects per image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from dcmtk_peers import free_port, require, storescp, wait_listening
from node_process import serve, wait_for
from pydicom import dcmread

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.22",
              "1.2.840.10008.5.1.4.1.1.88.34"}
SC_CLASSES = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4",
              "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3"}
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"

pytestmark = pytest.mark.slow


def _kind(sop_class: str) -> str:
    if sop_class in SR_CLASSES:
        return "SR"
    if sop_class in SC_CLASSES:
        return "SC"
    return "GSPS" if sop_class == GSPS_CLASS else sop_class


def _referenced_uids(ds) -> set[str]:
    """Every SOP Instance UID an object references, wherever it does."""
    found: set[str] = set()

    def walk(dataset) -> None:
        for element in dataset:
            if element.keyword == "ReferencedSOPInstanceUID":
                found.add(str(element.value))
            elif element.VR == "SQ":
                for item in element.value:
                    walk(item)

    walk(ds)
    return found


def _storescu(port: int, files: list[Path], propose: str, calling: str = "MODALITY"):
    return subprocess.run(["storescu", propose, "-aet", calling, "-aec", "DXRNODE",
                           "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, list[Path]]:
    """Two uncompressed, one JPEG Lossless SV1 and one JPEG 2000 lossless phantom."""
    from dxr_node.phantom.generate import write_phantom_set

    out = tmp_path_factory.mktemp("e2e-phantoms")
    sets = {}
    for syntax, n, seed in (("explicit", 2, 11), ("jpeg-lossless-sv1", 1, 12),
                            ("j2k-lossless", 1, 13)):
        write_phantom_set(out / syntax, n=n, seed=seed, transfer_syntax=syntax)
        sets[syntax] = sorted((out / syntax).glob("*.dcm"))
    return sets


def test_modality_to_pacs_with_dcmtk_peers(tmp_path, phantoms):
    for tool in ("storescu", "echoscu", "storescp"):
        require(tool)
    pacs_dir = tmp_path / "pacs"
    with storescp(pacs_dir, aet="PACS") as pacs_port, serve(
        tmp_path / "data", "--workers", "1", "--allow-aet", "MODALITY",
        "--allow-aet", "ECHOSCU", "--destination", f"PACS@127.0.0.1:{pacs_port}",
    ) as node:
        echo = subprocess.run(["echoscu", "-aec", "DXRNODE", "127.0.0.1", str(node.port)],
                              capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
        stranger = subprocess.run(["echoscu", "-aet", "STRANGER", "-aec", "DXRNODE",
                                   "127.0.0.1", str(node.port)],
                                  capture_output=True, text=True, timeout=60)
        assert stranger.returncode != 0
        assert "Association Rejected" in stranger.stdout + stranger.stderr
        refused = _storescu(node.port, phantoms["explicit"][:1], "-x=", calling="STRANGER")
        assert refused.returncode != 0

        for syntax, propose in (("explicit", "-x="), ("jpeg-lossless-sv1", "-xs"),
                                ("j2k-lossless", "-xv")):
            sent = _storescu(node.port, phantoms[syntax], propose)
            assert sent.returncode == 0, sent.stderr
        sources = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                   for files in phantoms.values() for p in files}

        def pacs_files() -> list[Path]:
            return [p for p in pacs_dir.iterdir() if p.is_file()] if pacs_dir.exists() else []

        expected = 3 * len(sources)  # SR, SC and GSPS per image (the defaults)
        wait_for(lambda: len(pacs_files()) >= expected, 300, f"{expected} objects at the PACS")
        wait_for(lambda: node.status()["dispatches"]["pending"] == 0, 30, "dispatch to settle")
        status = node.status()
        assert node.stop() == 0
        log = node.log_text()

    received = [dcmread(p) for p in pacs_files()]
    assert len(received) == expected  # nothing twice
    per_source: dict[str, Counter] = {uid: Counter() for uid in sources}
    for ds in received:
        refs = _referenced_uids(ds) & sources
        assert len(refs) == 1, f"{_kind(ds.SOPClassUID)} references {refs}"
        per_source[refs.pop()][_kind(str(ds.SOPClassUID))] += 1
    for uid, kinds in per_source.items():
        assert kinds == Counter({"SR": 1, "SC": 1, "GSPS": 1}), (uid, kinds)

    assert status["jobs"]["done"] == len(sources)
    assert status["dispatches"]["sent"] == expected and status["dispatches"]["failed"] == 0
    assert "event=association_rejected" in log and "event=stopped" in log
    for path in (p for files in phantoms.values() for p in files):
        name = str(dcmread(path, stop_before_pixels=True).PatientName)
        assert name.split("^")[0] not in log  # no patient names in logs


def _orthanc_api(http_port: int, method: str, path: str, body: bytes | None = None,
                 content_type: str = "application/json"):
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}{path}", data=body,
                                     method=method, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


@contextmanager
def orthanc(workdir: Path, node_port: int):
    """Orthanc (Debian package) as the PACS, knowing the node as modality "dxrnode"."""
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc not installed (scripts/setup installs it as root)")
    dicom_port, http_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "PACS", "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"), "DicomAet": "ORTHANC",
        "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True,
        "DicomModalities": {"dxrnode": ["DXRNODE", "127.0.0.1", node_port]},
        "Plugins": [],
    }))
    with open(workdir / "orthanc.log", "wb") as log:
        process = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=log)
        try:
            wait_listening(http_port, process, timeout_s=60)
            wait_listening(dicom_port, process, timeout_s=60)
            yield dicom_port, http_port
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_orthanc_pushes_to_the_node_and_gets_the_results_back(tmp_path, phantoms):
    node_port = free_port()
    with orthanc(tmp_path / "orthanc", node_port) as (dicom_port, http_port), serve(
        tmp_path / "data", "--workers", "1", "--allow-aet", "ORTHANC",
        "--destination", f"ORTHANC@127.0.0.1:{dicom_port}", port=node_port,
    ) as node:
        assert _orthanc_api(http_port, "POST", "/modalities/dxrnode/echo", b"{}") == {}
        source = phantoms["explicit"][0]
        uploaded = _orthanc_api(http_port, "POST", "/instances", source.read_bytes(),
                                "application/dicom")
        _orthanc_api(http_port, "POST", "/modalities/dxrnode/store",
                     json.dumps({"Resources": [uploaded["ID"]], "Synchronous": True}).encode())
        study = uploaded["ParentStudy"]

        def study_instances() -> list[dict]:
            return _orthanc_api(http_port, "GET", f"/studies/{study}/instances")

        wait_for(lambda: len(study_instances()) >= 4, 180, "SR, SC and GSPS in Orthanc")
        wait_for(lambda: node.status()["dispatches"]["pending"] == 0, 30, "dispatch to settle")
        status = node.status()
        modalities = Counter(
            _orthanc_api(http_port, "GET", f"/instances/{i['ID']}/simplified-tags")["Modality"]
            for i in study_instances()
        )

    # The source image plus the SR, the overlay (OT) and the GSPS (PR), in the same study.
    assert modalities == Counter({"DX": 1, "SR": 1, "OT": 1, "PR": 1}) or \
        modalities == Counter({"CR": 1, "SR": 1, "OT": 1, "PR": 1}), modalities
    assert status["jobs"]["done"] == 1 and status["dispatches"]["sent"] == 3
