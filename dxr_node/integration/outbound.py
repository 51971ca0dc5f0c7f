"""Orders meet images, results and charges leave: the worker's hooks and the message
dispatcher.

In the worker (``WorkerHooks``): before the analysis the image is matched to its order
(accession number, else patient + date) and the order's indication, sex and birth date
complete the header the SR, PDF and interpretation are built from; after it, the
ORU^R01, DFT^P03 and FHIR bundle are built and handed to ``Store.finish_job``, which
queues them in the result's own transaction.

In the node (``run_message_dispatcher``): one thread per destination ("HL7", "FHIR")
claims due messages, sends them and records the outcome with the DICOM dispatcher's
backoff (``dxr_node.node.dispatch.backoff_delay``) and the same three outcomes: sent,
retry (transient), failed (permanent, or retries exhausted; `dxr-node retry` and the
console send it again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pydicom

from dxr_node.node.config import NodeConfig
from dxr_node.node.database import DATABASE_ERRORS, Connection
from dxr_node.node.dispatch import FAILED, RETRY, SENT
from dxr_node.node.integration_store import (
    ClaimedMessage,
    IntegrationStore,
    Order,
    OutboundMessage,
)
from dxr_node.node.logs import log_event
from dxr_node.node.store import Store

log = logging.getLogger(__name__)

HL7_DESTINATION = "HL7"
FHIR_DESTINATION = "FHIR"
POLL_INTERVAL_S = 0.25
BATCH_SIZE = 16


def enabled(config: NodeConfig) -> bool:
    return config.hl7.enabled or config.hl7.outbound_enabled or config.fhir.enabled


# --- in the worker --------------------------------------------------------------------


@dataclass
class WorkerHooks:
    """Per job: the matched order and the messages to queue with the result."""

    config: NodeConfig
    job_id: int
    order: Order | None = None
    header: pydicom.Dataset | None = None

    @classmethod
    def for_job(cls, config: NodeConfig, store: Store, job_id: int,
                path: str | Path) -> WorkerHooks | None:
        if not enabled(config):
            return None
        hooks = cls(config, job_id)
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # the pipeline reports unreadable images with the reason
            return hooks
        try:
            hooks.order = IntegrationStore(store).find_order(
                accession_number=str(header.get("AccessionNumber", "") or "") or None,
                patient_id=str(header.get("PatientID", "") or "") or None,
                issuer=str(header.get("IssuerOfPatientID", "") or "") or None,
                study_date=str(header.get("StudyDate", "") or "") or None,
                window_days=config.hl7.match_window_days)
        except DATABASE_ERRORS as exc:  # e.g. locked: not the image's fault, claim it again
            raise OSError(f"cannot look up the image's order: {exc}") from exc
        if hooks.order is not None:
            log_event(log, "order_matched", job=job_id, order=hooks.order.id,
                      accession=hooks.order.accession_number)
        return hooks

    def amend_header(self, header: pydicom.Dataset) -> None:
        """Give the header what the order knows and the modality did not send."""
        self.header = header
        order = self.order
        if order is None:
            return
        if not header.get("PatientSex") and order.sex:
            header.PatientSex = order.sex
        if not header.get("PatientBirthDate") and order.birth_date:
            header.PatientBirthDate = order.birth_date
        if order.placer_order_number and not header.get("PlacerOrderNumberImagingServiceRequest"):
            header.PlacerOrderNumberImagingServiceRequest = order.placer_order_number[:16]
        if order.filler_order_number and not header.get("FillerOrderNumberImagingServiceRequest"):
            header.FillerOrderNumberImagingServiceRequest = order.filler_order_number[:16]
        requests = header.get("RequestAttributesSequence")
        if not requests:
            header.RequestAttributesSequence = [pydicom.Dataset()]
            requests = header.RequestAttributesSequence
        item = requests[0]
        if order.reason and not item.get("ReasonForTheRequestedProcedure"):
            item.ReasonForTheRequestedProcedure = order.reason[:64]
        known = {str(c.get("CodeValue", "")) for c in
                 item.get("ReasonForRequestedProcedureCodeSequence", [])}
        codes = list(item.get("ReasonForRequestedProcedureCodeSequence", []))
        for code, meaning, system in order.diagnoses:
            if code in known:
                continue
            entry = pydicom.Dataset()
            entry.CodeValue = code
            entry.CodingSchemeDesignator = system
            entry.CodeMeaning = (meaning or code)[:64]
            codes.append(entry)
        if codes:
            item.ReasonForRequestedProcedureCodeSequence = codes

    def queue_with_result(self, result: Any,
                          objects: Sequence[Any]) -> Callable[[Connection, int], None]:
        """The ``also`` of ``Store.finish_job``: link the order, queue the messages."""
        messages = self._messages(result, objects)
        order_id = self.order.id if self.order is not None else None

        def also(db: Connection, job_id: int) -> None:
            IntegrationStore.queue_in(db, job_id, messages, order_id)

        return also

    def _messages(self, result: Any, objects: Sequence[Any]) -> list[OutboundMessage]:
        from dxr_node.integration.review_link import status_at_result

        status = status_at_result(self.config)
        if self.header is None or status is None:  # not DICOM, or held for a reader
            return []
        return build_messages(self.config, replace(
            self._context(result, objects, self.header), result_status=status))

    def _context(self, result: Any, objects: Sequence[Any], header: pydicom.Dataset) -> Any:
        """What the builders need; ``result`` has ``analysis``, ``interpretation`` and
        ``objects`` (the datasets built, the PDF taken from them)."""
        from dxr_node.integration.hl7 import ResultContext

        order = self.order
        diagnoses = order.diagnoses if order is not None and order.diagnoses else \
            header_diagnoses(header)
        want_pdf = (self.config.hl7.outbound_enabled and self.config.hl7.embed_pdf) or \
            (self.config.fhir.enabled and self.config.fhir.include_pdf)
        return ResultContext(
            job_id=self.job_id, analysis=result.analysis, interpretation=result.interpretation,
            order=order, patient_id=str(header.get("PatientID", "") or ""),
            issuer_of_patient_id=str(header.get("IssuerOfPatientID", "") or "") or None,
            accession_number=str(header.get("AccessionNumber", "") or "") or
            (order.accession_number if order else None),
            study_instance_uid=str(header.get("StudyInstanceUID", "")),
            study_date=str(header.get("StudyDate", "") or "") or None,
            diagnoses=tuple(diagnoses),
            pdf=_pdf_bytes(result, header) if want_pdf else None,
        )


def build_messages(config: NodeConfig, context: Any, *,
                   charge: bool = True) -> list[OutboundMessage]:
    """The ORU^R01, DFT^P03 and FHIR bundle of one result (a ``ResultContext``), as
    configured. The worker queues them with the result (status F, or P when a reader
    reviews it); the review queues its F (approval, rejection) or C (a change after a
    final went out) in the review's transaction (``integration.review_link``): each
    (job, kind, status) is queued and sent once. ``charge=False``: no DFT and no
    ChargeItem (the service was already charged)."""
    from dxr_node.integration.hl7 import build_dft, build_oru, charge_modifiers

    status = context.result_status
    job_id = context.job_id
    out: list[OutboundMessage] = []
    hl7 = config.hl7
    if hl7.outbound_enabled and hl7.send_results:
        control = f"DXR{job_id}ORU{status}"
        out.append(OutboundMessage("ORU", status, HL7_DESTINATION, control,
                                   build_oru(context, hl7, control)))
    # A charge only for a final (or corrected) result, never for a preliminary one.
    modifiers = charge_modifiers(context, hl7) if status != "P" and charge else None
    if hl7.outbound_enabled and hl7.send_charges and modifiers is not None:
        control = f"DXR{job_id}DFT{status}"
        out.append(OutboundMessage("DFT", status, HL7_DESTINATION, control,
                                   build_dft(context, hl7, control, modifiers)))
    if config.fhir.enabled:
        from dxr_node.integration.fhir import FHIRError, build_bundle

        try:
            bundle = build_bundle(context, config.fhir, modifiers)
        except FHIRError as exc:  # our bug: keep the result and the HL7 messages
            log_event(log, "fhir_invalid", logging.ERROR, job=job_id, reason=str(exc))
        else:
            out.append(OutboundMessage("FHIR", status, FHIR_DESTINATION,
                                       f"DXR{job_id}FHIR{status}", bundle))
    return out


def header_diagnoses(header: pydicom.Dataset) -> list[tuple[str, str, str]]:
    """ICD-10 codes the image header itself carries (reason for request, admitting)."""
    items = list(header.get("AdmittingDiagnosesCodeSequence", []))
    for request in header.get("RequestAttributesSequence", []):
        items += list(request.get("ReasonForRequestedProcedureCodeSequence", []))
    out: dict[str, tuple[str, str, str]] = {}
    for item in items:
        if str(item.get("CodingSchemeDesignator", "")).upper() in ("I10", "ICD10", "ICD-10"):
            code = str(item.get("CodeValue", ""))
            out.setdefault(code, (code, str(item.get("CodeMeaning", "")), "I10"))
    return list(out.values())


def _pdf_bytes(result: Any, header: pydicom.Dataset) -> bytes | None:
    """The report PDF: the Encapsulated PDF's document when one was built, else
    rendered from the same inputs."""
    for dataset in result.objects:
        if "EncapsulatedDocument" in dataset:
            data = bytes(dataset.EncapsulatedDocument)
            length = int(dataset.get("EncapsulatedDocumentLength", len(data)) or len(data))
            return data[:length]
    from dxr_node.reports.pdf import render_pdf

    return render_pdf(header, result.analysis, result.interpretation)


# --- in the node: the message dispatcher ----------------------------------------------


@dataclass(frozen=True)
class Outcome:
    outcome: str  # SENT | RETRY | FAILED
    status: str | None
    reason: str


def run_message_dispatcher(config: NodeConfig, store: Store,
                           stop_event: threading.Event) -> None:
    """Deliver due HL7/FHIR messages until ``stop_event`` is set (run it in a thread)."""
    istore = IntegrationStore(store)
    senders: dict[str, Callable[[ClaimedMessage], Outcome]] = {}
    if config.hl7.outbound_enabled:
        senders[HL7_DESTINATION] = lambda m: send_hl7(config, m)
    if config.fhir.enabled:
        from dxr_node.integration.fhir import send_bundle

        senders[FHIR_DESTINATION] = lambda m: send_bundle(config.fhir, m.payload)
    threads = [threading.Thread(target=_serve, args=(config, istore, name, send, stop_event),
                                name=f"dispatch-{name}", daemon=True)
               for name, send in senders.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _serve(config: NodeConfig, istore: IntegrationStore, destination: str,
           send: Callable[[ClaimedMessage], Outcome], stop_event: threading.Event) -> None:
    while not stop_event.is_set():
        try:
            handled = deliver_due(config, istore, destination, send)
        except DATABASE_ERRORS as exc:
            log_event(log, "dispatch_store_error", logging.ERROR, reason=str(exc))
            handled = 0
        if not handled:
            stop_event.wait(POLL_INTERVAL_S)


def deliver_due(config: NodeConfig, istore: IntegrationStore, destination: str,
                send: Callable[[ClaimedMessage], Outcome]) -> int:
    from dxr_node.node.dispatch import backoff_delay

    batch = istore.claim(destination, BATCH_SIZE)
    for item in batch:
        try:
            outcome = send(item)
        except Exception as exc:  # a bug must not leave the row in 'sending'
            log.exception("message dispatch error")
            outcome = Outcome(RETRY, None, f"internal error: {type(exc).__name__}: {exc}")
        fields: dict[str, Any] = {"message": item.id, "job": item.job_id, "kind": item.kind,
                                  "destination": destination, "control_id": item.control_id,
                                  "attempt": item.attempts}
        policy = config.dispatch
        if outcome.outcome == SENT:
            istore.sent(item.id, outcome.status or "")
            log_event(log, "message_sent", status=outcome.status, **fields)
        elif outcome.outcome == RETRY and item.attempts < policy.max_attempts:
            delay = backoff_delay(policy, item.attempts)
            istore.retry_later(item.id, outcome.reason, time.time() + delay, outcome.status)
            log_event(log, "message_retry", logging.WARNING, in_s=round(delay, 1),
                      reason=outcome.reason, **fields)
        else:
            reason = outcome.reason if outcome.outcome == FAILED else \
                f"gave up after {item.attempts} attempts: {outcome.reason}"
            istore.failed(item.id, reason, outcome.status)
            log_event(log, "message_failed", logging.ERROR, reason=reason, **fields)
    return len(batch)


def send_hl7(config: NodeConfig, message: ClaimedMessage) -> Outcome:
    """MLLP send and read the ACK: AA/CA sent; AE/CE retried (the receiver could not
    process it now); AR/CR failed (it will not take this message); no ACK or an ACK for
    another message retried."""
    from dxr_node.integration.hl7 import read_ack
    from dxr_node.integration.mllp import MLLPSendError, send

    hl7 = config.hl7
    assert hl7.outbound_host is not None and hl7.outbound_port is not None
    try:
        reply = send(hl7.outbound_host, hl7.outbound_port, message.payload,
                     timeout_s=hl7.timeout_s)
    except MLLPSendError as exc:
        return Outcome(RETRY, None, str(exc))
    code, acked, text = read_ack(reply)
    if acked != message.control_id:
        return Outcome(RETRY, code or None,
                       f"ACK for {acked or 'no message'!r}, not {message.control_id!r}")
    if code in ("AA", "CA"):
        return Outcome(SENT, code, "accepted")
    if code in ("AE", "CE"):
        return Outcome(RETRY, code, f"receiver error: {text or code}")
    if code in ("AR", "CR"):
        return Outcome(FAILED, code, f"rejected by the receiver: {text or code}")
    return Outcome(RETRY, code or None, f"unreadable ACK (MSA-1 {code!r})")
