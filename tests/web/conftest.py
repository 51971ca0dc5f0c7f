"""A node database filled by real analyses of phantoms, for the console's tests.

Built once per session the way a running node fills it: the SCP's record of each
instance (``Store.add_instance``), then the worker's own ``run_job`` (engine, clinical,
reports, objects written, ``finish_job``). Three follow-up exams of one phantom patient
(study dates a year apart, so the detail page has a history), one unreadable file (a
failed job) and one triage skip. Dispatch outcomes are recorded as the dispatcher does.
Each test gets its own copy of the database.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from console_testing import DESTINATION, STUDY_DATES, TestClient, console_client

from dxr_node.node.config import NodeConfig
from dxr_node.node.store import InstanceInfo, Store


@dataclass
class Filled:
    config: NodeConfig
    database: Path
    job_ids: list[int]  # the three analysed exams, oldest first
    failed_job: int  # unreadable file
    skipped_job: int
    failed_dispatch: int  # permanent failure, on the newest exam
    waiting_dispatch: int  # transient failure waiting for its retry, same exam
    patient_id: str


def _instance(path: Path) -> InstanceInfo:
    """What the SCP records from a received file's header."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return InstanceInfo(
        sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), path=str(path),
        size_bytes=path.stat().st_size, study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID), patient_id=str(ds.PatientID),
        study_date=str(ds.StudyDate), modality=str(ds.Modality), calling_aet="MODALITY",
        source_ip="127.0.0.1")


def _follow_up_exams(spool: Path, seed: int) -> list[Path]:
    """One phantom hand imaged three times, the study dates a year apart."""
    from dxr_node.phantom.generate import write_phantom_set

    raw = spool / "phantoms"
    write_phantom_set(raw, 3, seed=seed, same_anatomy=True)
    paths = []
    for index, study_date in enumerate(STUDY_DATES):
        ds = pydicom.dcmread(raw / f"phantom_{index:04d}.dcm")
        ds.StudyDate = study_date
        ds.StudyInstanceUID = pydicom.uid.generate_uid()
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = spool / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    shutil.rmtree(raw)
    return paths


def _analysed_follow_ups(config: NodeConfig, store: Store, seed: int) -> tuple[list[int], str]:
    """Job ids of the three follow-up exams (analysed by the worker) and the patient ID;
    no job ids when the engine rejected one of them."""
    from dxr_node.node.worker import run_job

    job_ids = []
    for path in _follow_up_exams(config.spool_path, seed):
        info = _instance(path)
        added = store.add_instance(info)
        job = store.claim_job("test-worker")
        assert job is not None and job.id == added.job_id
        assert run_job(config, store, job) == "done"
        job_ids.append(job.id)
    analysed = all(store.exam(j)["status"] == "analysed" for j in job_ids)
    return (job_ids if analysed else []), info.patient_id


@pytest.fixture(scope="session")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    from dxr_node.node.worker import run_job

    # A phantom the engine accepts three times over (the engine and the phantom
    # generator change under active development; the console's tests need results).
    for seed in (11, 12, 13, 14):
        data_dir = tmp_path_factory.mktemp("node")
        config = NodeConfig(data_dir=data_dir, destinations=[
            {"name": DESTINATION, "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}])
        config.spool_path.mkdir(parents=True)
        store = Store(config.database_path)
        job_ids, patient_id = _analysed_follow_ups(config, store, seed)
        if job_ids:
            break
        store.close()
    else:
        pytest.fail("the engine rejected at least one of three follow-up phantoms for "
                    "every seed tried")

    broken = config.spool_path / "broken.dcm"
    broken.write_bytes(b"not a DICOM file at all")
    added = store.add_instance(
        InstanceInfo("1.2.826.0.1.3680043.99.1", "1.2.840.10008.5.1.4.1.1.1.1",
                     "1.2.840.10008.1.2.1", str(broken), 23, patient_id="PH-BROKEN",
                     study_date="20260101", modality="DX"))
    run_job(config, store, store.claim_job("test-worker"))
    failed_job = added.job_id
    skipped = store.add_instance(
        InstanceInfo("1.2.826.0.1.3680043.99.2", "1.2.840.10008.5.1.4.1.1.2",
                     "1.2.840.10008.1.2.1", str(config.spool_path / "ct.dcm"), 100,
                     patient_id="PH-CT", study_date="20260102", modality="CT"),
        skip_reason="not a hand radiograph: modality CT")

    # Dispatch outcomes: everything sent except two objects of the newest exam.
    newest = {d["kind"]: d["id"] for d in store.exam_dispatches(job_ids[-1])}
    due = [item for name in store.pending_destinations()
           for item in store.claim_dispatches(name, 1000, now=time.time() + 1)]
    for item in due:
        if item.id == newest["SC"]:
            store.dispatch_failed(item.id, "association rejected (permanent): calling AE "
                                           "not recognised")
        elif item.id == newest["GSPS"]:
            store.dispatch_retry_later(item.id, "cannot reach PACS@127.0.0.1:4242 (refused)",
                                       time.time() + 600)
        else:
            store.dispatch_sent(item.id, 0x0000)
    store.close()
    return Filled(config, config.database_path, job_ids, failed_job, skipped.job_id,
                  newest["SC"], newest["GSPS"], patient_id)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def node_config(request: pytest.FixtureRequest, filled: Filled, tmp_path: Path) -> NodeConfig:
    """The filled node's config over a private copy of its database: on SQLite, then
    (full suite only) copied into a new PostgreSQL schema (`dxr-node copy-db`'s
    function)."""
    copy = tmp_path / "dxr-node.sqlite"
    with sqlite3.connect(filled.database) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    if request.param == "sqlite":
        return filled.config.model_copy(update={"database": copy})
    from dxr_node.node.transfer import copy_database

    url = request.getfixturevalue("postgres_url")
    with Store(copy) as source, Store(url) as target:
        copy_database(source, target)
    return filled.config.model_copy(update={"database": url})


@pytest.fixture
def store(node_config: NodeConfig):
    with Store(node_config.database_target) as opened:
        yield opened


@pytest.fixture
def client(node_config: NodeConfig, store: Store) -> TestClient:
    return console_client(node_config, store)
