"""Orders in, results and charges out, end to end on loopback with real peers:

a RIS (python-hl7's MLLP client) sends an ORM^O01 with Z13.820 to `dxr-node serve`, the
image arrives by dcmtk storescu, and an interface engine (hl7apy's MLLP server) receives
the ORU^R01, whose values equal the SR's, and the DFT^P03 with 0750T, the site's
modifier and Z13.820; a FHIR server receives the same values as Observations.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import hl7
import pytest
from dcmtk_peers import free_port, require
from fhir_server import fhir_server
from hl7.client import MLLPClient
from hl7_messages import order_message
from hl7_peers import hl7_receiver
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from node_process import serve, wait_for
from pydicom import dcmread

from dxr_node.node.integration_store import IntegrationStore
from dxr_node.node.store import Store

pytestmark = pytest.mark.slow
FHIR_TOKEN = "fhir-token-0123456789"


def sr_values(sr) -> dict[tuple[str, str], str]:
    """{(bone or HAND, concept code): NumericValue text} of a TID 1500 SR."""
    out: dict[tuple[str, str], str] = {}

    def walk(items, group: str) -> None:
        for item in items:
            concept = item.ConceptNameCodeSequence[0].CodeValue if \
                "ConceptNameCodeSequence" in item else ""
            if concept == "112039":  # Tracking Identifier names the group
                group = "HAND" if "whole hand" in item.TextValue else item.TextValue.split()[0]
            if item.get("ValueType") == "NUM" and "MeasuredValueSequence" in item:
                out[(group, concept)] = str(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence, group)

    walk(sr.ContentSequence, "")
    return out


def _image(tmp_path: Path) -> Path:
    from dxr_node.phantom.generate import write_phantom_set

    write_phantom_set(tmp_path / "phantom", n=1, seed=21)
    path = sorted((tmp_path / "phantom").glob("*.dcm"))[0]
    ds = dcmread(path)
    ds.PatientID, ds.IssuerOfPatientID = "12345", "HOSP"
    ds.AccessionNumber, ds.StudyDate = "ACC789", "20240115"
    del ds.PatientSex  # the order's PID-8 completes it (the T-score needs the sex)
    ds.save_as(path)
    return path


@pytest.fixture
def fhir():
    with fhir_server(FHIR_TOKEN) as server:
        yield server


def test_order_image_result_and_charge_over_mllp(tmp_path, fhir):
    require("storescu")
    if shutil.which("pdftotext") is None:
        pytest.skip("poppler-utils (pdftotext) not installed")
    image = _image(tmp_path)
    hl7_port, engine_port = free_port(), free_port()
    config = tmp_path / "node.toml"
    fhir_url, fhir_store = fhir
    config.write_text(f"""
send_objects = ["SR", "PDF"]
[hl7]
enabled = true
port = {hl7_port}
outbound_host = "127.0.0.1"
outbound_port = {engine_port}
receiving_application = "ENGINE"
charge_component = "26"
[hl7.interpreting_provider]
npi = "1234567893"
family_name = "READER"
[fhir]
enabled = true
base_url = "{fhir_url}"
token = "{FHIR_TOKEN}"
""")
    with hl7_receiver(engine_port) as engine, serve(
            tmp_path / "data", "--config", str(config), "--workers", "1",
            "--allow-aet", "MODALITY") as node:
        with MLLPClient("127.0.0.1", hl7_port) as ris:
            ack = hl7.parse(ris.send_message(order_message().encode()).decode()
                            .strip("\x0b\x1c\r"))
        assert str(ack.segment("MSA")[1]) == "AA", str(ack)
        assert str(ack.segment("MSA")[2]) == "ORM0001"

        sent = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "DXRNODE", "127.0.0.1",
                               str(node.port), str(image)], capture_output=True, text=True,
                              timeout=120)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: engine.of_type("ORU") and engine.of_type("DFT"), 240,
                 "ORU^R01 and DFT^P03 at the engine")
        wait_for(lambda: fhir_store.by_type("DiagnosticReport"), 60, "the FHIR bundle")
        wait_for(lambda: node.status()["messages"]["sent"] == 3, 30, "messages recorded sent")
        status = node.status()
        assert node.stop() == 0
        log = node.log_text()

    (oru_text,), (dft_text,) = engine.of_type("ORU"), engine.of_type("DFT")
    print("ORU^R01 as received:\n" + oru_text.replace("\r", "\n"))
    print("DFT^P03 as received:\n" + dft_text.replace("\r", "\n"))
    # Both parse with hl7apy against the v2.5.1 structures (groups found) ...
    for text, name in ((oru_text, "ORU_R01"), (dft_text, "DFT_P03")):
        parsed = parse_message(text, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
        assert parsed.name == name
    # ... and with python-hl7, which the assertions below read.
    oru, dft = hl7.parse(oru_text), hl7.parse(dft_text)

    objects = [dcmread(p) for p in (tmp_path / "data" / "objects").glob("*.dcm")]
    (sr,) = [o for o in objects if o.Modality == "SR"]
    (pdf,) = [o for o in objects if "EncapsulatedDocument" in o]
    expected = sr_values(sr)
    numeric = {}
    for obx in oru.segments("OBX"):
        if str(obx[2]) == "NM":
            numeric[(str(obx[4]), str(obx[3][0][0]))] = str(obx[5])
            assert str(obx[11]) == "F" and str(obx[3][0][2]) in ("99DXR", "DCM", "SCT")
            assert str(obx[6][0][2]) == "UCUM"
            assert str(obx[17][0][0]) == "DXR"  # the method named
    assert ("HAND", "BMD") in numeric and ("HAND", "TSC") in numeric
    assert {("MC2", "CT"), ("MC3", "CT"), ("MC4", "CT")} <= set(numeric)
    for key, value in numeric.items():
        assert expected[key] == value, (key, expected[key], value)  # the SR's own text
    obr = oru.segment("OBR")
    assert str(obr[2][0][0]) == "PL123" and str(obr[3]) == "FI456"
    assert str(obr[18]) == "ACC789" and str(obr[25]) == "F"
    assert str(obr[31][0][0]) == "Z13.820"
    assert str(oru.segment("PID")[3][0][0]) == "12345"

    ft1 = dft.segment("FT1")
    assert str(ft1[25][0][0]) == "0750T" and str(ft1[7][0][0]) == "0750T"
    assert [str(m[0]) for m in ft1[26]] == ["26"]  # full service, site bills professional
    assert str(ft1[19][0][0]) == "Z13.820"
    assert str(ft1[2]) == "ACC789" and str(ft1[4]) == "20240115"
    assert "1234567893" in str(ft1[20])

    # The indication reached the SR (Referenced Request) and the PDF.
    (request,) = sr.ReferencedRequestSequence
    assert request.ReasonForRequestedProcedureCodeSequence[0].CodeValue == "Z13.820"
    assert request.AccessionNumber == "ACC789"
    assert request.PlacerOrderNumberImagingServiceRequest == "PL123"
    pdf_path = tmp_path / "report.pdf"
    pdf_path.write_bytes(bytes(pdf.EncapsulatedDocument))
    text = subprocess.run(["pdftotext", str(pdf_path), "-"], capture_output=True, text=True,
                          timeout=60).stdout
    assert "Z13.820" in text
    # FHIR: the same values as Observations, the charge with the modifier extension.
    observed = {(o["bodySite"]["text"].split()[0].replace("hand", "HAND"),
                 o["code"]["coding"][0]["code"]): o["valueQuantity"]["value"]
                for o in fhir_store.by_type("Observation") if "valueQuantity" in o}
    assert {k: float(v) for k, v in numeric.items()} == {k: float(v) for k, v in observed.items()}
    (charge,) = fhir_store.by_type("ChargeItem")
    assert charge["reason"][0]["coding"][0]["code"] == "Z13.820"
    assert [e["valueCodeableConcept"]["coding"][0]["code"] for e in charge["extension"]] == ["26"]

    assert status["messages"] == {"pending": 0, "sending": 0, "sent": 3, "failed": 0}
    assert fhir_store.posts == 1 and len(engine.messages) == 2  # each sent once
    with Store(tmp_path / "data" / "dxr-node.sqlite") as store:
        (order,) = IntegrationStore(store).orders()
        assert order["status"] == "matched" and len(order["job_ids"]) == 1
        assert IntegrationStore(store).images_without_order() == []
    assert "event=order_received" in log and "event=order_matched" in log
    assert "DOE" not in log and "JANE" not in log  # no patient names in logs
