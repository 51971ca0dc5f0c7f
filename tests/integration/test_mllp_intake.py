"""The order listener against real MLLP clients on loopback: ACK codes with reasons,
bounded frames, garbage NAKed or closed, and the listener keeps serving."""

from __future__ import annotations

import socket

import hl7
import pytest
from hl7.client import MLLPClient
from hl7_messages import order_message

from dxr_node.integration.config import HL7Config
from dxr_node.integration.intake import start_listener
from dxr_node.integration.mllp import FrameReader, frame
from dxr_node.node.integration_store import IntegrationStore
from dxr_node.node.store import Store


@pytest.fixture
def intake(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    istore = IntegrationStore(store)
    listener = start_listener(HL7Config(enabled=True, port=0, max_message_bytes=4096,
                                        idle_timeout_s=5), istore)
    try:
        yield listener.address[1], istore
    finally:
        listener.stop()
        store.close()


def _ack(reply: bytes) -> hl7.Message:
    return hl7.parse(reply.decode().strip("\x0b\x1c\r"))


def _send(port: int, message: str) -> hl7.Message:
    with MLLPClient("127.0.0.1", port) as client:
        return _ack(client.send_message(message.encode()))


def _raw_exchange(port: int, data: bytes) -> bytes | None:
    """Send raw bytes; the reply frame's payload, or None if the node just closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            return FrameReader(sock, 1 << 20).read()
        except (ConnectionResetError, BrokenPipeError):  # closed before or while we sent
            return None


def test_order_is_acknowledged_and_stored(intake):
    port, istore = intake
    ack = _send(port, order_message())
    assert str(ack.segment("MSA")[1]) == "AA" and str(ack.segment("MSA")[2]) == "ORM0001"
    (order,) = istore.orders()
    assert order["placer_order_number"] == "PL123" and order["accession_number"] == "ACC789"
    assert order["patient_id"] == "12345" and order["issuer_of_patient_id"] == "HOSP"
    assert order["diagnoses"] == [["Z13.820", "Encounter for screening for osteoporosis", "I10"]]
    assert order["ordering_provider"]["id"] == "1234567890"
    assert order["priority"] == "R" and order["requested_date"] == "20240115"
    assert order["status"] == "open"


def test_omi_o23_and_many_messages_on_one_connection(intake):
    port, istore = intake
    with MLLPClient("127.0.0.1", port) as client:
        for n in range(3):
            reply = _ack(client.send_message(order_message(
                kind="OMI", control_id=f"OMI{n}", placer=f"P{n}", accession=f"A{n}").encode()))
            assert str(reply.segment("MSA")[1]) == "AA"
            assert str(reply.segment("MSA")[2]) == f"OMI{n}"
    assert {o["accession_number"] for o in istore.orders()} == {"A0", "A1", "A2"}


def test_lf_segment_separators_are_accepted(intake):
    port, istore = intake
    ack = _send(port, order_message(control_id="LF1").replace("\r", "\r\n") + "\r\n")
    assert str(ack.segment("MSA")[1]) == "AA"
    assert istore.orders()[0]["diagnoses"][0][0] == "Z13.820"


def test_content_errors_get_ae_with_the_reason_and_are_kept(intake):
    port, istore = intake
    ack = _send(port, order_message(diagnoses=("810.0^not a code^I10",)))
    assert str(ack.segment("MSA")[1]) == "AE"
    assert "ICD-10-CM" in str(ack.segment("ERR")[8])
    assert str(ack.segment("ERR")[3][0][0]) == "102"
    cancel = _send(port, order_message(control="CA", placer="UNKNOWN", control_id="C1"))
    assert str(cancel.segment("MSA")[1]) == "AE"
    kept = [m for m in istore.inbound() if m["ack_code"] == "AE"]
    assert len(kept) == 2 and all(m["kept"] for m in kept)
    assert istore.orders() == []


def test_other_message_types_get_ar(intake):
    port, _ = intake
    oru = order_message().replace("ORM^O01^ORM_O01", "ORU^R01^ORU_R01")
    ack = _send(port, oru)
    assert str(ack.segment("MSA")[1]) == "AR"
    assert "unsupported message type ORU^R01" in ack.unescape(str(ack.segment("MSA")[3]))


def test_garbage_is_rejected_and_the_listener_keeps_serving(intake):
    port, istore = intake
    # Bytes outside any frame: AR, then the connection is closed.
    reply = _raw_exchange(port, b"GET / HTTP/1.0\r\n\r\n")
    assert reply is None or b"MSA|AR" in reply
    # A frame that is not HL7: AR with the reason, kept for inspection.
    reply = _raw_exchange(port, frame("hello, this is not HL7"))
    assert reply is not None and b"MSA|AR" in reply and b"MSH segment" in reply
    # A frame over max_message_bytes: AR, closed.
    reply = _raw_exchange(port, b"\x0bMSH|" + b"x" * 10_000 + b"\x1c\r")
    assert reply is None or b"exceeds the limit" in reply
    # Binary noise and a connection dropped mid-frame.
    _raw_exchange(port, bytes(range(256)) * 4)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x0bMSH|^~\\&|half")
    # Still serving.
    assert str(_send(port, order_message()).segment("MSA")[1]) == "AA"
    kept = istore.inbound()
    assert any(m["ack_code"] == "AR" and "not start with an MSH" in m["reason"] for m in kept)


def test_matching_by_accession_then_patient_and_date(intake):
    port, istore = intake
    _send(port, order_message(accession="ACC1", placer="P1", control_id="M1",
                              date="20240110"))
    found = istore.find_order(accession_number="ACC1", patient_id=None, issuer=None,
                              study_date=None)
    assert found is not None and found.placer_order_number == "P1"
    by_patient = istore.find_order(accession_number="OTHER", patient_id="12345",
                                   issuer="HOSP", study_date="20240110")
    assert by_patient is not None and by_patient.placer_order_number == "P1"
    assert istore.find_order(accession_number=None, patient_id="12345", issuer="HOSP",
                             study_date="20240112") is None  # another day
    assert istore.find_order(accession_number=None, patient_id="12345", issuer="HOSP",
                             study_date="20240112", window_days=3) is not None
    assert istore.find_order(accession_number=None, patient_id="12345", issuer="OTHER",
                             study_date="20240110") is None


def test_connections_beyond_the_cap_are_closed_and_idle_ones_time_out(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    listener = start_listener(HL7Config(enabled=True, port=0, max_connections=1,
                                        idle_timeout_s=1), IntegrationStore(store))
    port = listener.address[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as first:
            first.sendall(frame(order_message(control_id="K1")))
            assert b"MSA|AA|K1" in FrameReader(first, 1 << 20).read()
            # The only slot is taken: a second connection is closed without an answer.
            assert _raw_exchange(port, frame(order_message(control_id="K2"))) is None
            # The idle first connection is closed by the node after idle_timeout_s.
            first.settimeout(10)
            assert first.recv(1) == b""
        assert str(_send(port, order_message(control_id="K3")).segment("MSA")[1]) == "AA"
    finally:
        listener.stop()
        store.close()
