"""C-STORE SCU: outcomes against real dcmtk peers, retry policy, the store-driven loop."""

from __future__ import annotations

import random
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from dcmtk_peers import (
    dcmqrscp_allowing,
    free_port,
    received_uids,
    require,
    storescp,
    write_small_sc,
)
from node_process import wait_for
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE

from dxr_node.node.config import Destination, DispatchPolicy, NodeConfig
from dxr_node.node.dispatch import (
    FAILED,
    RETRY,
    SENT,
    _send_one,
    backoff_delay,
    classify_status,
    deliver_due,
    fail_unconfigured,
    run_dispatcher,
    send_files,
)
from dxr_node.node.store import InstanceInfo, ProducedObject, Store


def _pacs(port: int, aet: str = "PACS") -> Destination:
    return Destination(name=aet, ae_title=aet, host="127.0.0.1", port=port)


def dispatch_round(config: NodeConfig, store: Store) -> int:
    """One dispatcher round, destinations one after the other; how many were handled."""
    handled = fail_unconfigured(config, store)
    for destination in config.destinations:
        handled += deliver_due(config, store, destination)
    return handled


@pytest.mark.parametrize(("status", "outcome"), [
    (0x0000, SENT), (0xB000, SENT), (0xB007, SENT),
    (None, RETRY), (0xA700, RETRY), (0xA7FF, RETRY), (0x0213, RETRY),
    (0xA900, FAILED), (0xC000, FAILED), (0xCFFF, FAILED), (0x0122, FAILED), (0x0124, FAILED),
])
def test_status_classification(status, outcome):
    assert classify_status(status)[0] == outcome


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    policy = DispatchPolicy(initial_backoff_s=2.0, max_backoff_s=60.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (30, 60.0)]:
        delays = [backoff_delay(policy, attempt, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered, not synchronised


def test_objects_arrive_at_storescp_as_stored(tmp_path):
    files = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    uids = [write_small_sc(f) for f in files]
    require("dcmcjpeg")
    jpeg = tmp_path / "c.dcm"
    subprocess.run(["dcmcjpeg", str(files[0]), str(jpeg)], check=True)
    # Same SOP Instance UID as a.dcm would overwrite it at the peer: give it its own.
    ds = dcmread(jpeg)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(jpeg)
    files.append(jpeg)
    uids.append(ds.SOPInstanceUID)

    with storescp(tmp_path / "pacs") as port:
        deliveries = send_files(_pacs(port), files, calling_aet="DXRNODE")
    assert [d.outcome for d in deliveries] == [SENT, SENT, SENT]
    assert [d.status for d in deliveries] == [0, 0, 0]
    assert received_uids(tmp_path / "pacs") == sorted(uids)
    arrived = dcmread(next((tmp_path / "pacs").glob(f"*{uids[2]}")))
    assert arrived.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"  # kept, not decoded


def test_peer_taking_only_implicit_vr_gets_a_converted_copy(tmp_path):
    uid = write_small_sc(tmp_path / "a.dcm")
    with storescp(tmp_path / "pacs", accept="+xi") as port:
        (delivery,) = send_files(_pacs(port), [tmp_path / "a.dcm"], calling_aet="DXRNODE")
    assert delivery.outcome == SENT
    arrived = dcmread(next((tmp_path / "pacs").glob(f"*{uid}")))
    assert arrived.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"


def test_peer_down_is_transient(tmp_path):
    write_small_sc(tmp_path / "a.dcm")
    (delivery,) = send_files(_pacs(free_port()), [tmp_path / "a.dcm"], calling_aet="DXRNODE",
                             timeout_s=5)
    assert delivery.outcome == RETRY and delivery.status is None
    assert "cannot reach" in delivery.reason


def test_unresolvable_host_name_is_transient(tmp_path):
    # In compose a restarting PACS container's name does not resolve for a while.
    write_small_sc(tmp_path / "a.dcm")
    pacs = Destination(name="PACS", ae_title="PACS", host="pacs-restarting.invalid", port=104)
    (delivery,) = send_files(pacs, [tmp_path / "a.dcm"], calling_aet="DXRNODE", timeout_s=5)
    assert delivery.outcome == RETRY and delivery.status is None
    assert "cannot associate with PACS@pacs-restarting.invalid:104" in delivery.reason


def test_association_lost_just_before_a_send_retries_that_object_only(tmp_path):
    uid = write_small_sc(tmp_path / "a.dcm")
    with storescp(tmp_path / "pacs") as port:
        ae = AE(ae_title="DXRNODE")
        ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
        assert assoc.is_established
        assoc.release()  # what a peer dropping the association leaves behind
        delivery = _send_one(assoc, tmp_path / "a.dcm", SecondaryCaptureImageStorage, uid,
                             ExplicitVRLittleEndian, "PACS@127.0.0.1")
    assert delivery.outcome == RETRY and delivery.sop_instance_uid == uid
    assert "association with PACS@127.0.0.1 lost" in delivery.reason


def test_peer_rejecting_our_calling_aet_fails_at_once(tmp_path):
    write_small_sc(tmp_path / "a.dcm")
    with dcmqrscp_allowing(tmp_path, "FRIEND") as port:
        (rejected,) = send_files(_pacs(port), [tmp_path / "a.dcm"], calling_aet="STRANGER")
        (accepted,) = send_files(_pacs(port), [tmp_path / "a.dcm"], calling_aet="FRIEND")
    assert rejected.outcome == FAILED
    assert "Rejected (Permanent)" in rejected.reason
    assert accepted.outcome == SENT


def test_refused_association_fails_at_once(tmp_path):
    write_small_sc(tmp_path / "a.dcm")
    with storescp(tmp_path / "pacs", options=["--refuse"]) as port:
        (delivery,) = send_files(_pacs(port), [tmp_path / "a.dcm"], calling_aet="DXRNODE")
    assert delivery.outcome == FAILED and "association rejected" in delivery.reason


def test_out_of_resources_status_is_transient(tmp_path):
    write_small_sc(tmp_path / "a.dcm")
    out = tmp_path / "pacs"
    with storescp(out) as port:
        out.rmdir()  # storescp cannot write the file and answers 0xA700
        (delivery,) = send_files(_pacs(port), [tmp_path / "a.dcm"], calling_aet="DXRNODE")
    assert (delivery.outcome, delivery.status) == (RETRY, 0xA700)


def test_cannot_understand_status_fails_at_once(tmp_path):
    write_small_sc(tmp_path / "bad.dcm", with_uids_in_body=False)
    uid = write_small_sc(tmp_path / "good.dcm")
    with storescp(tmp_path / "pacs") as port:
        bad, good = send_files(_pacs(port), [tmp_path / "bad.dcm", tmp_path / "good.dcm"],
                               calling_aet="DXRNODE")
    assert (bad.outcome, bad.status) == (FAILED, 0xC000)
    assert good.outcome == SENT and good.sop_instance_uid == uid  # one bad object spoils nothing


def test_abort_before_response_is_transient(tmp_path):
    write_small_sc(tmp_path / "a.dcm")
    with storescp(tmp_path / "pacs", options=["--abort-after"]) as port:
        (delivery,) = send_files(_pacs(port), [tmp_path / "a.dcm"], calling_aet="DXRNODE")
    assert delivery.outcome == RETRY and delivery.status is None


def test_unreadable_object_fails_with_reason(tmp_path):
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with storescp(tmp_path / "pacs") as port:
        missing, junk = send_files(_pacs(port), [tmp_path / "gone.dcm", tmp_path / "junk.dcm"],
                                   calling_aet="DXRNODE")
    assert missing.outcome == junk.outcome == FAILED
    assert "unreadable object" in missing.reason and "unreadable object" in junk.reason


# --- the store-driven dispatcher -----------------------------------------------------


def _queue_objects(store: Store, tmp_path: Path, n: int, destinations: list[str]) -> list[str]:
    """One finished job with n small objects, queued for ``destinations``."""
    added = store.add_instance(InstanceInfo(
        sop_instance_uid=f"2.25.{time.time_ns()}", sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1", path=str(tmp_path / "img.dcm"), size_bytes=1,
        patient_id="TEST1"))
    job = store.claim_job("test")
    assert job is not None and job.id == added.job_id
    objects = []
    for i in range(n):
        path = tmp_path / "objects" / f"{i}.dcm"
        uid = write_small_sc(path)
        objects.append(ProducedObject("SC", "1.2.840.10008.5.1.4.1.1.7", uid, str(path)))
    store.finish_job(job.id, status="ok", analysis={}, interpretation=None, objects=objects,
                     destinations=destinations)
    return [o.sop_instance_uid for o in objects]


def _config(tmp_path: Path, *destinations: Destination, **policy) -> NodeConfig:
    return NodeConfig(data_dir=tmp_path, destinations=list(destinations),
                      dispatch=DispatchPolicy(timeout_s=5, **policy))


def test_dispatcher_sends_to_every_destination_and_records_sent(tmp_path, database):
    with storescp(tmp_path / "a", aet="PACSA") as port_a, \
            storescp(tmp_path / "b", aet="PACSB") as port_b, \
            Store(database) as store:
        config = _config(tmp_path, _pacs(port_a, "PACSA"), _pacs(port_b, "PACSB"))
        uids = _queue_objects(store, tmp_path, 3, ["PACSA", "PACSB"])
        assert dispatch_round(config, store) == 6
        assert store.counts()["dispatches"]["sent"] == 6
        assert dispatch_round(config, store) == 0  # nothing is sent twice
    assert received_uids(tmp_path / "a") == received_uids(tmp_path / "b") == sorted(uids)


def test_dispatcher_retries_while_pacs_is_down_then_delivers(tmp_path):
    port = free_port()
    config = _config(tmp_path, _pacs(port), initial_backoff_s=0.2, max_backoff_s=0.4,
                     max_attempts=50)
    with Store(tmp_path / "node.sqlite") as store:
        uids = _queue_objects(store, tmp_path, 2, ["PACS"])
        stop = threading.Event()
        loop = threading.Thread(target=run_dispatcher, args=(config, store, stop))
        loop.start()
        try:
            deadline = time.monotonic() + 30
            while min(r["attempts"] for r in _dispatch_rows(store)) < 3 \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            rows = _dispatch_rows(store)
            assert all(r["state"] in ("pending", "sending") for r in rows)
            assert all("cannot reach" in r["error"] for r in rows if r["state"] == "pending")
            with storescp(tmp_path / "pacs", port=port):
                while store.counts()["dispatches"]["sent"] < 2 and time.monotonic() < deadline:
                    time.sleep(0.1)
        finally:
            stop.set()
            loop.join(timeout=30)
        assert not loop.is_alive()
        counts = store.counts()["dispatches"]
        assert counts["sent"] == 2 and counts["failed"] == 0
    assert received_uids(tmp_path / "pacs") == sorted(uids)


def _dispatch_rows(store: Store, destination: str = "%") -> list[sqlite3.Row]:
    """The dispatch rows (of one destination) as another process would see them."""
    with sqlite3.connect(store.path) as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT state, attempts, error FROM dispatches"
                          " WHERE destination LIKE ?", (destination,)).fetchall()


def test_dispatcher_gives_up_after_max_attempts_with_the_reason(tmp_path, database):
    config = _config(tmp_path, _pacs(free_port()), initial_backoff_s=0.01, max_backoff_s=0.02,
                     max_attempts=2)
    with Store(database) as store:
        _queue_objects(store, tmp_path, 1, ["PACS"])
        deadline = time.monotonic() + 20
        while store.counts()["dispatches"]["failed"] == 0 and time.monotonic() < deadline:
            dispatch_round(config, store)
            time.sleep(0.03)
        (failure,) = store.open_failures()
    assert failure["attempts"] == 2
    assert failure["reason"].startswith("gave up after 2 attempts: cannot reach PACS@")


def test_dispatcher_fails_permanent_refusal_on_first_attempt(tmp_path, database):
    with storescp(tmp_path / "pacs", options=["--refuse"]) as port, \
            Store(database) as store:
        _queue_objects(store, tmp_path, 1, ["PACS"])
        dispatch_round(_config(tmp_path, _pacs(port)), store)
        (failure,) = store.open_failures()
    assert failure["attempts"] == 1 and "Rejected (Permanent)" in failure["reason"]


def test_dispatch_to_a_destination_no_longer_configured_fails(tmp_path, database):
    with Store(database) as store:
        _queue_objects(store, tmp_path, 1, ["OLDPACS"])
        dispatch_round(_config(tmp_path), store)
        (failure,) = store.open_failures()
    assert failure["reason"] == "destination 'OLDPACS' is not configured"


@pytest.mark.slow
def test_a_hung_destination_does_not_hold_back_the_others(tmp_path):
    hung = socket.socket()  # accepts TCP connections (backlog) but never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        with storescp(tmp_path / "pacs") as port, Store(tmp_path / "node.sqlite") as store:
            config = _config(tmp_path, _pacs(port), _pacs(hung.getsockname()[1], "HUNG"))
            config = config.model_copy(update={"dispatch": DispatchPolicy(timeout_s=8)})
            uids = _queue_objects(store, tmp_path, 2, ["PACS", "HUNG"])
            stop = threading.Event()
            loop = threading.Thread(target=run_dispatcher, args=(config, store, stop))
            loop.start()
            try:
                wait_for(lambda: store.counts()["dispatches"]["sent"] == 2, 60, "PACS delivery")
                # Delivered while the hung destination's association is still waiting.
                assert {r["state"] for r in _dispatch_rows(store, "HUNG")} == {"sending"}
            finally:
                stop.set()
                loop.join(timeout=60)
            hung_rows = _dispatch_rows(store, "HUNG")
    finally:
        hung.close()
    assert received_uids(tmp_path / "pacs") == sorted(uids)
    assert {r["state"] for r in hung_rows} == {"pending"}  # timed out: retried later
    assert all("cannot reach HUNG@" in r["error"] for r in hung_rows)


def test_claim_dispatches_takes_due_rows_of_one_destination_once(tmp_path):
    with Store(tmp_path / "node.sqlite") as store:
        _queue_objects(store, tmp_path, 3, ["A", "B"])
        assert store.pending_destinations() == ["A", "B"]
        first = store.claim_dispatches("A", 2)
        rest = store.claim_dispatches("A", 10)
        assert [d.destination for d in first + rest] == ["A"] * 3
        assert len({d.id for d in first + rest}) == 3 and all(d.attempts == 1 for d in first)
        assert store.claim_dispatches("A", 10) == []
        store.dispatch_retry_later(first[0].id, "busy", time.time() + 3600)
        assert store.claim_dispatches("A", 10) == []  # not due yet
        assert store.pending_destinations() == ["A", "B"]
        assert len(store.claim_dispatches("B", 10)) == 3
