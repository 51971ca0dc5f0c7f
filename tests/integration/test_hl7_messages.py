"""ORU^R01 and DFT^P03 as built (hl7apy), read back by hl7apy (STRICT v2.5.1
structures) and python-hl7: the embedded PDF, a rejected image, the ACK reader."""

from __future__ import annotations

import base64
from dataclasses import replace

import hl7
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from dxr_node.engine.result import Problem, ProblemCode
from dxr_node.integration.config import HL7Config
from dxr_node.integration.hl7 import build_dft, build_oru, charge_modifiers, read_ack
from dxr_node.integration.outbound import build_messages
from dxr_node.node.config import load_config


def _strict(text: str, name: str, level: int = VALIDATION_LEVEL.STRICT) -> hl7.Message:
    assert parse_message(text, find_groups=True, validation_level=level).name == name
    return hl7.parse(text)


def test_oru_embeds_the_pdf_where_configured(context):
    # hl7apy's STRICT level caps every string component at 199 characters, the PDF's
    # base64 (ED-5) included: the embedded form is checked at its TOLERANT level.
    oru = _strict(build_oru(context, HL7Config(embed_pdf=True), "C1"), "ORU_R01",
                  VALIDATION_LEVEL.TOLERANT)
    (ed,) = [obx for obx in oru.segments("OBX") if str(obx[2]) == "ED"]
    assert [str(c) for c in ed[5][0][:4]] == ["DXRNODE", "AP", "PDF", "Base64"]
    assert base64.b64decode(str(ed[5][0][4])) == context.pdf
    plain = _strict(build_oru(context, HL7Config(), "C2"), "ORU_R01")
    assert not [obx for obx in plain.segments("OBX") if str(obx[2]) == "ED"]


def test_rejected_image_reports_why_and_bills_53_or_nothing(context):
    rejected = replace(context, analysis=replace(context.analysis, status="rejected",
                                                 problems=(Problem.of(
                                                     ProblemCode.NOT_A_HAND,
                                                     "hand rotated by 40 degrees"),)))
    oru = _strict(build_oru(rejected, HL7Config(), "C3"), "ORU_R01")
    subs = {(str(obx[4]), str(obx[3][0][0])) for obx in oru.segments("OBX")}
    assert ("HAND", "BMD") not in subs and ("HAND", "REASON") in subs  # as in the SR
    reasons = [oru.unescape(str(obx[5])) for obx in oru.segments("OBX")
               if str(obx[3][0][0]) == "REASON"]
    assert "hand rotated by 40 degrees" in reasons
    modifiers = charge_modifiers(rejected, HL7Config())
    dft = _strict(build_dft(rejected, HL7Config(), "C4", modifiers), "DFT_P03")
    assert [str(m[0]) for m in dft.segment("FT1")[26]] == ["53"]
    assert charge_modifiers(rejected, HL7Config(rejected_charge="none")) is None


def test_preliminary_results_carry_no_charge(context):
    config = load_config(environ={}, overrides={"hl7": {"outbound_host": "127.0.0.1",
                                                        "outbound_port": 2576}})
    final = build_messages(config, context)
    assert [(m.kind, m.result_status) for m in final] == [("ORU", "F"), ("DFT", "F")]
    preliminary = build_messages(config, replace(context, result_status="P"))
    assert [(m.kind, m.control_id) for m in preliminary] == [("ORU", "DXR1ORUP")]
    assert "|P||" in [s for s in preliminary[0].payload.split("\r") if s.startswith("OBR")][0]


def test_ack_reader():
    ack = "MSH|^~\\&|E||D||20240101||ACK|9|P|2.5.1\rMSA|AR|DXR1ORUF|bad \\F\\ news"
    assert read_ack(ack) == ("AR", "DXR1ORUF", "bad \\F\\ news")
    assert read_ack("not hl7") == ("", "", "")
