"""The C-ECHO/C-STORE SCP against real dcmtk peers (and a pynetdicom SCU for statuses)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dcmtk_peers import free_port, require
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)
from pynetdicom import AE

from dxr_node.node.config import load_config
from dxr_node.node.scp import StorageSCP
from dxr_node.node.service import purge_spool
from dxr_node.node.store import Store
from dxr_node.node.triage import skip_reason


def write_dx(path: Path, *, sop_class: str = DigitalXRayImageStorageForPresentation,
             body_part: str | None = "HAND", view: str | None = "PA",
             patient_id: str = "PID1", uid: str | None = None) -> str:
    """A small 12-bit DX radiograph file; returns its SOP Instance UID."""
    uid = uid or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.PatientName = "Secret^Person"
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = "HOSP"
    ds.StudyDate = "20240102"
    ds.Modality = "DX" if sop_class == DigitalXRayImageStorageForPresentation else "CT"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if body_part:
        ds.BodyPartExamined = body_part
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = 64, 48
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.1, 0.1]
    rng = np.random.default_rng(abs(hash(uid)) % 2**32)
    ds.PixelData = rng.integers(0, 4096, (64, 48), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid


@pytest.fixture
def node(tmp_path, database):
    """A running SCP on a free port (on each backend in turn); yields a function to
    (re)start it with overrides."""
    running: list[StorageSCP] = []
    stores: list[Store] = []

    def start(**overrides) -> tuple[StorageSCP, Store, int]:
        config = load_config(environ={}, overrides={
            "data_dir": str(tmp_path / "data"), "port": free_port(),
            "min_free_disk_mb": 1, "database": str(database), **overrides})
        store = Store(config.database_target)
        scp = StorageSCP(config, store)
        _, port = scp.start()
        running.append(scp)
        stores.append(store)
        return scp, store, port

    yield start
    for scp in running:
        scp.stop()
    for store in stores:
        store.close()


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _send_with_pynetdicom(path: Path, port: int, calling: str = "SCU") -> int | None:
    ds = dcmread(path)
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="DXRNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return status.get("Status")
    finally:
        assoc.release()


def test_echoscu_gets_an_answer(node):
    require("echoscu")
    _, _, port = node()
    result = _run("echoscu", "-aec", "DXRNODE", "127.0.0.1", str(port))
    assert result.returncode == 0, result.stderr


def test_storescu_uncompressed_and_jpeg_lossless_are_stored_as_received(node, tmp_path):
    require("storescu")
    require("dcmcjpeg")
    plain = tmp_path / "in" / "plain.dcm"
    plain_uid = write_dx(plain)
    source = tmp_path / "in" / "src.dcm"
    jpeg_uid = write_dx(source)
    jpeg = tmp_path / "in" / "jpeg.dcm"
    assert _run("dcmcjpeg", "+e1", str(source), str(jpeg)).returncode == 0  # lossless SV1
    _, store, port = node()

    for path, propose in ((plain, "-x="), (jpeg, "-xs")):
        result = _run("storescu", propose, "-aec", "DXRNODE", "127.0.0.1", str(port), str(path))
        assert result.returncode == 0, result.stderr

    assert store.counts()["jobs"]["queued"] == 2
    rows = {r["sop_instance_uid"]: r for r in store._read("SELECT * FROM instances")}
    assert rows[jpeg_uid]["transfer_syntax_uid"] == JPEGLosslessSV1
    for uid, original in ((plain_uid, plain), (jpeg_uid, jpeg)):
        stored = dcmread(rows[uid]["path"])
        assert stored.file_meta.TransferSyntaxUID == dcmread(original).file_meta.TransferSyntaxUID
        assert stored.PixelData == dcmread(original).PixelData  # byte for byte, no re-encode
        assert rows[uid]["patient_id"] == "PID1" and rows[uid]["calling_aet"] == "STORESCU"


def test_duplicate_instance_is_acknowledged_but_queued_once(node, tmp_path):
    path = tmp_path / "dup.dcm"
    write_dx(path)
    _, store, port = node()
    assert _send_with_pynetdicom(path, port) == 0x0000
    assert _send_with_pynetdicom(path, port) == 0x0000
    row = store._read("SELECT receive_count FROM instances")[0]
    assert row["receive_count"] == 2
    assert sum(store.counts()["jobs"].values()) == 1


def test_duplicate_after_the_spool_was_purged_is_purged_again(node, tmp_path):
    path = tmp_path / "dup.dcm"
    write_dx(path, body_part="CHEST")  # skipped: finished at once, so purgeable
    scp, store, port = node(retention_days=1)
    later = time.time() + 2 * 86400
    assert _send_with_pynetdicom(path, port) == 0x0000
    assert purge_spool(scp.config, store, now=later) == 1
    assert _send_with_pynetdicom(path, port) == 0x0000  # rewrites the spool file
    (spooled,) = (tmp_path / "data" / "spool").glob("*/*.dcm")
    assert purge_spool(scp.config, store, now=later) == 1
    assert not spooled.exists()


def _write_with_unknown_vr(path: Path, sop_class: str) -> str:
    """A file whose file meta is fine but whose data set has an element of unknown VR."""
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with open(path, "wb") as handle:
        handle.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(handle, meta)
        handle.write(b"\x08\x00\x16\x00XX\x10\x00" + b"\x01" * 16)
    return uid


def test_unreadable_header_of_another_sop_class_is_skipped(node, tmp_path):
    import dxr_node.node.dispatch  # noqa: F401  (sets pynetdicom to send files as stored)

    _, store, port = node()
    statuses = []
    for sop_class in (CTImageStorage, DigitalXRayImageStorageForPresentation):
        path = tmp_path / f"{sop_class}.dcm"
        _write_with_unknown_vr(path, sop_class)
        ae = AE(ae_title="SCU")
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="DXRNODE")
        statuses.append(assoc.send_c_store(path).get("Status"))
        assoc.release()
    assert statuses == [0x0000, 0x0000]
    (skipped,) = store.skipped()
    assert skipped["sop_class_uid"] == CTImageStorage
    assert skipped["reason"].startswith("not a CR/DX image")
    assert store.counts()["jobs"]["queued"] == 1  # the DX: its loader gives the reason


def test_non_hand_instance_is_accepted_and_recorded_as_skipped(node, tmp_path):
    chest = tmp_path / "chest.dcm"
    write_dx(chest, body_part="CHEST")
    ct = tmp_path / "ct.dcm"
    write_dx(ct, sop_class=CTImageStorage)
    _, store, port = node()
    assert _send_with_pynetdicom(chest, port) == 0x0000
    assert _send_with_pynetdicom(ct, port) == 0x0000
    reasons = sorted(s["reason"] for s in store.skipped())
    assert reasons[0] == "body part CHEST is not a hand"
    assert reasons[1].startswith("not a CR/DX image")
    assert store.claim_job("w") is None


def test_unknown_calling_aet_is_rejected_at_association(node):
    require("echoscu")
    _, _, port = node(allowed_calling_aets=["MODALITY1"])
    refused = _run("echoscu", "-aet", "STRANGER", "-aec", "DXRNODE", "127.0.0.1", str(port))
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stderr + refused.stdout
    allowed = _run("echoscu", "-aet", "MODALITY1", "-aec", "DXRNODE", "127.0.0.1", str(port))
    assert allowed.returncode == 0, allowed.stderr


def test_source_address_outside_allow_list_is_refused(node):
    _, _, port = node(allowed_source_ips=["192.0.2.0/24"])  # TEST-NET-1: not us
    ae = AE(ae_title="SCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DXRNODE")
    assert not assoc.is_established
    _, _, port = node(allowed_source_ips=["127.0.0.0/8"])
    assoc = ae.associate("127.0.0.1", port, ae_title="DXRNODE")
    assert assoc.is_established
    assoc.release()


def test_associations_beyond_the_limit_are_rejected_transiently(node):
    _, _, port = node(max_associations=1)
    ae = AE(ae_title="SCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    first = ae.associate("127.0.0.1", port, ae_title="DXRNODE")
    assert first.is_established
    try:
        second = ae.associate("127.0.0.1", port, ae_title="DXRNODE")
        assert second.is_rejected
        assert second.acceptor.primitive.result == 0x02  # rejected-transient: try later
    finally:
        first.release()


def test_disk_nearly_full_answers_out_of_resources(node, tmp_path):
    path = tmp_path / "img.dcm"
    write_dx(path)
    _, store, port = node(min_free_disk_mb=10**9)  # more than any disk has
    assert _send_with_pynetdicom(path, port) == 0xA700
    assert store.instance_count() == 0


def test_locked_database_answers_out_of_resources_and_a_resend_succeeds(tmp_path):
    config = load_config(environ={}, overrides={
        "data_dir": str(tmp_path / "data"), "port": free_port(), "min_free_disk_mb": 1})
    path = tmp_path / "img.dcm"
    write_dx(path)
    with Store(config.database_path, timeout_s=0.2) as store:
        scp = StorageSCP(config, store)
        _, port = scp.start()
        try:
            blocker = sqlite3.connect(config.database_path, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            assert _send_with_pynetdicom(path, port) == 0xA700  # never a false Success
            blocker.execute("ROLLBACK")
            blocker.close()
            assert _send_with_pynetdicom(path, port) == 0x0000
        finally:
            scp.stop()
        assert store.instance_count() == 1 and store.counts()["jobs"]["queued"] == 1


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, None),
    ({"BodyPartExamined": ""}, None),
    ({"BodyPartExamined": "HAND "}, None),
    ({"BodyPartExamined": "KNEE"}, "body part KNEE is not a hand"),
    ({"ViewPosition": "LL"}, "view position LL is not a PA hand projection"),
    ({"NumberOfFrames": "3"}, "multi-frame image (3 frames)"),
    ({"SamplesPerPixel": 3}, "not a greyscale image (SamplesPerPixel 3)"),
])
def test_triage_reasons(changes, expected):
    ds = Dataset()
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = "PA"
    for key, value in changes.items():
        setattr(ds, key, value)
    assert skip_reason(ds, DigitalXRayImageStorageForPresentation) == expected
    assert skip_reason(ds, "1.2.840.10008.5.1.4.1.1.88.22").startswith("not a CR/DX")


@pytest.mark.parametrize("body_part", [
    "HAND", "HAND LEFT", "L HAND", "HAND PA", "HAND_L", "HANDS", "MANO", "MAIN", "FINGER",
    "WRIST", "UPPER EXTREMITY", "BONE AGE", "UNKNOWN", "",
])
def test_triage_analyses_free_text_hand_body_parts(body_part):
    ds = Dataset()
    ds.BodyPartExamined = body_part
    assert skip_reason(ds, ComputedRadiographyImageStorage) is None


@pytest.mark.parametrize("body_part", ["CHEST", "SKULL", "ABDOMEN", "L FOOT", "KNEE_R",
                                       "CHEST PA", "PELVIS", "LSPINE", "ANKLE"])
def test_triage_skips_other_named_body_parts(body_part):
    ds = Dataset()
    ds.BodyPartExamined = body_part
    expected = f"body part {body_part} is not a hand"
    assert skip_reason(ds, ComputedRadiographyImageStorage) == expected


def test_docker_healthcheck_passes_on_a_live_node_and_fails_on_a_dead_one(node):
    dockerfile = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile"
    check = dockerfile.read_text().split('CMD ["python", "-c", "')[1].split('"]')[0]
    scp, _, port = node(allowed_calling_aets=["ORTHANC", "DXRSEND"])
    env = {**os.environ, "DXR_NODE__PORT": str(port),
           "DXR_NODE__ALLOWED_CALLING_AETS": "ORTHANC,DXRSEND"}
    assert subprocess.run([sys.executable, "-c", check], env=env, timeout=60).returncode == 0
    scp.stop()
    assert subprocess.run([sys.executable, "-c", check], env=env, timeout=60).returncode == 1
