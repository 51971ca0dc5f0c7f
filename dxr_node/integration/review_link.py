"""Reader review meets the hospital interfaces: which ORU^R01, DFT^P03 and FHIR bundle a
result gets, and when (``review.mode``; docs/hl7-fhir.md, "Reader review").

- ``none``: the worker queues ORU F + DFT + FHIR final with the result (as without
  review). A reader who later changes the result (correction, exclusion, rejection)
  sends ORU C + FHIR corrected, and no second charge.
- ``send-preliminary``: the worker queues ORU P + FHIR preliminary (never a charge);
  approval or rejection queues ORU F + DFT + FHIR final.
- ``hold-until-verified``: the worker queues nothing; approval or rejection queues F.

What the reader's verdict sends is decided by what this result already queued (not by
the mode at approval time): no final yet -> F with the charge; a final already queued
-> C without a charge, and nothing at all when the reported values did not change. The
messages are queued by ``ReviewStore.finish`` in the review's own transaction; the
queue's (job, kind, status) uniqueness keeps every final to one message of each kind.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pydicom

from dxr_node.clinical.result import Interpretation, PriorComparison
from dxr_node.engine.result import Analysis
from dxr_node.integration.outbound import WorkerHooks, build_messages, enabled
from dxr_node.integration.values import ReportedValue, reported_values
from dxr_node.node.config import NodeConfig
from dxr_node.node.database import Connection
from dxr_node.node.integration_store import IntegrationStore, OutboundMessage
from dxr_node.node.logs import log_event
from dxr_node.node.store import Store

log = logging.getLogger(__name__)

FINAL_STATUSES = ("F", "C")


def status_at_result(config: NodeConfig) -> str | None:
    """Result status of the messages the worker queues with a new result (None: none)."""
    return {"none": "F", "send-preliminary": "P"}.get(config.review.mode)


def amend_header(config: NodeConfig, store: Store, job_id: int,
                 header: pydicom.Dataset | None) -> pydicom.Dataset | None:
    """A copy of the image header completed by the job's matched order, as the worker
    completed it: the reader's recomputed result (T-score from the order's sex), final
    SR and messages then say what the preliminary ones said."""
    if header is None or not enabled(config):
        return header
    order = IntegrationStore(store).order_for_job(job_id)
    if order is None:
        return header
    amended = copy.deepcopy(header)  # the decoded image is cached: leave it as read
    WorkerHooks(config, job_id, order=order).amend_header(amended)
    return amended


@dataclass(frozen=True)
class _Issued:
    """The reader's result in the shape ``WorkerHooks._context`` reads."""

    analysis: Analysis
    interpretation: Interpretation | None
    objects: Sequence[pydicom.Dataset]


def review_messages(config: NodeConfig, store: Store, exam: dict[str, Any],
                    header: pydicom.Dataset | None, verdict: str, analysis: Analysis,
                    interpretation: Interpretation | None,
                    datasets: Sequence[pydicom.Dataset]
                    ) -> tuple[list[OutboundMessage], int | None]:
    """The messages a reader's approval (``verdict`` "approve") or rejection ("reject")
    queues, and the matched order's id; ``exam`` is the exam as it was before the
    verdict (its result is what the earlier messages reported)."""
    if header is None or not enabled(config):
        return [], None
    job_id = exam["job_id"]
    istore = IntegrationStore(store)
    queued = {m["result_status"] for m in istore.messages(job_id=job_id)}
    order = istore.order_for_job(job_id)
    hooks = WorkerHooks(config, job_id, order=order, header=header)
    context = hooks._context(_Issued(analysis, interpretation, datasets), [], header)
    earlier = _earlier_values(exam) if queued else []
    keys = {_key(v) for v in context.values}
    withdrawn = tuple(v for v in earlier if _key(v) not in keys)
    if queued & set(FINAL_STATUSES):
        if _reported(earlier, exam) == _reported(context.values, {
                "analysis": analysis.to_dict(),
                "interpretation": interpretation.to_dict() if interpretation else None}):
            log_event(log, "review_no_change", job=job_id, verdict=verdict,
                      reason="the final already sent reports the same values")
            return [], None
        status, charge = "C", False
        _note_charge_change(config, job_id, exam, interpretation, verdict)
    else:
        status, charge = "F", True
    context = replace(context, result_status=status, review=verdict, withdrawn=withdrawn)
    return build_messages(config, context, charge=charge), order.id if order else None


def queue_in(db: Connection, job_id: int, messages: Sequence[OutboundMessage],
             order_id: int | None) -> None:
    """The ``also`` of ``ReviewStore.finish``: queue the verdict's messages. A final
    supersedes a preliminary that has not gone out yet (receiver down): it is dropped,
    so the receiver never gets P after F (a C instead waits for its F: ``claim``)."""
    if any(m.result_status == "F" for m in messages):
        dropped = IntegrationStore.drop_unsent(db, job_id, ["P"])
        if dropped:
            log_event(log, "preliminary_superseded", job=job_id, messages=dropped)
    IntegrationStore.queue_in(db, job_id, messages, order_id)


def _key(value: ReportedValue) -> tuple[str, str, str]:
    return value.sub_id, value.concept.value, value.concept.scheme_designator


def _reported(values: Sequence[ReportedValue], exam: dict[str, Any]) -> tuple:
    """What a result message states: its values, the result status, the charge modifier."""
    clinical = exam.get("interpretation") or {}
    return (sorted((_key(v), v.numeric, v.coded.value if v.coded else None) for v in values),
            (exam.get("analysis") or {}).get("status"), clinical.get("billing_modifier"))


def _earlier_values(exam: dict[str, Any]) -> list[ReportedValue]:
    """The values the worker's messages reported: the engine's stored result."""
    from dxr_node.engine.remeasure import analysis_from_dict

    if not exam.get("analysis"):
        return []
    return reported_values(analysis_from_dict(exam["analysis"]),
                           interpretation_from_dict(exam.get("interpretation")))


def interpretation_from_dict(data: dict[str, Any] | None) -> Interpretation | None:
    """The stored interpretation, as far as the reported values need it."""
    if not data:
        return None
    prior = data.get("prior")
    return Interpretation(
        age_years=data.get("age_years"), sex=data.get("sex"), t_score=data.get("t_score"),
        z_score=data.get("z_score"), category=data.get("category"), triage=data.get("triage"),
        relative_risk=data.get("relative_risk"), reference=None,
        prior=PriorComparison(**prior) if prior else None,
        billing_modifier=data.get("billing_modifier"),
        reasons=tuple(data.get("reasons") or ()))


def _note_charge_change(config: NodeConfig, job_id: int, exam: dict[str, Any],
                        interpretation: Interpretation | None, verdict: str) -> None:
    """The charge went with the first final; a correction does not re-bill. When the
    reader's verdict would bill differently, say so for the billing office."""
    if not (config.hl7.outbound_enabled and config.hl7.send_charges):
        return
    before = (exam.get("interpretation") or {}).get("billing_modifier")
    after = "53" if verdict == "reject" else (
        interpretation.billing_modifier if interpretation else None)
    if before != after:
        log_event(log, "charge_differs", logging.WARNING, job=job_id,
                  charged=before or "full", verdict=verdict, now=after or "full",
                  reason="the charge already sent is not corrected automatically")
