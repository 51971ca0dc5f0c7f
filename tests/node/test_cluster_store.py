"""Several nodes on one database (both backends): leases, heartbeats, take-over, the
fence on a job's finish, the registry, and the console's queries on each engine."""

from __future__ import annotations

import time

import pytest

from dxr_node.node.integration_store import IntegrationStore
from dxr_node.node.review_store import ReviewStore
from dxr_node.node.store import ClaimLost, InstanceInfo, ProducedObject, Store


def _info(uid: str) -> InstanceInfo:
    return InstanceInfo(uid, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1",
                        f"/spool/{uid}.dcm", 10, patient_id="P1", issuer_of_patient_id=None,
                        study_date="20240101", modality="DX")


def _finish(store: Store, job, *, attempt=None, bmd=0.5) -> None:
    store.finish_job(job.id, status="ok", analysis={"dxr_bmd_g_cm2": bmd, "reasons": ["n"]},
                     interpretation={"t_score": -1.5, "category": "osteopenia"},
                     objects=[ProducedObject("SR", "1.2.840.10008.5.1.4.1.1.88.33",
                                             f"{job.sop_instance_uid}.9", "/o/sr.dcm")],
                     destinations=["PACS"], attempt=attempt)


@pytest.fixture
def store(database):
    with Store(database) as s:
        yield s


def test_a_dead_nodes_job_is_taken_over_once_its_lease_runs_out(store):
    store.register_node("a", host="h1", version="0.1.0", pid=1, roles="scp,workers")
    store.register_node("b", host="h2", version="0.1.0", pid=2, roles="workers")
    store.add_instance(_info("1.1"))
    held = store.claim_job("a/worker-0-1", node="a", lease_s=30)
    assert store.heartbeat("a", 30) == 1
    assert store.take_over_expired(max_attempts=3) == []  # a is alive
    assert {n["name"]: n["running_jobs"] for n in store.nodes()} == {"a": 1, "b": 0}
    assert store.held_jobs()[0]["node"] == "a"

    taken = store.take_over_expired(max_attempts=3, now=time.time() + 31)
    assert taken == [{"what": "job", "id": held.id, "node": "a", "state": "queued"}]
    again = store.claim_job("b/worker-0-2", node="b", lease_s=30)
    assert again.id == held.id and again.attempts == 2
    with pytest.raises(ClaimLost):  # a comes back late: its result is refused
        _finish(store, held, attempt=held.attempts, bmd=0.9)
    with pytest.raises(ClaimLost):
        store.fail_job(held.id, "late", attempt=held.attempts)
    _finish(store, again, attempt=again.attempts)
    (result,) = store.recent_results()
    assert result["dxr_bmd_g_cm2"] == 0.5 and result["objects"] == 1
    assert store.counts()["jobs"]["done"] == 1 and store.counts()["dispatches"]["pending"] == 1


def test_a_sending_dispatch_of_a_dead_node_is_due_again(store):
    store.add_instance(_info("2.1"))
    _finish(store, store.claim_job("w"))
    (sending,) = store.claim_dispatches("PACS", 10, node="a", lease_s=30)
    assert store.claim_dispatches("PACS", 10, node="b", lease_s=30) == []
    later = time.time() + 31
    store.take_over_expired(max_attempts=3, now=later)
    (again,) = store.claim_dispatches("PACS", 10, now=later, node="b", lease_s=30)
    assert again.id == sending.id and again.attempts == 2


def test_a_restarting_node_recovers_only_its_own_work(store):
    for uid in ("3.1", "3.2"):
        store.add_instance(_info(uid))
    mine = store.claim_job("a/w", node="a", lease_s=60)
    theirs = store.claim_job("b/w", node="b", lease_s=60)
    assert store.recover_interrupted(max_attempts=3, node="a") == 1
    assert store.job_state(mine.id)["state"] == "queued"
    assert store.job_state(theirs.id)["state"] == "running"


def test_console_queries_run_on_each_engine(store):
    store.add_instance(_info("4.1"))
    job = store.claim_job("w")
    _finish(store, job)
    store.add_instance(_info("4.2"), skip_reason="not a hand")
    rows, total = store.exams()
    assert total == 2 and rows[1]["t_score"] == -1.5 and rows[1]["reasons"] == ["n"]
    assert rows[1]["category"] == "osteopenia" and rows[0]["reasons"] == ["not a hand"]
    assert store.exam(job.id)["interpretation"]["t_score"] == -1.5
    assert store.exam_status_counts(0) == {"received": 2, "analysed": 1, "rejected": 1,
                                           "failed": 0, "waiting": 0}
    (d,) = store.claim_dispatches("PACS", 10)
    store.dispatch_retry_later(d.id, "refused", time.time() + 60)
    assert store.open_failure_count() == 1 and store.open_failures()[0]["what"] == "dispatch"
    (health,) = store.destination_health()
    assert health["pending"] == 1 and health["with_error"] == 1
    counts, n, total_s = store.analysis_duration_histogram([0.5, 1e9])
    assert n == 1 and counts[-1] == 1 and total_s >= 0
    assert [r["job_id"] for r in store.patient_results("P1", None)] == [job.id]
    assert store.spool_usage()["files"] == 2 and store.received_total() == 2
    assert ReviewStore(store).counts()["awaiting"] == 1
    assert ReviewStore(store).queue()[1] == 1
    assert IntegrationStore(store).find_order(accession_number=None, patient_id="P1",
                                              issuer=None, study_date="20240101") is None
    assert IntegrationStore(store).claim("RIS", 10) == []
    assert store.retry_all_failures() == {"dispatches": 1, "jobs": 0}
    assert store.is_writable()
    # The console's rejection causes: JSON arrays read back on each engine.
    store.add_instance(_info("4.3"))
    rejected = store.claim_job("w")
    problem = {"code": "bone_identity", "bone": None, "severity": "rejection",
               "text": "bone identity uncertain: two labels on one shaft"}
    store.finish_job(rejected.id, status="rejected",
                     analysis={"problems": [problem], "reasons": [problem["text"]]},
                     interpretation={}, objects=[], destinations=[])
    assert store.rejection_counts() == {"bone_identity": 1}


def test_read_only_postgresql_store_gives_priors_and_refuses_writes(postgres_url):
    import psycopg

    with Store(postgres_url) as store:
        store.add_instance(_info("5.1"))
        _finish(store, store.claim_job("w"))
    with Store(postgres_url, read_only=True) as history:  # `analyze --history URL`
        assert [p.dxr_bmd_g_cm2 for p in history.priors("P1", None, "9.9")] == [0.5]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            history.add_instance(_info("5.2"))
        assert "***" not in history.location  # no password in this URL to hide


def test_a_database_that_cannot_be_reached_is_a_clear_error():
    from dxr_node.node.store import StoreError

    with pytest.raises(StoreError, match="cannot use database postgresql://dxr:\\*\\*\\*@"):
        Store("postgresql://dxr:secret@127.0.0.1:1/dxr", timeout_s=2)


def test_review_and_interface_writes_on_each_engine(store):
    from dxr_node.node.integration_store import OutboundMessage

    reviews = ReviewStore(store)
    user = reviews.add_user("reader1", "Dr Reader", "reviewer", "long-enough-password")
    assert reviews.authenticate("reader1", "long-enough-password").id == user.id
    token, session = reviews.open_session(user)
    assert reviews.session(token).user.username == "reader1"
    store.add_instance(_info("6.1"))
    job = store.claim_job("w")
    _finish(store, job)
    reviews.save_draft(job.id, user, "correct", analysis={"dxr_bmd_g_cm2": 0.6},
                       interpretation=None, bone="MC2", reason="edge", before={}, after={})
    reviews.finish(job.id, user, "approve", status="ok", analysis={"dxr_bmd_g_cm2": 0.6},
                   interpretation=None, bmd=0.6, reason=None, before={}, after={},
                   objects=[ProducedObject("SR", "1.2.840.10008.5.1.4.1.1.88.33", "6.1.f",
                                           "/o/f.dcm")], destinations=["PACS"])
    assert reviews.review(job.id)["state"] == "approved"
    assert [a["action"] for a in reviews.actions(job.id)] == ["correct", "approve"]
    assert store.priors("P1", None, "x")[0].dxr_bmd_g_cm2 == 0.6
    interfaces = IntegrationStore(store)
    interfaces.queue(job.id, [OutboundMessage("ORU", "F", "RIS", "C1", "MSH|...")])
    interfaces.queue(job.id, [OutboundMessage("ORU", "F", "RIS", "C1", "MSH|...")])  # once
    (claimed,) = interfaces.claim("RIS", 10)
    interfaces.sent(claimed.id, "AA")
    assert interfaces.counts()["sent"] == 1


def test_status_lists_the_nodes_of_a_cluster(store):
    from dxr_node.commands.node import collect_status, render_status

    store.register_node("dxr-1", host="h1", version="0.1.0", pid=1, roles="scp,workers")
    store.register_node("dxr-2", host="h2", version="0.1.0", pid=2, roles="workers")
    store.node_stopped("dxr-2")
    text = render_status(collect_status(store))
    assert "nodes" in text and "dxr-1" in text and "dxr-2" in text and "stopped" in text


def test_copy_db_moves_a_sqlite_node_to_postgresql_and_back(tmp_path, postgres_url, capsys):
    from dxr_node.cli import main

    sqlite = tmp_path / "node.sqlite"
    with Store(sqlite) as store:
        store.add_instance(_info("7.1"))
        _finish(store, store.claim_job("w"))
        store.add_instance(_info("7.2"))
        ReviewStore(store).add_user("admin1", "Admin", "admin", "long-enough-password")
    assert main(["copy-db", str(sqlite), postgres_url]) == 0
    assert "instances 2" in capsys.readouterr().out
    with Store(postgres_url) as cluster:
        assert cluster.counts()["jobs"] == {"queued": 1, "running": 0, "done": 1,
                                            "failed": 0, "skipped": 0}
        assert cluster.priors("P1", None, "x")[0].dxr_bmd_g_cm2 == 0.5
        assert ReviewStore(cluster).authenticate("admin1", "long-enough-password")
        # New rows continue after the copied ids.
        assert cluster.add_instance(_info("7.3")).job_id == 3
    assert main(["copy-db", str(sqlite), postgres_url]) == 2  # never over existing rows
    assert "is not empty" in capsys.readouterr().err
    back = tmp_path / "back.sqlite"
    assert main(["copy-db", postgres_url, str(back)]) == 0
    with Store(back) as store:
        assert store.instance_count() == 3 and store.recent_results()[0]["objects"] == 1
    assert main(["copy-db", str(tmp_path / "missing.sqlite"), str(back)]) == 2
