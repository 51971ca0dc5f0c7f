"""FHIR R4 output: the bundle validates (fhir.resources), goes through the message queue
to a local FHIR server with a bearer token, and reads back as valid resources whose
values are the SR's."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from decimal import Decimal

import httpx
import pytest
from fhir.resources.R4B.chargeitem import ChargeItem
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir_server import fhir_server

from dxr_node.integration.config import FHIRConfig, HL7Config
from dxr_node.integration.fhir import MODIFIER_EXTENSION, build_bundle, send_bundle
from dxr_node.integration.hl7 import charge_modifiers
from dxr_node.integration.outbound import FHIR_DESTINATION, run_message_dispatcher
from dxr_node.node.config import load_config
from dxr_node.node.integration_store import IntegrationStore, OutboundMessage
from dxr_node.node.store import InstanceInfo, Store

TOKEN = "test-token-0123456789"


def test_charge_modifiers_follow_the_result_and_the_site():
    class _Ctx:
        def __init__(self, status: str, modifier: str | None,
                     review: str | None = None) -> None:
            self.analysis = type("A", (), {"ok": status == "ok"})()
            self.interpretation = type("I", (), {"billing_modifier": modifier})()
            self.review = review  # the reader's verdict

    site = HL7Config()
    assert charge_modifiers(_Ctx("ok", None), site) == []
    assert charge_modifiers(_Ctx("ok", "52"), site) == ["52"]
    assert charge_modifiers(_Ctx("rejected", "52"), site) == ["53"]
    assert charge_modifiers(_Ctx("rejected", "52"), HL7Config(rejected_charge="none")) is None
    assert charge_modifiers(_Ctx("ok", None), HL7Config(charge_component="TC")) == ["TC"]
    assert charge_modifiers(_Ctx("ok", "52"), HL7Config(charge_component="26")) == ["26", "52"]
    # A partial result a reader approved is billed reduced, a rejected one discontinued.
    assert charge_modifiers(_Ctx("rejected", "52", "approve"), site) == ["52"]
    assert charge_modifiers(_Ctx("ok", None, "reject"), site) == ["53"]
    assert charge_modifiers(_Ctx("ok", None, "reject"), HL7Config(rejected_charge="none")) \
        is None


def test_bundle_validates_and_states_the_values(context):
    config = FHIRConfig(enabled=True, base_url="http://127.0.0.1:1/fhir", token=TOKEN)
    bundle = json.loads(build_bundle(context, config, ["26"]))
    resources = [e["resource"] for e in bundle["entry"]]
    kinds = [r["resourceType"] for r in resources]
    assert kinds.count("DiagnosticReport") == 1 and kinds.count("ChargeItem") == 1
    observations = [Observation.model_validate(r) for r in resources
                    if r["resourceType"] == "Observation"]
    assert len(observations) == len(context.values)
    bmd = next(o for o in observations if o.code.coding[0].code == "BMD")
    sr_text = next(v.numeric for v in context.values if v.concept.value == "BMD")
    assert bmd.valueQuantity.value == Decimal(sr_text)  # the SR's Decimal String, exactly
    assert float(sr_text) == pytest.approx(context.analysis.dxr_bmd_g_cm2, rel=1e-9)
    assert bmd.valueQuantity.system == "http://unitsofmeasure.org"
    assert bmd.valueQuantity.code == "g/cm2"
    assert all("loinc" not in (c.system or "") for o in observations for c in o.code.coding)


def test_bundle_posted_with_token_and_read_back(tmp_path, context, database):
    with fhir_server(TOKEN) as (base_url, server):
        config = load_config(environ={}, overrides={
            "data_dir": str(tmp_path), "database": str(database),
            "fhir": {"enabled": True, "base_url": base_url, "token": TOKEN},
            "dispatch": {"initial_backoff_s": 0.05, "max_backoff_s": 0.2}})
        payload = build_bundle(context, config.fhir, ["26"])
        store = Store(config.database_target)
        job = store.add_instance(InstanceInfo("1.2.3", "1.2.840.10008.5.1.4.1.1.1.1", "1.2",
                                              str(tmp_path / "x.dcm"), 1)).job_id
        IntegrationStore(store).queue(job, [OutboundMessage(
            "FHIR", "F", FHIR_DESTINATION, "DXR1FHIRF", payload)])
        stop = threading.Event()
        thread = threading.Thread(target=run_message_dispatcher, args=(config, store, stop))
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while IntegrationStore(store).counts()["sent"] != 1:
                assert time.monotonic() < deadline, IntegrationStore(store).messages()
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(timeout=10)
            store.close()

        # Resent (e.g. after a lost response): the conditional creates add nothing.
        count = len(server.resources)
        assert send_bundle(config.fhir, payload).outcome == "sent"
        assert len(server.resources) == count and server.posts == 2
        # A wrong token is a permanent failure with the server's answer.
        refused = send_bundle(config.fhir.model_copy(update={"token": "wrong"}), payload)
        assert refused.outcome == "failed" and refused.status == "401"

        def get(reference: str) -> dict:
            response = httpx.get(f"{base_url}/{reference}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200, reference
            return response.json()

        (report_key,) = [k for k in server.resources if k.startswith("DiagnosticReport/")]
        report = DiagnosticReport.model_validate(get(report_key))
        assert report.status == "final"
        assert report.subject.identifier.value == context.patient_id
        assert report.imagingStudy[0].identifier.value == \
            f"urn:oid:{context.study_instance_uid}"
        assert report.presentedForm[0].data.startswith(b"%PDF")  # decoded by fhir.resources
        values = {}
        for reference in report.result:
            observation = Observation.model_validate(get(reference.reference))
            if observation.valueQuantity is not None:
                values[(observation.bodySite.text, observation.code.coding[0].code)] = \
                    observation.valueQuantity.value
        expected = {(v.sub_id, v.concept.value): Decimal(v.numeric) for v in context.values
                    if v.numeric is not None}
        assert len(values) == len(expected)
        assert sorted(values.values()) == sorted(expected.values())

        (charge_key,) = [k for k in server.resources if k.startswith("ChargeItem/")]
        charge = ChargeItem.model_validate(get(charge_key))
        assert charge.code.coding[0].code == "0750T"
        assert charge.reason[0].coding[0].code == "Z13.820"
        assert [e.valueCodeableConcept.coding[0].code for e in charge.extension
                if e.url == MODIFIER_EXTENSION] == ["26"]
        assert charge.service[0].reference == report_key


def test_partial_result_bills_52(context):
    reduced = replace(context, interpretation=replace(context.interpretation,
                                                      billing_modifier="52"))
    assert charge_modifiers(reduced, HL7Config()) == ["52"]
