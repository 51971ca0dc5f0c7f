"""Rejections counted by cause (problem code) in the console and in /metrics."""

from __future__ import annotations

import re
import time

from dxr_node.engine.result import Problem, ProblemCode
from dxr_node.node.store import InstanceInfo, Store

IDENTITY = Problem.of(ProblemCode.IDENTITY_UNCERTAIN,
                      "bone identity uncertain: two labels on one shaft")
CUT = Problem.of(ProblemCode.BONE_CUT, "MC4 shaft cut by the field edge", "MC4")
NOT_FOUND = Problem.of(ProblemCode.BONE_NOT_FOUND, "MC2 not found", "MC2")
PAEDIATRIC = Problem.of(ProblemCode.PAEDIATRIC, "paediatric")


def _rejected(store: Store, index: int, analysis: dict) -> int:
    added = store.add_instance(InstanceInfo(
        f"1.2.826.0.1.3680043.99.5{index}", "1.2.840.10008.5.1.4.1.1.1.1",
        "1.2.840.10008.1.2.1", f"/spool/r{index}.dcm", 10, patient_id=f"PR{index}",
        study_date="20260105", modality="DX"))
    job = store.claim_job("test-worker")
    assert job is not None and job.id == added.job_id
    store.finish_job(job.id, status="rejected", analysis={"status": "rejected", **analysis},
                     interpretation=None, objects=[], destinations=[])
    return job.id


def _typed(*problems: Problem) -> dict:
    return {"reasons": [p.text for p in problems], "problems": [p.to_dict() for p in problems]}


def _three_rejections(store: Store) -> None:
    _rejected(store, 1, _typed(IDENTITY, CUT))
    _rejected(store, 2, _typed(NOT_FOUND, PAEDIATRIC, CUT))  # the same cause twice: once
    _rejected(store, 3, _typed(CUT, Problem.of(ProblemCode.BONE_CUT,
                                               "MC3 shaft cut by the field edge", "MC3")))
    # Stored before problems were typed: read from the wording of its reasons.
    _rejected(store, 4, {"reasons": ["bones too small to measure (toddler)", "paediatric"]})


def test_results_are_counted_once_per_code_by_severity(store, filled):
    _three_rejections(store)
    counts = store.problem_counts()
    assert counts["rejection"] == {"bone_cut": 3, "bone_identity": 1, "bone_not_found": 1,
                                   "toddler": 1}
    assert list(counts["rejection"])[0] == "bone_cut"  # most frequent first
    assert counts["note"] == {"paediatric": 2}
    assert store.problem_counts(since=time.time() + 60) == {"rejection": {}, "note": {}}


def test_the_overview_lists_rejections_by_cause(client, store, filled):
    _three_rejections(store)
    causes = client.get("/api/overview").json()["rejections_last_day"]
    assert causes[0] == {"code": "bone_cut",
                         "meaning": "Metacarpal shaft cut by the field edge", "results": 3}
    assert {c["code"]: c["results"] for c in causes} == {
        "bone_cut": 3, "bone_identity": 1, "bone_not_found": 1, "toddler": 1}
    page = client.get("/").text
    assert "Rejections by cause" in page
    row = re.search(r"<td>Bones too small to measure \(toddler\)</td><td class=\"mono\">"
                    r"toddler</td><td class=\"num\">(\d+)</td>", page)
    assert row and row.group(1) == "1"


def test_no_rejection_says_so(client, filled):
    assert client.get("/api/overview").json()["rejections_last_day"] == []
    assert "No result rejected in the last 24 hours." in client.get("/").text


def test_metrics_count_results_by_problem_code(client, store, filled):
    _three_rejections(store)
    text = client.get("/metrics").text
    assert "# TYPE dxr_results_by_problem gauge" in text
    found = dict(re.findall(r'^dxr_results_by_problem\{(code="[^"]+",severity="[^"]+")\} '
                            r"(\S+)$", text, flags=re.MULTILINE))
    assert found == {'code="bone_cut",severity="rejection"': "3",
                     'code="bone_identity",severity="rejection"': "1",
                     'code="bone_not_found",severity="rejection"': "1",
                     'code="toddler",severity="rejection"': "1",
                     'code="paediatric",severity="note"': "2"}
