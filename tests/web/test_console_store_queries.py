"""The Store's console queries: indexed filters, time windows, operator retries."""

from __future__ import annotations

import time

import pytest

from dxr_node.node.store import InstanceInfo, Store


def _plan(store: Store, sql: str, params: tuple = ()) -> str:
    return " | ".join(r[3] for r in store._read(f"EXPLAIN QUERY PLAN {sql}", params))


def test_exam_filters_use_indexes(store):
    if store.dialect.name != "sqlite":
        pytest.skip("SQLite's query planner (EXPLAIN QUERY PLAN)")
    joins = ("SELECT i.id FROM instances i JOIN jobs j ON j.instance_id = i.id"
             " LEFT JOIN results r ON r.job_id = j.id")
    by_patient = _plan(store, f"{joins} WHERE i.patient_id = ? ORDER BY i.id DESC", ("P",))
    assert "INDEX instances_patient" in by_patient
    by_date = _plan(store, f"{joins} WHERE i.study_date >= ? ORDER BY i.id DESC", ("2025",))
    assert "instances_study_date" in by_date or "SCAN i" in by_date  # planner's choice
    newest = _plan(store, f"{joins} ORDER BY i.id DESC LIMIT 50")
    assert "USE TEMP B-TREE" not in newest  # newest first walks the primary key
    recent = _plan(store, "SELECT COUNT(*) FROM instances WHERE received_at >= ?", (0,))
    assert "instances_received" in recent


def test_status_counts_honour_the_time_window(store, filled):
    assert store.exam_status_counts(time.time() + 60)["received"] == 0
    assert store.exam_status_counts(0)["received"] == 5


def test_open_failures_are_counted_beyond_the_listing_limit(store, filled):
    assert store.open_failure_count() == 3  # failed job, failed and waiting dispatch
    assert len(store.open_failures(limit=2)) == 2


def test_retry_only_what_failed_or_waits(store, filled):
    sent = next(d for d in store.exam_dispatches(filled.job_ids[0]) if d["state"] == "sent")
    assert store.retry_dispatch(sent["id"]) is False
    assert store.retry_dispatch(filled.waiting_dispatch) is True
    (row,) = [d for d in store.exam_dispatches(filled.job_ids[-1])
              if d["id"] == filled.waiting_dispatch]
    assert row["error"] is None and row["next_attempt_at"] <= time.time()
    assert store.retry_job(filled.job_ids[0]) is False  # done, not failed
    assert store.retry_job(filled.failed_job) is True
    assert store.retry_dispatch(987654) is False


def test_an_exam_without_result_is_waiting(store):
    added = store.add_instance(InstanceInfo(
        "1.2.826.0.1.3680043.99.7", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1",
        "/spool/x.dcm", 10, patient_id="PX", study_date="20260105", modality="DX"))
    rows, total = store.exams(status="waiting")
    assert total == 1 and rows[0]["job_id"] == added.job_id
    assert rows[0]["dxr_bmd_g_cm2"] is None and rows[0]["reasons"] == []
    assert store.exam(added.job_id)["analysis"] is None
