"""Reader review and the hospital interfaces, per ``review.mode``: what a real HL7
receiver (hl7apy's MLLP server) and a FHIR endpoint on loopback get, and when.

The worker analyses a phantom whose header has no sex (the matched ORM's PID-8 gives it,
so the T-score exists), the message dispatcher delivers, and a reader approves,
corrects or rejects through ``dxr_node.node.review`` (what the console's API calls).
Every ORU's values are compared with the final SR's text; every scenario ends with
exactly one charge, or none where the configuration says so.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hl7
import pytest
from dcmtk_peers import free_port
from fastapi.testclient import TestClient
from fhir_server import FHIRStore, fhir_server
from hl7_peers import Received, hl7_receiver
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from node_process import wait_for
from pydicom import dcmread
from test_hl7_end_to_end import sr_values

from dxr_node.integration.outbound import HL7_DESTINATION, run_message_dispatcher
from dxr_node.node import review
from dxr_node.node.config import NodeConfig, load_config
from dxr_node.node.integration_store import IntegrationStore, Order, OutboundMessage
from dxr_node.node.review_store import ReviewStore, User
from dxr_node.node.store import InstanceInfo, Store
from dxr_node.node.worker import run_job
from dxr_node.web.app import create_app

TOKEN = "fhir-token-0123456789"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from dxr_node.phantom.generate import write_phantom_set

    out = tmp_path_factory.mktemp("review-messages")
    write_phantom_set(out, n=1, seed=21)
    path = sorted(out.glob("*.dcm"))[0]
    ds = dcmread(path)
    ds.PatientID, ds.IssuerOfPatientID = "12345", "HOSP"
    ds.AccessionNumber, ds.StudyDate = "ACC789", "20240115"
    del ds.PatientSex  # the order completes it
    ds.save_as(path)
    return path


@dataclass
class Node:
    config: NodeConfig
    store: Store
    job: int
    reader: User
    engine: Received
    fhir: FHIRStore

    def analyse(self) -> None:
        assert run_job(self.config, self.store, self.store.claim_job("test")) == "done"

    def delivered(self, total: int) -> None:
        """Wait until ``total`` messages were sent and nothing is left to send."""
        istore = IntegrationStore(self.store)
        wait_for(lambda: istore.counts() == {"pending": 0, "sending": 0, "sent": total,
                                             "failed": 0}, 60, f"{total} messages sent")

    def queued(self) -> list[tuple[str, str]]:
        return sorted((m["kind"], m["result_status"])
                      for m in IntegrationStore(self.store).messages(job_id=self.job))

    def final_sr(self):
        exam = self.store.exam(self.job)
        paths = [o["path"] for o in exam["objects"] if o["kind"] == "SR"]
        return next(ds for ds in map(dcmread, paths) if ds.VerificationFlag == "VERIFIED")


@contextmanager
def running_node(tmp_path: Path, phantom: Path, mode: str, received: Received | None = None,
                 **hl7_keys) -> Iterator[Node]:
    port = free_port()
    with fhir_server(TOKEN) as (fhir_url, fhir_store), hl7_receiver(port, received) as engine:
        config = load_config(environ={}, overrides={
            "data_dir": str(tmp_path / "data"), "send_objects": ["SR"],
            "review": {"mode": mode, "organisation": "Test Hospital"},
            "hl7": {"outbound_host": "127.0.0.1", "outbound_port": port, "timeout_s": 5,
                    **hl7_keys},
            "fhir": {"enabled": True, "base_url": fhir_url, "token": TOKEN,
                     "include_pdf": False},
            "dispatch": {"initial_backoff_s": 0.05, "max_backoff_s": 0.2}})
        store = Store(config.database_path)
        IntegrationStore(store).record_order(Order(
            placer_order_number="PL123", placer_authority="RIS", accession_number="ACC789",
            patient_id="12345", issuer_of_patient_id="HOSP", sex="F",
            diagnoses=(("Z13.820", "Encounter for screening for osteoporosis", "I10"),)),
            "ORM0001", "test")
        reader = ReviewStore(store).add_user("ann", "Reader^Ann", "reviewer", "a long secret")
        spool = config.spool_path
        spool.mkdir(parents=True, exist_ok=True)
        image = Path(shutil.copy(phantom, spool / phantom.name))
        ds = dcmread(image, stop_before_pixels=True)
        job = store.add_instance(InstanceInfo(
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), path=str(image),
            size_bytes=image.stat().st_size, patient_id="12345", modality=ds.Modality,
            study_date="20240115")).job_id
        stop = threading.Event()
        dispatcher = threading.Thread(target=run_message_dispatcher,
                                      args=(config, store, stop))
        dispatcher.start()
        try:
            yield Node(config, store, job, reader, engine, fhir_store)
        finally:
            stop.set()
            dispatcher.join(timeout=20)
            store.close()


def _oru(text: str) -> hl7.Message:
    assert parse_message(text, find_groups=True,
                         validation_level=VALIDATION_LEVEL.STRICT).name == "ORU_R01"
    return hl7.parse(text)


def _status(oru: hl7.Message) -> str:
    return str(oru.segment("OBR")[25])


def _values(oru: hl7.Message) -> dict[tuple[str, str], str]:
    """{(bone or HAND, code): OBX-5} of the NM OBX, each checked to carry OBR-25."""
    out = {}
    for obx in oru.segments("OBX"):
        if str(obx[2]) == "NM":
            assert str(obx[11]) == _status(oru)
            out[(str(obx[4]), str(obx[3][0][0]))] = str(obx[5])
    return out


def _withdrawn(oru: hl7.Message) -> dict[tuple[str, str], str]:
    """{(bone or HAND, code): OBX-11} of the OBX without a value."""
    return {(str(obx[4]), str(obx[3][0][0])): str(obx[11]) for obx in oru.segments("OBX")
            if not str(obx[2])}


def _reasons(oru: hl7.Message) -> list[str]:
    return [oru.unescape(str(obx[5])) for obx in oru.segments("OBX")
            if str(obx[3][0][0]) == "REASON"]


def _modifiers(dft_text: str) -> list[str]:
    ft1 = hl7.parse(dft_text).segment("FT1")
    return [str(m[0]) for m in ft1[26]] if len(ft1) > 26 else []


def _report_statuses(fhir: FHIRStore) -> list[str]:
    return [r["status"] for r in fhir.by_type("DiagnosticReport")]


def _observations(fhir: FHIRStore) -> dict[tuple[str, str], str]:
    """{(bone or HAND, code): status} of the server's Observations (one per value)."""
    out = {}
    for observation in fhir.by_type("Observation"):
        key = tuple(observation["identifier"][0]["value"].split("-")[1:])
        assert key not in out  # updated in place, never a second resource
        out[key] = observation["status"]
        assert ("valueQuantity" in observation or "valueCodeableConcept" in observation) \
            == (observation["status"] != "cancelled")
    return out


def test_none_sends_final_at_once_and_a_correction_after_it(tmp_path, phantom):
    with running_node(tmp_path, phantom, "none") as node:
        node.analyse()
        node.delivered(3)  # ORU F, DFT F, FHIR final: as without review
        (first,), (dft,) = node.engine.of_type("ORU"), node.engine.of_type("DFT")
        assert _status(_oru(first)) == "F" and _modifiers(dft) == []
        engine_values = _values(_oru(first))
        assert ("HAND", "TSC") in engine_values  # the order's sex reached the result

        # The reader excludes MC4: a partial result, the hand values go.
        review.exclude(node.config, node.store, node.job, node.reader, "MC4")
        review.approve(node.config, node.store, node.job, node.reader)
        node.delivered(5)  # + ORU C + FHIR corrected, no second charge
        assert node.queued() == [("DFT", "F"), ("FHIR", "C"), ("FHIR", "F"), ("ORU", "C"),
                                 ("ORU", "F")]
        (dft_again,) = node.engine.of_type("DFT")
        assert dft_again == dft
        print("ORU C as received:\n" + node.engine.of_type("ORU")[1].replace("\r", "\n"))
        corrected = _oru(node.engine.of_type("ORU")[1])
        assert _status(corrected) == "C"
        values = _values(corrected)
        assert values == {k: v for k, v in sr_values(node.final_sr()).items() if k in values}
        assert {k[0] for k in values} == {"MC2", "MC3"}
        withdrawn = _withdrawn(corrected)
        assert ("MC4", "CT") in withdrawn and ("HAND", "BMD") in withdrawn
        assert set(withdrawn.values()) == {"D"}  # deleted: they were final
        # FHIR: the one report is now corrected; MC4 and the hand values cancelled.
        assert _report_statuses(node.fhir) == ["corrected"]
        assert _observations(node.fhir) == {**{k: "corrected" for k in values},
                                            **{k: "cancelled" for k in withdrawn}}
        assert len(node.fhir.by_type("ChargeItem")) == 1  # the first, not re-billed


def test_none_approval_without_change_sends_nothing_more(tmp_path, phantom):
    with running_node(tmp_path, phantom, "none") as node:
        node.analyse()
        node.delivered(3)
        review.approve(node.config, node.store, node.job, node.reader)
        assert node.queued() == [("DFT", "F"), ("FHIR", "F"), ("ORU", "F")]
        assert ReviewStore(node.store).review(node.job)["state"] == "approved"


def test_send_preliminary_then_approval_sends_final_and_the_charge(tmp_path, phantom):
    with running_node(tmp_path, phantom, "send-preliminary") as node:
        node.analyse()
        node.delivered(2)  # ORU P + FHIR preliminary, no charge
        assert node.queued() == [("FHIR", "P"), ("ORU", "P")]
        (preliminary,) = node.engine.of_type("ORU")
        assert _status(_oru(preliminary)) == "P" and not node.engine.of_type("DFT")
        assert _report_statuses(node.fhir) == ["preliminary"]
        assert not node.fhir.by_type("ChargeItem")

        # The reader re-places MC3 at its own ends: corrected bone re-measured, approved.
        mc3 = node.store.exam(node.job)["analysis"]["bones"]["MC3"]
        review.correct(node.config, node.store, node.job, node.reader, "MC3",
                       tuple(mc3["proximal_rc"]), tuple(mc3["distal_rc"]))
        review.approve(node.config, node.store, node.job, node.reader)
        node.delivered(5)
        final = _oru(node.engine.of_type("ORU")[1])
        assert _status(final) == "F"
        values = _values(final)
        expected = sr_values(node.final_sr())
        assert values == {k: v for k, v in expected.items() if k in values}
        assert {("HAND", "BMD"), ("HAND", "TSC"), ("MC3", "CT"), ("MC3", "103355008")} \
            <= set(values) and not _withdrawn(final)
        (dft,) = node.engine.of_type("DFT")
        assert _modifiers(dft) == []
        assert str(hl7.parse(dft).segment("FT1")[19][0][0]) == "Z13.820"
        assert _report_statuses(node.fhir) == ["final"]  # the preliminary, updated
        assert set(_observations(node.fhir).values()) == {"final"}
        assert len(node.fhir.by_type("ChargeItem")) == 1


def test_send_preliminary_then_rejection_says_no_result_and_bills_53(tmp_path, phantom):
    with running_node(tmp_path, phantom, "send-preliminary") as node:
        node.analyse()
        node.delivered(2)
        review.reject(node.config, node.store, node.job, node.reader, "positioning",
                      "fingers flexed")
        node.delivered(5)
        for text in node.engine.messages:
            print("as received:\n" + text.replace("\r", "\n"))
        final = _oru(node.engine.of_type("ORU")[1])
        assert _status(final) == "F" and _values(final) == {}
        assert _reasons(final)[0] == ("rejected by the reader: hand positioning unsuitable"
                                      " for DXR: fingers flexed")
        withdrawn = _withdrawn(final)  # every preliminary value: cannot be obtained
        preliminary = _oru(node.engine.of_type("ORU")[0])
        assert set(withdrawn) == {(str(obx[4]), str(obx[3][0][0]))
                                  for obx in preliminary.segments("OBX")
                                  if str(obx[2]) in ("NM", "CWE")}
        assert set(withdrawn.values()) == {"X"}
        (dft,) = node.engine.of_type("DFT")
        assert _modifiers(dft) == ["53"]
        (charge,) = node.fhir.by_type("ChargeItem")
        assert [e["valueCodeableConcept"]["coding"][0]["code"]
                for e in charge["extension"]] == ["53"]
        (report,) = node.fhir.by_type("DiagnosticReport")
        assert report["status"] == "final" and not report.get("result")
        assert "fingers flexed" in report["conclusion"]
        assert set(_observations(node.fhir).values()) == {"cancelled"}


def test_hold_sends_nothing_until_approval_then_final_partial_52(tmp_path, phantom):
    with running_node(tmp_path, phantom, "hold-until-verified") as node:
        node.analyse()
        assert node.queued() == []  # nothing until a reader decides
        assert IntegrationStore(node.store).order_for_job(node.job) is not None  # matched
        # This time through the console's API, as a reader's script would.
        console = TestClient(create_app(node.config, node.store, lambda: True),
                             client=("127.0.0.1", 50000), base_url="http://127.0.0.1")
        auth = ("ann", "a long secret")
        excluded = console.post(f"/api/exams/{node.job}/exclude", json={"bone": "MC2"},
                                auth=auth)
        assert excluded.status_code == 200, excluded.text
        assert node.queued() == []  # a draft sends nothing
        approved = console.post(f"/api/exams/{node.job}/approve", auth=auth)
        assert approved.status_code == 200, approved.text
        node.delivered(3)
        (oru_text,), (dft,) = node.engine.of_type("ORU"), node.engine.of_type("DFT")
        oru = _oru(oru_text)
        assert _status(oru) == "F" and not _withdrawn(oru)
        values = _values(oru)
        assert {k[0] for k in values} == {"MC3", "MC4"}
        assert values == {k: v for k, v in sr_values(node.final_sr()).items() if k in values}
        assert _modifiers(dft) == ["52"]  # a verified partial result
        assert _report_statuses(node.fhir) == ["final"]


def test_hold_rejection_without_charge_when_so_configured(tmp_path, phantom):
    with running_node(tmp_path, phantom, "hold-until-verified",
                      rejected_charge="none") as node:
        node.analyse()
        review.reject(node.config, node.store, node.job, node.reader, "image-quality")
        node.delivered(2)  # ORU F + FHIR final; no DFT
        assert node.queued() == [("FHIR", "F"), ("ORU", "F")]
        (oru_text,) = node.engine.of_type("ORU")
        oru = _oru(oru_text)
        assert _status(oru) == "F" and not _withdrawn(oru)  # nothing was reported before
        assert _reasons(oru)[0] == "rejected by the reader: image quality insufficient"
        assert not node.engine.of_type("DFT") and not node.fhir.by_type("ChargeItem")


def test_a_final_supersedes_a_preliminary_the_receiver_refused(tmp_path, phantom):
    with running_node(tmp_path, phantom, "send-preliminary",
                      Received(answers=["AR"])) as node:
        node.analyse()
        istore = IntegrationStore(node.store)
        wait_for(lambda: istore.counts()["failed"] == 1, 60, "the ORU P refused (AR)")
        review.approve(node.config, node.store, node.job, node.reader)
        node.delivered(4)  # FHIR P (sent before), ORU F, DFT, FHIR F; the P ORU dropped
        assert node.queued() == [("DFT", "F"), ("FHIR", "F"), ("FHIR", "P"), ("ORU", "F")]
        (oru,) = node.engine.of_type("ORU")  # never a preliminary after the final
        assert _status(_oru(oru)) == "F" and node.store.open_failure_count() == 0


def test_a_correction_waits_for_its_final(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    istore = IntegrationStore(store)
    job = store.add_instance(InstanceInfo("1.2.3", "1.2.840.10008.5.1.4.1.1.1.1", "1.2",
                                          str(tmp_path / "x.dcm"), 1)).job_id

    def message(kind: str, status: str) -> OutboundMessage:
        return OutboundMessage(kind, status, HL7_DESTINATION, f"DXR{job}{kind}{status}", "MSH")

    istore.queue(job, [message("ORU", "F"), message("DFT", "F")])
    (first, charge) = istore.claim(HL7_DESTINATION, 10)
    istore.retry_later(first.id, "receiver down", at=4e9)  # the F waits in backoff
    istore.sent(charge.id, "AA")
    istore.queue(job, [message("ORU", "C")])
    assert istore.claim(HL7_DESTINATION, 10) == []  # C does not overtake its F
    istore.retry_message(first.id)  # due again
    assert [m.control_id for m in istore.claim(HL7_DESTINATION, 10)] == [f"DXR{job}ORUF"]
    istore.sent(first.id, "AA")
    assert [m.control_id for m in istore.claim(HL7_DESTINATION, 10)] == [f"DXR{job}ORUC"]
    store.close()
