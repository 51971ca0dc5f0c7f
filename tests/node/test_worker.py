"""Analysis worker pool: claiming, recording results, crashes, timeouts, graceful stop."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
from dcmtk_peers import write_small_sc
from node_process import wait_for
from pydicom import dcmread
from pydicom.uid import generate_uid

from dxr_node.node.config import Destination, NodeConfig
from dxr_node.node.store import InstanceInfo, Store
from dxr_node.node.worker import WorkerPool, object_kind, run_job, write_object

PACS = Destination(name="PACS", ae_title="PACS", host="127.0.0.1", port=11112)
ARCHIVE = Destination(name="ARCHIVE", ae_title="ARCHIVE", host="127.0.0.1", port=11113)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> list[Path]:
    from dxr_node.phantom.generate import write_phantom_set

    out = tmp_path_factory.mktemp("worker-phantoms")
    write_phantom_set(out, n=3, seed=1)
    return sorted(out.glob("*.dcm"))


def _config(tmp_path: Path, database: str | Path | None = None, **fields) -> NodeConfig:
    """A node's configuration; ``database`` (the ``database`` fixture: each backend in
    turn) or the embedded SQLite file in the data folder."""
    return NodeConfig(data_dir=tmp_path / "data", destinations=[PACS, ARCHIVE],
                      database=database, **fields)


def _queue(store: Store, tmp_path: Path, source: Path) -> int:
    """Spool a copy of ``source`` and queue its job, as the SCP would; returns the job id."""
    ds = dcmread(source, stop_before_pixels=True)
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / f"{ds.SOPInstanceUID}.dcm"
    shutil.copyfile(source, path)
    return store.add_instance(InstanceInfo(
        sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), path=str(path),
        size_bytes=path.stat().st_size, patient_id=str(ds.PatientID), modality=ds.Modality,
        study_date=str(ds.get("StudyDate", "")) or None)).job_id


def _corrupt_copy(source: Path, target: Path) -> Path:
    """A DICOM file cut off in the middle of its pixel data (a broken transfer)."""
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _state(store: Store, job_id: int) -> str:
    return store.job_state(job_id)["state"]


@pytest.mark.parametrize(("sop_class", "kind"), [
    ("1.2.840.10008.5.1.4.1.1.88.33", "SR"), ("1.2.840.10008.5.1.4.1.1.88.22", "SR"),
    ("1.2.840.10008.5.1.4.1.1.7", "SC"), ("1.2.840.10008.5.1.4.1.1.7.2", "SC"),
    ("1.2.840.10008.5.1.4.1.1.11.1", "GSPS"), ("1.2.840.10008.5.1.4.1.1.104.1", "PDF"),
])
def test_object_kind_from_sop_class(sop_class, kind):
    assert object_kind(sop_class) == kind


def test_unexpected_object_class_is_an_error():
    with pytest.raises(ValueError, match="unexpected SOP class"):
        object_kind("1.2.840.10008.5.1.4.1.1.1.1")  # a DX image is not something we make


def test_write_object_is_named_by_uid_and_rewrites_in_place(tmp_path):
    uid = write_small_sc(tmp_path / "made.dcm")
    ds = dcmread(tmp_path / "made.dcm")
    first = write_object(tmp_path / "objects", ds)
    again = write_object(tmp_path / "objects", ds)
    assert first == again
    assert (first.kind, first.sop_instance_uid) == ("SC", uid)
    assert [p.name for p in (tmp_path / "objects").iterdir()] == [f"{uid}.dcm"]  # no .part
    assert dcmread(first.path).SOPInstanceUID == uid


def test_running_jobs_claimed_by_names_only_that_workers_running_jobs(tmp_path):
    with Store(tmp_path / "db.sqlite") as store:
        for uid in ("1.1", "1.2", "1.3"):
            store.add_instance(InstanceInfo(uid, "1.2.840.10008.5.1.4.1.1.1.1",
                                            "1.2.840.10008.1.2.1", f"/s/{uid}", 1))
        a = store.claim_job("worker-0-100")
        b = store.claim_job("worker-1-200")
        c = store.claim_job("worker-0-100")
        store.fail_job(c.id, "done with it")
        assert store.running_jobs_claimed_by("worker-0-100") == [a.id]
        assert store.running_jobs_claimed_by("worker-1-200") == [b.id]
        assert store.running_jobs_claimed_by("worker-9-999") == []


@pytest.mark.slow
def test_run_job_records_result_objects_and_dispatches(tmp_path, phantoms, database):
    config = _config(tmp_path, database)
    with Store(config.database_target) as store:
        job_id = _queue(store, tmp_path, phantoms[0])
        job = store.claim_job("test")
        assert run_job(config, store, job) == "done"
        objects = store.objects_for_job(job_id)
        (result,) = store.recent_results()
        counts = store.counts()
    assert sorted(o.kind for o in objects) == ["GSPS", "SC", "SR"]
    assert result["job_id"] == job_id and result["status"] in ("ok", "rejected")
    for obj in objects:
        assert dcmread(obj.path).SOPInstanceUID == obj.sop_instance_uid
    assert counts["dispatches"]["pending"] == 3 * 2  # every object to both destinations
    assert counts["jobs"]["done"] == 1


@pytest.mark.slow
def test_laterality_recorded_for_follow_up_follows_the_clinical_rule(tmp_path, phantoms,
                                                                     database):
    """Header and image agree: that hand. They disagree: unknown (no comparison)."""
    header = dcmread(phantoms[0])
    flipped = dcmread(phantoms[0])
    flipped.SOPInstanceUID = flipped.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    other = {"L": "R", "R": "L"}[header.ImageLaterality]
    flipped.ImageLaterality = flipped.Laterality = other
    flipped.save_as(tmp_path / "flipped.dcm")
    config = _config(tmp_path, database)
    with Store(config.database_target) as store:
        for source in (phantoms[0], tmp_path / "flipped.dcm"):
            _queue(store, tmp_path, source)
            assert run_job(config, store, store.claim_job("test")) == "done"
        recorded = dict(store._read("SELECT sop_instance_uid, laterality FROM results"))
    assert recorded[str(header.SOPInstanceUID)] == header.ImageLaterality
    assert recorded[str(flipped.SOPInstanceUID)] is None


def test_unreadable_image_fails_at_once_with_the_reason(tmp_path, phantoms, database):
    config = _config(tmp_path, database)
    with Store(config.database_target) as store:
        broken = _corrupt_copy(phantoms[0], tmp_path / "broken.dcm")
        job_id = _queue(store, tmp_path, broken)
        assert run_job(config, store, store.claim_job("test")) == "failed"
        job = store.job_state(job_id)
    assert job["attempts"] == 1
    assert job["error"].startswith("unreadable image:")


@pytest.mark.slow
def test_pool_drains_the_queue_past_a_broken_image(tmp_path, phantoms, database):
    config = _config(tmp_path, database, workers=2)
    stop = threading.Event()
    with Store(config.database_target) as store:
        broken = _queue(store, tmp_path, _corrupt_copy(phantoms[0], tmp_path / "broken.dcm"))
        good = [_queue(store, tmp_path, p) for p in phantoms[1:]]
        pool = WorkerPool(config, stop).start()
        try:
            wait_for(lambda: store.counts()["jobs"]["queued"] == 0
                     and store.counts()["jobs"]["running"] == 0, 180, "the queue to drain")
        finally:
            pool.stop()
        assert _state(store, broken) == "failed"
        assert [_state(store, j) for j in good] == ["done", "done"]
        assert store.counts()["dispatches"]["pending"] == len(good) * 3 * 2


@pytest.mark.slow
def test_image_that_keeps_killing_its_worker_is_failed_and_the_queue_moves_on(tmp_path,
                                                                           phantoms,
                                                                           database):
    config = _config(tmp_path, database, workers=1, worker_max_attempts=2)
    stop = threading.Event()
    with Store(config.database_target) as store:
        victim = _queue(store, tmp_path, phantoms[0])
        after = _queue(store, tmp_path, phantoms[1])
        pool = WorkerPool(config, stop).start()
        try:
            for attempt in (1, 2):
                # The job is claimed by a (new) worker: kill that worker mid-analysis.
                wait_for(lambda a=attempt: store.job_state(victim)["state"] == "running"
                         and store.job_state(victim)["attempts"] == a, 60, "the claim")
                worker_pid = int(store.job_state(victim)["claimed_by"].rsplit("-", 1)[1])
                os.kill(worker_pid, signal.SIGKILL)
            wait_for(lambda: _state(store, after) == "done", 120, "the next job")
        finally:
            pool.stop()
        job = store.job_state(victim)
    assert job["state"] == "failed" and job["attempts"] == 2
    assert job["error"] == "worker died (signal SIGKILL) while analysing"


@pytest.mark.slow
def test_job_that_hangs_is_killed_after_the_timeout(tmp_path, phantoms):
    config = _config(tmp_path, workers=1, worker_max_attempts=1)
    stop = threading.Event()
    with Store(config.database_target) as store:
        job_id = _queue(store, tmp_path, phantoms[0])
        # Loading and analysing a radiograph takes far longer than 0.05 s (the supervisor
        # then checks every 0.05 s), so this stands in for an analysis that never ends.
        pool = WorkerPool(config, stop, job_timeout_s=0.05).start()
        try:
            wait_for(lambda: _state(store, job_id) == "failed", 60, "the timeout")
        finally:
            pool.stop()
        job = store.job_state(job_id)
    assert "without finishing" in job["error"]


@pytest.mark.slow
def test_graceful_stop_lets_the_running_analysis_finish(tmp_path, phantoms):
    config = _config(tmp_path, workers=1)
    stop = threading.Event()
    with Store(config.database_target) as store:
        job_id = _queue(store, tmp_path, phantoms[0])
        later = _queue(store, tmp_path, phantoms[1])
        pool = WorkerPool(config, stop).start()
        wait_for(lambda: _state(store, job_id) == "running", 60, "the claim", interval_s=0.02)
        # A service manager signals every process of the node; the node sets the event.
        (worker_pid,) = pool.pids
        os.kill(worker_pid, signal.SIGTERM)
        os.kill(worker_pid, signal.SIGINT)
        stop.set()
        pool.join(timeout=120)
        assert _state(store, job_id) == "done"
        assert _state(store, later) == "queued"  # not started after the stop
        assert pool.pids == []


def test_file_system_error_hands_the_job_back_a_bounded_number_of_times(tmp_path, phantoms):
    config = _config(tmp_path, worker_max_attempts=2)
    with Store(config.database_target) as store:
        job_id = _queue(store, tmp_path, phantoms[0])
        config.objects_path.write_bytes(b"")  # a file where the objects folder should be
        assert run_job(config, store, store.claim_job("test")) == "queued"
        assert store.job_state(job_id)["error"].startswith("cannot read or write files:")
        assert run_job(config, store, store.claim_job("test")) == "failed"
        assert store.objects_for_job(job_id) == []
