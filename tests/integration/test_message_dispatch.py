"""Results and charges through the durable message queue, against a real MLLP receiver
(hl7apy's server): receiver down then up, AE retried, AR failed until an operator retry;
every message arrives exactly once."""

from __future__ import annotations

import threading
import time

import pytest
from dcmtk_peers import free_port
from hl7_peers import Received, hl7_receiver

from dxr_node.integration.outbound import HL7_DESTINATION, run_message_dispatcher
from dxr_node.node.config import load_config
from dxr_node.node.integration_store import IntegrationStore, OutboundMessage
from dxr_node.node.store import InstanceInfo, Store


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _message(kind: str, control_id: str) -> OutboundMessage:
    structure = {"ORU": "ORU^R01^ORU_R01", "DFT": "DFT^P03^DFT_P03"}[kind]
    text = (f"MSH|^~\\&|DXRNODE||ENGINE||20240115120000||{structure}|{control_id}|P|2.5.1\r"
            "PID|1||12345^^^HOSP^MR")
    return OutboundMessage(kind, "F", HL7_DESTINATION, control_id, text)


@pytest.fixture
def node(tmp_path, database):
    """A store (each backend in turn) with one analysed job and the dispatcher running
    for an engine port."""
    port = free_port()
    config = load_config(environ={}, overrides={
        "data_dir": str(tmp_path), "database": str(database),
        "hl7": {"outbound_host": "127.0.0.1", "outbound_port": port, "timeout_s": 2},
        "dispatch": {"initial_backoff_s": 0.05, "max_backoff_s": 0.2, "max_attempts": 1000}})
    store = Store(config.database_target)
    job = store.add_instance(InstanceInfo("1.2.3", "1.2.840.10008.5.1.4.1.1.1.1", "1.2",
                                          str(tmp_path / "x.dcm"), 1)).job_id
    istore = IntegrationStore(store)

    def queue(*messages: OutboundMessage) -> None:
        istore.queue(job, messages)

    stop = threading.Event()
    thread = threading.Thread(target=run_message_dispatcher, args=(config, store, stop))
    thread.start()
    try:
        yield port, istore, queue, store
    finally:
        stop.set()
        thread.join(timeout=10)
        store.close()


def test_receiver_down_then_up_delivers_each_message_once(node):
    port, istore, queue, _ = node
    queue(_message("ORU", "DXR1ORUF"), _message("DFT", "DXR1DFTF"))
    queue(_message("ORU", "DXR1ORUF"))  # queued again for the same result: ignored
    _wait(lambda: all(m["attempts"] >= 3 and m["state"] == "pending"
                      for m in istore.messages()), 30, "retries while the engine is down")
    assert all("refused" in (m["error"] or "").lower() for m in istore.messages())
    with hl7_receiver(port) as engine:
        _wait(lambda: istore.counts()["sent"] == 2, 30, "delivery once the engine is up")
        time.sleep(0.5)  # would any duplicate still arrive?
    assert sorted(m.split("|")[9] for m in engine.messages) == ["DXR1DFTF", "DXR1ORUF"]
    assert all(m["error"] is None and m["last_status"] == "AA" for m in istore.messages())


def test_ae_is_retried_and_ar_fails_until_the_operator_retries(node):
    port, istore, queue, store = node
    with hl7_receiver(port, Received(answers=["AE", "AR"])) as engine:
        queue(_message("ORU", "DXR1ORUF"))
        _wait(lambda: istore.counts()["failed"] == 1, 30, "AE retried, then AR failed")
        (failed,) = istore.messages()
        assert failed["last_status"] == "AR" and "rejected" in failed["error"]
        assert failed["attempts"] == 2
        failures = store.open_failures()
        assert [(f["what"], f["kind"]) for f in failures] == [("message", "ORU")]
        assert store.open_failure_count() == 1
        assert store.retry_all_failures(jobs=False)["dispatches"] == 1  # `dxr-node retry`
        _wait(lambda: istore.counts()["sent"] == 1, 30, "delivery after the retry")
    assert [m.split("|")[9] for m in engine.messages] == ["DXR1ORUF"]
    assert store.open_failure_count() == 0



def test_a_message_left_sending_by_a_dead_node_is_sent_after_restart(tmp_path):
    port = free_port()
    config = load_config(environ={}, overrides={
        "data_dir": str(tmp_path), "hl7": {"outbound_host": "127.0.0.1", "outbound_port": port}})
    store = Store(config.database_path)
    istore = IntegrationStore(store)
    job = store.add_instance(InstanceInfo("1.2.3", "1.2.840.10008.5.1.4.1.1.1.1", "1.2",
                                          str(tmp_path / "x.dcm"), 1)).job_id
    istore.queue(job, [_message("DFT", "DXR1DFTF")])
    assert len(istore.claim(HL7_DESTINATION, 10)) == 1  # then the node died
    assert istore.claim(HL7_DESTINATION, 10) == []  # 'sending' is nobody's to take
    assert istore.recover_sending() == 1  # what the next node does at start-up
    stop = threading.Event()
    with hl7_receiver(port) as engine:
        thread = threading.Thread(target=run_message_dispatcher, args=(config, store, stop))
        thread.start()
        try:
            _wait(lambda: istore.counts()["sent"] == 1, 30, "delivery after recovery")
        finally:
            stop.set()
            thread.join(timeout=10)
    store.close()
    assert [m.split("|")[9] for m in engine.messages] == ["DXR1DFTF"]
