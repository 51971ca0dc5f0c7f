"""FHIR R4 output: one transaction Bundle per result with a DiagnosticReport, one
Observation per reported value, the PDF as presentedForm and a ChargeItem for 0750T.

Resources are built as dicts and validated by fhir.resources' R4B models (4.3.0: the
R4-compatible release; DiagnosticReport, Observation, ChargeItem and Bundle are the
same as in R4.0.1) before they are queued, so nothing invalid is ever sent. Entries are
conditional updates (``PUT Type?identifier=...``) on identifiers that stay the same
for one result whatever its status: a bundle resent after a lost response creates
nothing twice, and a reader's final (or correction) updates the preliminary (or final)
DiagnosticReport and Observations in place; a value the new status no longer states is
updated to ``cancelled`` without a value. docs/hl7-fhir.md lists the codes and the
extension.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

import httpx
from fhir.resources.R4B.bundle import Bundle

from dxr_node.integration.config import FHIRConfig
from dxr_node.integration.hl7 import CPT, METHOD, ResultContext
from dxr_node.integration.values import HAND, ReportedValue
from dxr_node.reports import codes

LOCAL_SYSTEM = "urn:dxr-node:99DXR"  # the SR's local coding scheme 99DXR
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
CPT_SYSTEM = "http://www.ama-assn.org/go/cpt"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
NPI = "http://hl7.org/fhir/sid/us-npi"
RESULT_ID_SYSTEM = "urn:dxr-node:result"
# ChargeItem has no modifier element in R4: our extension (valueCodeableConcept, CPT).
MODIFIER_EXTENSION = "urn:dxr-node:fhir:StructureDefinition:chargeitem-cpt-modifier"
_SYSTEMS = {codes.LOCAL_SCHEME: LOCAL_SYSTEM, "SCT": SNOMED, "DCM": DCM, "UCUM": UCUM}
_STATUS = {"F": "final", "C": "corrected", "P": "preliminary"}


class FHIRError(Exception):
    """A resource failed validation (a bug: nothing is queued)."""


def _uuid(context: ResultContext, role: str) -> str:
    name = f"{context.study_instance_uid}/{context.job_id}/{context.result_status}/{role}"
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, name)}"


def _coding(code: Any) -> dict[str, str]:
    return {"system": _SYSTEMS.get(code.scheme_designator, code.scheme_designator),
            "code": code.value, "display": code.meaning}


def _patient(context: ResultContext, config: FHIRConfig) -> dict[str, Any]:
    system = config.patient_identifier_system
    if context.issuer_of_patient_id:
        system = f"{system}:{context.issuer_of_patient_id}"
    return {"identifier": {"system": system, "value": context.patient_id}}


def _observation(context: ResultContext, config: FHIRConfig, value: ReportedValue,
                 effective: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "status": _STATUS.get(context.result_status, "final"),
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [_coding(value.concept)], "text": value.concept.meaning},
        "subject": _patient(context, config),
        "method": {"coding": [{"system": LOCAL_SYSTEM, "code": METHOD[0],
                               "display": METHOD[1]}]},
        "bodySite": {"coding": [_coding(codes.HAND if value.sub_id == HAND
                                        else codes.METACARPAL)],
                     "text": "hand (MC2-MC4)" if value.sub_id == HAND
                     else codes.BONE_LABELS.get(value.sub_id, value.sub_id)},
    }
    if effective:
        out["effectiveDateTime"] = effective
    if value.numeric is not None:
        quantity: dict[str, Any] = {"value": Decimal(value.numeric)}  # the SR's text
        if value.unit is not None:
            quantity |= {"unit": value.unit.meaning, "system": UCUM, "code": value.unit.value}
        out["valueQuantity"] = quantity
    elif value.coded is not None:
        out["valueCodeableConcept"] = {"coding": [_coding(value.coded)],
                                       "text": value.coded.meaning}
    return out


def build_resources(context: ResultContext, config: FHIRConfig,
                    modifiers: Sequence[str] | None) -> list[tuple[str, dict[str, Any], str]]:
    """(fullUrl, resource, identifier search) for the bundle, in order."""
    effective = (f"{context.study_date[:4]}-{context.study_date[4:6]}-"
                 f"{context.study_date[6:8]}") if context.study_date else None
    result_id = f"DXR{context.job_id}"  # one result: P, F and C update the same resources
    entries: list[tuple[str, dict[str, Any], str]] = []
    for n, value in enumerate(context.values, 1):
        observation = _observation(context, config, value, effective)
        value_id = f"{result_id}-{value.sub_id}-{value.concept.value}"
        observation["identifier"] = [{"system": RESULT_ID_SYSTEM, "value": value_id}]
        entries.append((_uuid(context, f"obs{n}"), observation,
                        f"identifier={RESULT_ID_SYSTEM}|{value_id}"))
    current = len(entries)
    # What an earlier status reported and this one does not: no longer a value.
    for n, value in enumerate(context.withdrawn, 1):
        observation = _observation(context, config, replace(value, numeric=None, coded=None),
                                   effective)
        observation["status"] = "cancelled"
        value_id = f"{result_id}-{value.sub_id}-{value.concept.value}"
        observation["identifier"] = [{"system": RESULT_ID_SYSTEM, "value": value_id}]
        entries.append((_uuid(context, f"withdrawn{n}"), observation,
                        f"identifier={RESULT_ID_SYSTEM}|{value_id}"))
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": RESULT_ID_SYSTEM, "value": result_id}],
        "status": _STATUS.get(context.result_status, "final"),
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOCAL_SYSTEM, "code": METHOD[0], "display": METHOD[1]}],
                 "text": "DXR-BMD (digital X-ray radiogrammetry)"},
        "subject": _patient(context, config),
        "issued": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "result": [{"reference": url} for url, _, _ in entries[:current]],
        "imagingStudy": [{"identifier": {"system": "urn:dicom:uid",
                                         "value": f"urn:oid:{context.study_instance_uid}"}}],
        "conclusion": "; ".join(context.analysis.reasons) or None,
    }
    if report["conclusion"] is None:
        del report["conclusion"]
    if effective:
        report["effectiveDateTime"] = effective
    if context.accession_number:
        report["identifier"].append({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "ACSN"}]}, "value": context.accession_number})
    if context.order is not None:
        report["basedOn"] = [{"identifier": {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "PLAC"}]},
            "value": context.order.placer_order_number}}]
    if config.include_pdf and context.pdf:
        report["presentedForm"] = [{"contentType": "application/pdf",
                                    "data": base64.b64encode(context.pdf).decode("ascii"),
                                    "title": "DXR report"}]
    report_url = _uuid(context, "report")
    entries.append((report_url, report, f"identifier={RESULT_ID_SYSTEM}|{result_id}"))
    if config.send_charge_items and modifiers is not None:
        charge: dict[str, Any] = {
            "resourceType": "ChargeItem",
            "identifier": [{"system": RESULT_ID_SYSTEM, "value": f"{result_id}-charge"}],
            "status": "billable",
            "code": {"coding": [{"system": CPT_SYSTEM, "code": CPT[0], "display": CPT[1]}]},
            "subject": _patient(context, config),
            "quantity": {"value": 1},
            "service": [{"reference": report_url}],
            "reason": [{"coding": [{"system": ICD10CM, "code": code, "display": text or code}]}
                       for code, text, _ in context.diagnoses],
            "extension": [{"url": MODIFIER_EXTENSION, "valueCodeableConcept": {
                "coding": [{"system": CPT_SYSTEM, "code": m}]}} for m in modifiers],
        }
        if effective:
            charge["occurrenceDateTime"] = effective
        for key in ("reason", "extension"):
            if not charge[key]:
                del charge[key]
        entries.append((_uuid(context, "charge"), charge,
                        f"identifier={RESULT_ID_SYSTEM}|{result_id}-charge"))
    return entries


def build_bundle(context: ResultContext, config: FHIRConfig,
                 modifiers: Sequence[str] | None) -> str:
    """The transaction Bundle as JSON, validated by fhir.resources (raises FHIRError)."""
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"fullUrl": url, "resource": resource,
                   "request": {"method": "PUT",
                               "url": f"{resource['resourceType']}?{condition}"}}
                  for url, resource, condition in build_resources(context, config, modifiers)],
    }
    try:
        return Bundle.model_validate(bundle).model_dump_json(exclude_none=True)
    except ValueError as exc:  # pydantic's ValidationError
        raise FHIRError(f"FHIR bundle does not validate: {exc}") from None


def send_bundle(config: FHIRConfig, payload: str) -> Any:
    """POST the bundle to the server's base URL: 2xx sent; 408, 429, 5xx and network
    trouble retried; other 4xx (bad request, unauthorised) failed with the server's
    answer."""
    from dxr_node.integration.outbound import Outcome
    from dxr_node.node.dispatch import FAILED, RETRY, SENT

    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if config.token:
        headers["Authorization"] = f"Bearer {config.token}"
    assert config.base_url is not None
    try:
        response = httpx.post(config.base_url.rstrip("/"), content=payload, headers=headers,
                              timeout=config.timeout_s)
    except httpx.HTTPError as exc:
        return Outcome(RETRY, None, f"{config.base_url}: {type(exc).__name__}: {exc}")
    status = str(response.status_code)
    if response.is_success:
        return Outcome(SENT, status, "accepted")
    detail = f"HTTP {response.status_code}: {response.text[:300]}"
    if response.status_code in (408, 429) or response.status_code >= 500:
        return Outcome(RETRY, status, detail)
    return Outcome(FAILED, status, detail)
