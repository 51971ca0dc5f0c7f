"""JSON API, pages, metrics and health of the console over real phantom analyses."""

from __future__ import annotations

import io
import re
import sqlite3

import numpy as np
import pydicom
import pytest
from console_testing import DESTINATION, STUDY_DATES, console_client
from PIL import Image

from dxr_node.node.store import Store


def test_overview_counts_exams_by_status_and_reports_destination_health(client, filled):
    overview = client.get("/api/overview").json()
    assert overview["last_hour"] == {"received": 5, "analysed": 3, "rejected": 1,
                                     "failed": 1, "waiting": 0}
    assert overview["last_day"] == overview["last_hour"]
    timing = overview["analysis_seconds_last_day"]
    assert timing["count"] == 3 and 0 < timing["median"] <= timing["p95"]
    assert overview["queue"] == {"analysis_queued": 0, "analysis_running": 0,
                                 "dispatch_pending": 1, "dispatch_failed": 1}
    assert overview["spool"]["files"] == 5 and overview["spool"]["bytes"] > 1_000_000
    (pacs,) = overview["destinations"]
    assert pacs["destination"] == DESTINATION and pacs["address"] == "PACS@127.0.0.1:4242"
    assert pacs["state"] == "failing" and pacs["sent"] == 7 and pacs["failed"] == 1
    assert pacs["last_success_at"] is not None
    assert "cannot reach" in pacs["last_failure_reason"]  # the latest failure


def test_exams_are_newest_first_with_results_and_reasons(client, filled):
    page = client.get("/api/exams").json()
    assert page["total"] == 5 and page["pages"] == 1
    exams = page["exams"]
    assert [e["job_id"] for e in exams] == sorted((e["job_id"] for e in exams), reverse=True)
    by_job = {e["job_id"]: e for e in exams}
    newest = by_job[filled.job_ids[-1]]
    assert newest["status"] == "analysed" and newest["patient_id"] == filled.patient_id
    assert newest["study_date"] == STUDY_DATES[-1] and newest["laterality"] in ("L", "R")
    assert 0.3 < newest["dxr_bmd_g_cm2"] < 0.9
    assert newest["t_score"] is not None and newest["category"]
    assert by_job[filled.failed_job]["status"] == "failed"
    assert "unreadable" in by_job[filled.failed_job]["reasons"][0]
    assert by_job[filled.skipped_job]["status"] == "rejected"
    assert by_job[filled.skipped_job]["reasons"] == ["not a hand radiograph: modality CT"]


def test_exams_filter_and_paginate(client, filled):
    def job_ids(**params) -> list[int]:
        response = client.get("/api/exams", params=params)
        assert response.status_code == 200, response.text
        return [e["job_id"] for e in response.json()["exams"]]

    assert sorted(job_ids(status="analysed")) == filled.job_ids
    assert job_ids(status="failed") == [filled.failed_job]
    assert sorted(job_ids(patient_id=filled.patient_id)) == filled.job_ids
    assert job_ids(patient_id="nobody") == []
    assert job_ids(date_from="2025-01-01", date_to="2025-12-31") == [filled.job_ids[1]]
    assert job_ids(date_to="20240321") == [filled.job_ids[0]]
    first, second = (client.get("/api/exams", params={"per_page": 2, "page": n}).json()
                     for n in (1, 2))
    assert first["pages"] == 3 and len(first["exams"]) == 2
    assert first["exams"][-1]["job_id"] > second["exams"][0]["job_id"]
    beyond = client.get("/exams", params={"page": 9})
    assert beyond.status_code == 200 and "No exams on this page: there are 1." in beyond.text


def test_bad_filters_get_a_clear_422(client):
    response = client.get("/api/exams", params={"date_from": "2025-13-40"})
    assert response.status_code == 422
    assert "date_from: expected a date as YYYY-MM-DD" in response.json()["detail"]
    response = client.get("/api/exams", params={"status": "lost"})
    assert response.status_code == 422 and "analysed" in response.json()["detail"]
    page = client.get("/exams", params={"date_to": "yesterday"})
    assert page.status_code == 422 and "date_to: expected a date" in page.text
    assert "<h1>Bad request</h1>" in page.text


def test_exam_detail_has_objects_dispatches_and_history(client, filled):
    exam = client.get(f"/api/exams/{filled.job_ids[-1]}").json()
    assert exam["status"] == "analysed"
    assert set(exam["analysis"]["bones"]) == {"MC2", "MC3", "MC4"}
    assert exam["interpretation"]["prior"]["date"] == STUDY_DATES[1]  # the store's priors
    assert {o["kind"] for o in exam["objects"]} == {"SR", "SC", "GSPS"}
    assert all("path" not in o for o in exam["objects"])
    states = {d["kind"]: d["state"] for d in exam["dispatches"]}
    assert states == {"SR": "sent", "SC": "failed", "GSPS": "pending"}
    assert [h["study_date"] for h in exam["history"]] == list(STUDY_DATES)
    assert client.get("/api/exams/999").status_code == 404


def test_overlay_is_the_secondary_capture_sent_to_pacs(client, store, filled):
    (sc,) = [o for o in store.objects_for_job(filled.job_ids[0]) if o.kind == "SC"]
    expected = pydicom.dcmread(sc.path).pixel_array
    response = client.get(f"/exams/{filled.job_ids[0]}/overlay.jpg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    shown = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    assert shown.shape == expected.shape  # the full secondary capture, RGB
    error = np.abs(shown.astype(float) - expected.astype(float)).mean()
    assert error < 3  # the same picture, JPEG-coded
    assert client.get(f"/exams/{filled.failed_job}/overlay.jpg").status_code == 404


def test_pages_show_the_data_an_administrator_needs(client, filled):
    overview = client.get("/").text
    assert "Overview" in overview and "PACS@127.0.0.1:4242" in overview
    assert "failing" in overview and "cannot reach" in overview
    assert '<meta http-equiv="refresh" content="30">' in overview  # stays current, no JS

    exams = client.get("/exams", params={"status": "analysed"}).text
    assert exams.count('<tr class="link">') == 3 and filled.patient_id in exams
    assert f'href="/exams/{filled.job_ids[0]}"' in exams

    detail = client.get(f"/exams/{filled.job_ids[-1]}").text
    assert f'src="/exams/{filled.job_ids[-1]}/overlay.jpg"' in detail
    assert detail.count("<circle") == 3  # the history plot: three exams of this patient
    assert f'action="/dispatches/{filled.failed_dispatch}/retry' in detail
    assert f'action="/dispatches/{filled.waiting_dispatch}/retry' in detail
    assert "calling AE not recognised" in detail and "waiting for retry" in detail
    for name in ("MC2", "MC3", "MC4"):
        assert f"<td>{name}</td>" in detail

    failures = client.get("/failures").text
    assert "Retry all" in failures and "unreadable image" in failures
    assert failures.count('<button class="small">Retry</button>') == 3
    assert client.get("/exams/12345").status_code == 404


def test_retry_one_dispatch_then_nothing_left_to_retry(client, store, filled, caplog):
    caplog.set_level("INFO", logger="dxr_node.web")
    response = client.post(f"/dispatches/{filled.failed_dispatch}/retry",
                           params={"back": f"/exams/{filled.job_ids[-1]}"})
    assert response.status_code == 303
    assert (f"event=operator_retry dispatch={filled.failed_dispatch} done=True "
            "client=127.0.0.1") in caplog.text  # the audit trail, identifiers only
    assert response.headers["location"].startswith(f"/exams/{filled.job_ids[-1]}?done=")
    (row,) = [d for d in store.exam_dispatches(filled.job_ids[-1])
              if d["id"] == filled.failed_dispatch]
    assert row["state"] == "pending" and row["attempts"] == 0
    sent = next(d for d in store.exam_dispatches(filled.job_ids[0]) if d["state"] == "sent")
    assert client.post(f"/api/dispatches/{sent['id']}/retry").status_code == 409
    # An open redirect is refused: the console only sends people to its own pages.
    other_site = client.post(f"/dispatches/{filled.failed_dispatch}/retry",
                             params={"back": "//evil.example/"})
    assert other_site.headers["location"].startswith("/failures?")


def test_retry_all_requeues_failed_jobs_and_dispatches(client, store, filled):
    assert client.post("/api/failures/retry-all").json() == {"retried_dispatches": 2,
                                                              "retried_jobs": 1}
    assert store.job_state(filled.failed_job)["state"] == "queued"
    assert store.open_failures() == []
    assert "Nothing failed" in client.get("/failures").text


def test_cross_site_posts_are_refused(client, filled):
    response = client.post(f"/api/jobs/{filled.failed_job}/retry",
                           headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    same_site = client.post(f"/api/jobs/{filled.failed_job}/retry",
                            headers={"Origin": "http://testserver"})
    assert same_site.json() == {"retried_dispatches": 0, "retried_jobs": 1}


def _metric(text: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(f"{name}{{{label_text}}}" if labels else name) + r" (\S+)$"
    (value,) = re.findall(pattern, text, flags=re.MULTILINE)
    return float(value)


def test_metrics_in_prometheus_text_format(client, filled):
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert _metric(text, "dxr_instances_received_total") == 5
    assert _metric(text, "dxr_jobs", state="done") == 3
    assert _metric(text, "dxr_jobs", state="failed") == 1
    assert _metric(text, "dxr_queue_depth", queue="dispatch") == 1
    assert _metric(text, "dxr_analysis_duration_seconds_count") == 3
    buckets = [float(v) for v in re.findall(r'^dxr_analysis_duration_seconds_bucket\{le="[^"]+"\} '
                                            r"(\S+)$", text, flags=re.MULTILINE)]
    assert buckets == sorted(buckets) and buckets[-1] == 3
    assert _metric(text, "dxr_dispatch_failures", destination=DESTINATION) == 2
    assert _metric(text, "dxr_dispatch_attempts", destination=DESTINATION) == 9
    assert "# TYPE dxr_dispatch_attempts gauge" in text  # retries reset it: not a counter
    for line in text.splitlines():  # every line is a comment or `name{labels} value`
        assert line.startswith("# ") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? \S+", line), line


def test_healthz_needs_a_listening_scp_and_a_writable_database(node_config, store):
    ready = console_client(node_config, store, listening=True).get("/healthz")
    assert ready.status_code == 200 and ready.json() == {
        "ready": True, "scp_listening": True, "database_writable": True,
        "analysis_running": True, "problem": None}
    down = console_client(node_config, store, listening=False).get("/healthz")
    assert down.status_code == 503 and down.json()["scp_listening"] is False


def test_healthz_and_pages_report_analysis_that_cannot_run(node_config, store):
    from fastapi.testclient import TestClient

    from dxr_node.web.app import create_app

    problem = "analysis worker 0 cannot record results: database or disk is full"
    client = TestClient(create_app(node_config, store, lambda: True, lambda: problem),
                        client=("127.0.0.1", 50000), base_url="http://127.0.0.1:8080")
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["analysis_running"] is False and health.json()["problem"] == problem
    page = client.get("/").text
    assert 'class="alarm" role="alert">Analysis is stopped: ' + problem in page


def test_healthz_reports_a_database_it_cannot_write(node_config):
    if node_config.database_url:
        pytest.skip("an SQLite file lock held by another process (PostgreSQL has none)")
    with Store(node_config.database_path, timeout_s=0.1) as impatient:
        client = console_client(node_config, impatient)
        other_writer = sqlite3.connect(node_config.database_path, isolation_level=None)
        other_writer.execute("BEGIN EXCLUSIVE")  # e.g. a stuck process holding the lock
        try:
            response = client.get("/healthz")
        finally:
            other_writer.execute("ROLLBACK")
            other_writer.close()
    assert response.status_code == 503 and response.json()["database_writable"] is False


def test_openapi_describes_the_json_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/overview", "/api/exams", "/api/exams/{job_id}", "/api/failures",
                 "/api/dispatches/{dispatch_id}/retry", "/metrics", "/healthz"):
        assert path in paths
    assert not any(p.startswith("/exams") for p in paths)  # pages are not API


def test_nothing_comes_from_another_site(client, filled):
    response = client.get(f"/exams/{filled.job_ids[0]}")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert not re.search(r'(src|href)="(https?:)?//', response.text)
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN
