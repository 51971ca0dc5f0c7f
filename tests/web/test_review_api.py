"""Reader review through the console: accounts and roles, CSRF, the queue, a correction
re-measured on the real phantom image, approve/reject issuing final objects queued to
the PACS, and the audit trail (over the shared filled node database)."""

from __future__ import annotations

import base64
import json
import re

import pydicom
import pytest
from console_testing import DESTINATION, console_client

from dxr_node.node.review_store import ReviewStore

PASSWORD = "correct horse battery"


def _basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()}


@pytest.fixture
def review_client(node_config, store):
    accounts = ReviewStore(store)
    accounts.add_user("ann", "Reader^Ann", "reviewer", PASSWORD)
    accounts.add_user("vic", "Viewer^Vic", "viewer", PASSWORD)
    config = node_config.model_copy(update={
        "review": node_config.review.model_copy(update={"mode": "send-preliminary",
                                                        "organisation": "Test Hospital"}),
        "send_objects": ["SR", "SC", "GSPS", "PDF"]})
    return console_client(config, store, client_host="10.1.2.3")


def _texts(item) -> list[str]:
    """Every TEXT content item's value in an SR tree."""
    out = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        out += _texts(child)
    return out


def _sign_in(client, username: str) -> str:
    form = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    done = client.post("/login", data={"username": username, "password": PASSWORD,
                                       "csrf": token, "next": "/review"})
    assert done.status_code == 303 and done.headers["location"] == "/review"
    page = client.get("/review")
    assert page.status_code == 200
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def test_pages_ask_remote_readers_to_sign_in_and_wrong_passwords_fail(review_client, filled):
    first = review_client.get("/exams")
    assert first.status_code == 303 and first.headers["location"].startswith("/login?next=")
    assert review_client.get("/api/exams").status_code == 401
    form = review_client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    wrong = review_client.post("/login", data={"username": "ann", "password": "nope",
                                               "csrf": token})
    assert wrong.status_code == 401 and "Wrong username or password" in wrong.text
    stale = review_client.post("/login", data={"username": "ann", "password": PASSWORD,
                                               "csrf": "forged"})
    assert stale.status_code == 403


def test_viewer_cannot_review_and_forms_need_the_csrf_token(review_client, filled, store):
    job = filled.job_ids[-1]
    assert review_client.get(f"/api/exams/{job}/review", headers=_basic("vic")).status_code == 200
    denied = review_client.post(f"/api/exams/{job}/approve", headers=_basic("vic"))
    assert denied.status_code == 403
    csrf = _sign_in(review_client, "ann")
    no_token = review_client.post(f"/api/exams/{job}/approve")
    assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
    assert ReviewStore(store).actions(job) == []  # nothing happened
    exclude = review_client.post(f"/review/{job}/exclude", data={"csrf": csrf, "bone": "MC4"})
    assert exclude.status_code == 303
    assert [a["action"] for a in ReviewStore(store).actions(job)] == ["exclude"]
    partial = review_client.get(f"/api/exams/{job}/review").json()
    assert partial["analysis"]["status"] == "rejected"
    assert partial["interpretation"]["billing_modifier"] == "52"
    overview = review_client.get("/")
    assert "Awaiting review" in overview.text
    out = review_client.post("/logout", data={"csrf": csrf})
    assert out.status_code == 303 and review_client.get("/exams").status_code == 303

    _sign_in(review_client, "vic")  # a viewer signs in and out again
    assert review_client.post("/logout", data={"csrf": _sign_in(review_client, "vic")}
                              ).status_code == 303


def test_correct_then_approve_issues_verified_final_objects(review_client, filled, store):
    job = filled.job_ids[-1]
    queue = review_client.get("/api/review/queue", headers=_basic("ann")).json()
    assert job in [e["job_id"] for e in queue["exams"]] and queue["counts"]["awaiting"] == 3
    before = review_client.get(f"/api/exams/{job}/review", headers=_basic("ann")).json()
    mc3 = before["analysis"]["bones"]["MC3"]
    corrected = review_client.post(f"/api/exams/{job}/correct", headers=_basic("ann"), json={
        "bone": "MC3", "proximal_rc": mc3["proximal_rc"], "distal_rc": mc3["distal_rc"]})
    assert corrected.status_code == 200, corrected.text
    result = corrected.json()
    new = result["analysis"]["bones"]["MC3"]
    assert new["reader_positioned"] is True and result["analysis"]["status"] == "ok"
    assert new["cortical_thickness_mm"] == pytest.approx(mc3["cortical_thickness_mm"], abs=0.02)
    assert result["remeasure_seconds"] > 0  # timing is measured by scripts/bench_remeasure
    assert result["interpretation"]["t_score"] is not None

    preliminary = {o["kind"]: o for o in store.exam(job)["objects"]}
    approved = review_client.post(f"/api/exams/{job}/approve", headers=_basic("ann"))
    assert approved.status_code == 200, approved.text
    kinds = sorted(o["kind"] for o in approved.json()["objects"])
    assert kinds == ["GSPS", "PDF", "SC", "SR"]
    again = review_client.post(f"/api/exams/{job}/approve", headers=_basic("ann"))
    assert again.status_code == 409  # final is final

    exam = store.exam(job)
    finals = [o for o in exam["objects"] if o["sop_instance_uid"]
              not in {p["sop_instance_uid"] for p in preliminary.values()}]
    assert len(finals) == 4
    pending = [d for d in exam["dispatches"] if d["destination"] == DESTINATION
               and d["sop_instance_uid"] in {o["sop_instance_uid"] for o in finals}]
    assert len(pending) == 4 and {d["state"] for d in pending} == {"pending"}
    sr = pydicom.dcmread(next(o["path"] for o in finals if o["kind"] == "SR"))
    assert sr.VerificationFlag == "VERIFIED" and sr.PreliminaryFlag == "FINAL"
    assert sr.CompletionFlag == "COMPLETE"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Reader^Ann"
    assert sr.VerifyingObserverSequence[0].VerifyingOrganization == "Test Hospital"
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        preliminary["SR"]["sop_instance_uid"]

    trail = review_client.get(f"/api/exams/{job}/review", headers=_basic("ann")).json()
    assert trail["state"] == "approved" and trail["finished_by"] == "ann"
    correct, approve = trail["actions"]
    assert correct["action"] == "correct" and correct["bone"] == "MC3"
    assert correct["username"] == "ann" and correct["at"] > 0
    assert correct["before"]["bones"]["MC3"]["reader_positioned"] is False
    assert correct["after"]["bones"]["MC3"]["reader_positioned"] is True
    assert approve["action"] == "approve" and len(approve["objects"]) == 4
    page = review_client.get(f"/exams/{job}", headers=_basic("ann"))
    assert "Reader Ann" in page.text and page.text.count(">final</span>") == 4
    assert "MC3 <span class=\"muted\">(reader)</span>" in page.text
    metrics = review_client.get("/metrics", headers=_basic("ann")).text
    assert 'dxr_review_queue{state="approved"} 1' in metrics
    assert 'dxr_review_actions_total{action="correct"} 1' in metrics


def test_reject_issues_a_final_sr_saying_no_result(review_client, filled, store):
    job = filled.job_ids[0]
    rejected = review_client.post(f"/api/exams/{job}/reject", headers=_basic("ann"),
                                  json={"reason": "positioning", "text": "fingers flexed"})
    assert rejected.status_code == 200, rejected.text
    assert sorted(o["kind"] for o in rejected.json()["objects"]) == ["PDF", "SR"]
    path = next(o["path"] for o in store.exam(job)["objects"]
                if o["sop_instance_uid"] == rejected.json()["objects"][0]["sop_instance_uid"])
    sr = pydicom.dcmread(path)
    assert sr.VerificationFlag == "VERIFIED"
    text = " | ".join(_texts(sr))
    assert "No DXR result was issued: hand positioning unsuitable" in text
    assert "Modifier 53" in text
    assert store.priors(filled.patient_id, None, "x")  # the other two remain priors
    assert all(p.sop_instance_uid != store.exam(job)["sop_instance_uid"]
               for p in store.priors(filled.patient_id, None, "x"))


def test_a_bad_placement_is_refused_with_the_qc_reason(review_client, filled, store):
    job = filled.job_ids[-1]
    response = review_client.post(f"/api/exams/{job}/correct", headers=_basic("ann"), json={
        "bone": "MC2", "proximal_rc": [5, 5], "distal_rc": [5, 300]})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("MC2:")
    assert ReviewStore(store).actions(job) == []


def test_review_routes_are_in_the_openapi_description(review_client):
    paths = review_client.get("/openapi.json", headers=_basic("ann")).json()["paths"]
    for action in ("approve", "correct", "reject", "exclude"):
        assert f"/api/exams/{{job_id}}/{action}" in paths
    assert "Correction" in json.dumps(paths["/api/exams/{job_id}/correct"])


def test_local_console_without_accounts_still_works(node_config, store, filled):
    client = console_client(node_config, store)
    assert client.get("/exams").status_code == 200
    denied = client.post(f"/api/exams/{filled.job_ids[-1]}/approve")
    assert denied.status_code == 403 and "reviewer account" in denied.json()["detail"]


def test_hold_until_verified_queues_nothing_until_approval(node_config, store, filled):
    from dxr_node.node.store import InstanceInfo
    from dxr_node.node.worker import run_job

    config = node_config.model_copy(update={
        "review": node_config.review.model_copy(update={"mode": "hold-until-verified"}),
        "send_objects": ["SR", "SC", "GSPS", "PDF"]})
    # The newest exam's image received again as a new instance.
    source = pydicom.dcmread(store._read(
        "SELECT i.path FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE j.id = ?",
        (filled.job_ids[-1],))[0][0])
    source.SOPInstanceUID = pydicom.uid.generate_uid()
    source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
    path = config.spool_path / f"{source.SOPInstanceUID}.dcm"
    source.save_as(path, enforce_file_format=True)
    added = store.add_instance(InstanceInfo(
        str(source.SOPInstanceUID), str(source.SOPClassUID),
        str(source.file_meta.TransferSyntaxUID), str(path), path.stat().st_size,
        study_instance_uid=str(source.StudyInstanceUID), patient_id=str(source.PatientID),
        study_date=str(source.StudyDate), modality=str(source.Modality)))
    assert run_job(config, store, store.claim_job("test-worker")) == "done"
    exam = store.exam(added.job_id)
    assert len(exam["objects"]) == 4 and exam["dispatches"] == []  # held

    ReviewStore(store).add_user("ann", "Reader^Ann", "reviewer", PASSWORD)
    client = console_client(config, store)
    assert client.post(f"/api/exams/{added.job_id}/approve",
                       headers=_basic("ann")).status_code == 200
    dispatches = store.exam(added.job_id)["dispatches"]
    assert sorted(d["kind"] for d in dispatches) == ["GSPS", "PDF", "SC", "SR"]
    finals = {o["sop_instance_uid"] for o in store.exam(added.job_id)["objects"][4:]}
    assert {d["sop_instance_uid"] for d in dispatches} == finals  # only the final ones
