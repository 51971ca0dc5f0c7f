"""The store on both backends (SQLite, PostgreSQL): queue states, atomic claims,
recovery, priors, reporting."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time

import pytest

from dxr_node.node.store import (
    InstanceInfo,
    ProducedObject,
    Store,
    StoreError,
)


def _info(uid: str, patient: str = "P1", issuer: str | None = "HOSP", date: str = "20240101"):
    return InstanceInfo(
        sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"/spool/{uid}.dcm", size_bytes=10,
        patient_id=patient, issuer_of_patient_id=issuer, study_date=date, modality="DX",
        calling_aet="MODALITY", source_ip="127.0.0.1",
    )


def _objects(uid: str) -> list[ProducedObject]:
    return [
        ProducedObject("SR", "1.2.840.10008.5.1.4.1.1.88.33", f"{uid}.1", f"/o/{uid}.1.dcm"),
        ProducedObject("GSPS", "1.2.840.10008.5.1.4.1.1.11.1", f"{uid}.2", f"/o/{uid}.2.dcm"),
    ]


@pytest.fixture
def store(database):
    with Store(database) as s:
        yield s


def test_new_database_uses_wal_and_full_sync(tmp_path):
    Store(tmp_path / "db.sqlite").close()
    db = sqlite3.connect(tmp_path / "db.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"instances", "jobs", "results", "objects", "dispatches"} <= tables


def test_duplicate_sop_instance_is_queued_once(store):
    first = store.add_instance(_info("1.1"))
    again = store.add_instance(_info("1.1"))
    assert not first.duplicate and again.duplicate
    assert again.job_id == first.job_id and again.path == first.path
    assert store.counts()["jobs"]["queued"] == 1
    assert store.instance_count() == 1


def test_skipped_instance_keeps_its_reason_and_is_never_claimed(store):
    store.add_instance(_info("2.1"), skip_reason="not a hand radiograph: modality CT")
    assert store.claim_job("w1") is None
    assert store.counts()["jobs"]["skipped"] == 1
    assert store.skipped()[0]["reason"] == "not a hand radiograph: modality CT"


def test_claim_finish_and_dispatch_lifecycle(store):
    store.add_instance(_info("3.1"))
    job = store.claim_job("w1")
    assert job is not None and job.sop_instance_uid == "3.1" and job.attempts == 1
    assert store.claim_job("w2") is None  # already running
    store.finish_job(job.id, status="ok", analysis={"dxr_bmd_g_cm2": 0.55},
                     interpretation={"t_score": -1.0}, objects=_objects("3.1"),
                     destinations=["PACS", "ARCHIVE"])
    counts = store.counts()
    assert counts["jobs"]["done"] == 1 and counts["dispatches"]["pending"] == 4

    sent = []
    for d in store.claim_dispatches("PACS", 10) + store.claim_dispatches("ARCHIVE", 10):
        assert d.path.startswith("/o/")
        if d.destination == "ARCHIVE" and d.kind == "GSPS":
            store.dispatch_failed(d.id, "0xC000 rejected", status=0xC000)
        else:
            store.dispatch_sent(d.id, 0)
            sent.append((d.destination, d.kind))
    assert len(sent) == 3
    assert store.counts()["dispatches"] == {"pending": 0, "sending": 0, "sent": 3, "failed": 1}
    (failure,) = store.open_failures()
    assert failure["what"] == "dispatch" and failure["reason"] == "0xC000 rejected"
    assert store.retry_all_failures() == {"dispatches": 1, "jobs": 0}
    assert [d.kind for d in store.claim_dispatches("ARCHIVE", 10)] == ["GSPS"]
    result = store.recent_results()[0]
    assert result["dxr_bmd_g_cm2"] == 0.55 and result["t_score"] == -1.0
    assert result["objects"] == 2


def test_rerun_with_same_uids_makes_no_second_object(store):
    store.add_instance(_info("4.1"))
    job = store.claim_job("w1")
    for _ in range(2):  # e.g. the result was recorded again after a retry
        store.finish_job(job.id, status="ok", analysis={}, interpretation=None,
                         objects=_objects("4.1"), destinations=["PACS"])
    assert len(store.objects_for_job(job.id)) == 2
    assert store.counts()["dispatches"]["pending"] == 2


def test_rerun_makes_a_rewritten_object_new_again_for_retention(store):
    store.add_instance(_info("4.2"))
    job = store.claim_job("w1")
    store.finish_job(job.id, status="ok", analysis={}, interpretation=None,
                     objects=_objects("4.2"), destinations=[])
    first = store._read("SELECT created_at FROM objects ORDER BY id")
    time.sleep(0.01)
    store.finish_job(job.id, status="ok", analysis={}, interpretation=None,
                     objects=_objects("4.2"), destinations=[])
    again = store._read("SELECT created_at FROM objects ORDER BY id")
    assert all(b["created_at"] > a["created_at"] for a, b in zip(first, again, strict=True))


def test_transient_dispatch_waits_until_due(store):
    store.add_instance(_info("5.1"))
    job = store.claim_job("w")
    store.finish_job(job.id, status="ok", analysis={}, interpretation=None,
                     objects=_objects("5.1")[:1], destinations=["PACS"])
    (d,) = store.claim_dispatches("PACS", 10, now=1e12)
    store.dispatch_retry_later(d.id, "association refused", next_attempt_at=2e12)
    assert store.claim_dispatches("PACS", 10, now=1.5e12) == []
    (again,) = store.claim_dispatches("PACS", 10, now=2e12)
    assert again.id == d.id and again.attempts == 2


def test_interrupted_work_is_recovered_and_bounded(store):
    for uid in ("6.1", "6.2"):
        store.add_instance(_info(uid))
    job = store.claim_job("w")
    assert store.running_jobs_claimed_by("w") == [job.id]
    assert store.running_jobs_claimed_by("other") == []
    assert store.recover_interrupted(max_attempts=2) == 1
    job = store.claim_job("w")  # attempt 2
    assert job.attempts == 2
    assert store.release_job(job.id, "worker died (signal 9)", max_attempts=2) == "failed"
    state = store.job_state(job.id)
    assert state["state"] == "failed" and "signal 9" in state["error"]
    other = store.claim_job("w")
    assert other.sop_instance_uid == "6.2"
    assert store.release_job(other.id, "worker died", max_attempts=2) == "queued"
    assert store.retry_all_failures(jobs=False) == {"dispatches": 0, "jobs": 0}
    assert store.retry_all_failures() == {"dispatches": 0, "jobs": 1}


def test_priors_match_patient_and_issuer_and_exclude_same_instance(store):
    for uid, patient, issuer, date, bmd in [
        ("7.1", "P1", "HOSP", "20200101", 0.60),
        ("7.2", "P1", "HOSP", "20220101", 0.57),
        ("7.3", "P1", "OTHER", "20210101", 0.40),
        ("7.4", "P2", "HOSP", "20210101", 0.50),
        ("7.5", "P3", None, "20210101", 0.52),
    ]:
        store.add_instance(_info(uid, patient, issuer, date))
        job = store.claim_job("w")
        store.finish_job(job.id, status="ok", analysis={"dxr_bmd_g_cm2": bmd},
                         interpretation=None, objects=[], destinations=[])
    priors = store.priors("P1", "HOSP", exclude_sop_instance_uid="7.2")
    assert [p.sop_instance_uid for p in priors] == ["7.1"]
    assert priors[0].study_date == "20200101" and priors[0].dxr_bmd_g_cm2 == 0.60
    assert [p.sop_instance_uid for p in store.priors("P1", "HOSP", "9.9")] == ["7.1", "7.2"]
    assert [p.sop_instance_uid for p in store.priors("P3", None, "9.9")] == ["7.5"]


def test_rejected_result_is_not_a_prior(store):
    store.add_instance(_info("8.1"))
    job = store.claim_job("w")
    store.finish_job(job.id, status="rejected", analysis={"dxr_bmd_g_cm2": None},
                     interpretation=None, objects=[], destinations=[])
    assert store.priors("P1", "HOSP", "x") == []


def test_retention_lists_only_finished_instances(store):
    store.add_instance(_info("9.1"))
    store.add_instance(_info("9.2"), skip_reason="not analysable")
    files = store.spool_files_to_delete(older_than=1e12)
    assert [p for _, p in files] == ["/spool/9.2.dcm"]  # 9.1 is still queued
    store.mark_spool_deleted(files[0][0])
    assert store.spool_files_to_delete(older_than=1e12) == []


def _claim_all(path: str, out) -> None:
    with Store(path) as s:
        while (job := s.claim_job("proc")) is not None:
            out.put(job.id)


def test_claims_from_several_processes_never_overlap(database):
    path = database
    with Store(path) as s:
        for i in range(60):
            s.add_instance(_info(f"10.{i}"))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    claimed = [queue.get(timeout=60) for _ in range(60)]
    for p in procs:
        p.join(timeout=60)
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 60


def test_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable dxr-node database"):
        Store(bad)


def test_service_purges_only_finished_images_past_retention(tmp_path):
    from dxr_node.node.config import load_config
    from dxr_node.node.service import purge_spool

    config = load_config(environ={}, overrides={"data_dir": str(tmp_path), "retention_days": 1})
    with Store(config.database_path) as store:
        paths = {}
        for uid in ("11.1", "11.2"):
            path = tmp_path / "spool" / f"{uid}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"dicom")
            paths[uid] = path
            store.add_instance(InstanceInfo(uid, "1.2", "1.2.840.10008.1.2.1", str(path), 5))
        job = store.claim_job("w")  # 11.1 analysed, 11.2 still queued
        store.fail_job(job.id, "unreadable")
        assert purge_spool(config, store) == 0  # nothing is a day old yet
        assert purge_spool(config, store, now=time.time() + 2 * 86400) == 1
        assert not paths["11.1"].exists() and paths["11.2"].exists()


def test_read_only_open_neither_creates_nor_migrates(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(StoreError, match="not a dxr-node database \\(no schema version\\)"):
        Store(other, read_only=True)
    with sqlite3.connect(other) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable dxr-node database"):
        Store(junk, read_only=True)


def test_read_only_store_gives_priors_and_refuses_writes(tmp_path):
    with Store(tmp_path / "node.sqlite") as store:
        store.add_instance(_info("1.1"))
        job = store.claim_job("w")
        store.finish_job(job.id, status="ok", analysis={"dxr_bmd_g_cm2": 0.5},
                         interpretation=None, objects=[], destinations=[])
    with Store(tmp_path / "node.sqlite", read_only=True) as history:
        assert [p.dxr_bmd_g_cm2 for p in history.priors("P1", "HOSP", "9.9")] == [0.5]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            history.add_instance(_info("1.2"))
