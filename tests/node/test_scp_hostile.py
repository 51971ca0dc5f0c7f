"""A hostile or careless sender against the SCP (issue 14): mismatched UIDs, C-STOREs
without a data set. Real pynetdicom requestors on loopback."""

from __future__ import annotations

import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.dimse_primitives import C_STORE
from test_scp import node, write_dx  # noqa: F401  (node is a fixture)

from dxr_node.node.config import load_config
from dxr_node.node.store import InstanceInfo, Store
from dxr_node.node.worker import run_job


def _associate(port: int, sop_class: str, syntax: str):
    ae = AE(ae_title="SCU")
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="DXRNODE")
    assert assoc.is_established
    return assoc


def _file_with_command_uid(tmp_path: Path, dataset_uid: str, command_uid: str) -> Path:
    """A file whose meta (which becomes the C-STORE's Affected SOP Instance UID when sent
    from the file) names ``command_uid`` while its data set says ``dataset_uid``."""
    path = tmp_path / f"{command_uid}.dcm"
    write_dx(path, uid=dataset_uid, patient_id="OTHER-PATIENT")
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = command_uid
    ds.save_as(path)  # not enforce_file_format: that would make the meta match again
    return path


def test_dataset_uid_differing_from_the_command_uid_is_refused(node, tmp_path):  # noqa: F811
    _, store, port = node()
    original = tmp_path / "a.dcm"
    victim_uid = write_dx(original, patient_id="VICTIM")
    forged = _file_with_command_uid(tmp_path, victim_uid, "1.2.3.4.5.6.7.8.9")
    assoc = _associate(port, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the command UID comes from the file meta
    try:
        first = assoc.send_c_store(original)
        answer = assoc.send_c_store(forged)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()
    assert first.Status == 0x0000
    assert answer.Status == 0x0117
    assert "SOP Instance UID differs" in answer.ErrorComment
    assert store.instance_count() == 1  # only the original; the forged one left no row
    spooled = list((tmp_path / "data" / "spool").rglob("*.dcm"))
    assert [dcmread(p).PatientID for p in spooled] == ["VICTIM"]


def test_c_store_without_a_data_set_is_refused(node, tmp_path):  # noqa: F811
    _, store, port = node()
    assoc = _associate(port, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
    try:
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        request.AffectedSOPInstanceUID = "1.2.3.4.5.6.7.8.10"
        request.Priority = 2
        context_id = assoc.accepted_contexts[0].context_id
        # Sent below the service layer, as a buggy sender would; the reactor is paused as
        # send_c_store() does, so that the response comes to us.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.001)
        assoc.dimse.send_msg(request, context_id)
        _, response = assoc.dimse.get_msg(block=True)
        assoc._reactor_checkpoint.set()
    finally:
        assoc.release()
    assert response is not None and response.Status == 0xC000
    assert "without a data set" in response.ErrorComment
    assert store.instance_count() == 0


def test_worker_refuses_a_spool_file_naming_another_instance(tmp_path):
    """Defence in depth: whatever put it in the spool, a file whose data set names another
    instance fails its job and writes no objects (which would overwrite that exam's)."""
    config = load_config(environ={}, overrides={"data_dir": str(tmp_path / "data")})
    path = tmp_path / "img.dcm"
    write_dx(path, uid="1.2.3.4.99")
    with Store(config.database_path) as store:
        store.add_instance(InstanceInfo(
            sop_instance_uid="1.2.3.4.100", sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            transfer_syntax_uid="1.2.840.10008.1.2.1", path=str(path), size_bytes=1))
        job = store.claim_job("test")
        assert run_job(config, store, job) == "failed"
        assert "SOP Instance UID differs" in store.job_state(job.id)["error"]
    assert not list(config.objects_path.glob("*.dcm"))


def test_a_uid_with_a_newline_cannot_forge_a_log_line(node, tmp_path, caplog):  # noqa: F811
    _, _, port = node()
    path = tmp_path / "forged.dcm"
    uid = "1.2.3\nevent=stored sop_instance_uid=9.9.9\x00.1"
    write_dx(path, uid=uid)
    assoc = _associate(port, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
    try:
        with caplog.at_level("INFO", logger="dxr_node"):
            assoc.send_c_store(dcmread(path))
    finally:
        assoc.release()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("dxr_node")]
    assert lines and all("\n" not in line and "\x00" not in line for line in lines)
    assert any('sop_instance_uid="1.2.3\\nevent=stored sop_instance_uid=9.9.9\\x00.1"'
               in line for line in lines), lines
