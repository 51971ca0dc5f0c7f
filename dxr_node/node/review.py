"""Reader review of a result: correct a bone, exclude it, approve or reject the exam.

Each action works on the exam's current working result (the engine's, or the reader's
draft once corrected), recomputes everything derived from it with the same code as the
automatic path (``engine.remeasure`` for the shaft, ``clinical.interpret`` for scores,
category, risk and change since prior) and records who did what, with the values
before and after, in the audit trail (``review_store``).

Approve and reject issue final objects (``reports.build_reports`` with a ``SignOff``):
new SOP Instance UIDs, the SR VERIFIED and FINAL with the preliminary SR as its
predecessor; they are written like a worker's objects and queued to every destination,
and the verdict's HL7/FHIR messages (``integration.review_link``) in the same
transaction.
"""

from __future__ import annotations

import datetime
import functools
import logging
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pydicom

from dxr_node.clinical import interpret
from dxr_node.clinical.result import Interpretation
from dxr_node.engine.image import ImageLoadError, Radiograph, load_radiograph, to_display_uint8
from dxr_node.engine.remeasure import (
    RemeasureError,
    analysis_from_dict,
    radial_direction,
    remeasure_bone,
    with_bones,
)
from dxr_node.engine.result import (
    BONE_NAMES,
    STATUS_REJECTED,
    Analysis,
    Point,
    Problem,
    ProblemCode,
)
from dxr_node.integration.review_link import amend_header, queue_in, review_messages
from dxr_node.node.config import NodeConfig
from dxr_node.node.logs import log_event
from dxr_node.node.review_store import ReviewStore, User
from dxr_node.node.store import Store

log = logging.getLogger("dxr_node.review")

# Why a reader rejects a result: a short list, plus free text.
REJECT_REASONS = {
    "not-a-pa-hand": "not a PA hand radiograph",
    "positioning": "hand positioning unsuitable for DXR",
    "image-quality": "image quality insufficient",
    "pathology": "fracture, implant or other pathology in the measured shafts",
    "other": "other reason",
}
MAX_REASON_TEXT = 500


class ReviewError(Exception):
    """A review action that cannot be done; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Working:
    """The result a reader works on, with the image it came from."""

    exam: dict[str, Any]
    analysis: Analysis
    radiograph: Radiograph
    draft: bool


def working(store: Store, job_id: int, config: NodeConfig | None = None) -> Working:
    exam = store.exam(job_id)
    if exam is None:
        raise ReviewError(404, f"no exam {job_id}")
    if exam["job_state"] != "done" or not exam["analysis"]:
        raise ReviewError(409, f"exam {job_id} has no result to review")
    review = ReviewStore(store).review(job_id)
    if review is not None and review["state"] != "draft":
        raise ReviewError(409, f"exam {job_id} was already {review['state']}")
    draft = review is not None and review["analysis"] is not None
    analysis = analysis_from_dict(review["analysis"] if review is not None and draft
                                  else exam["analysis"])
    path = store._read("SELECT i.path FROM jobs j JOIN instances i ON i.id = j.instance_id"
                       " WHERE j.id = ?", (job_id,))[0][0]
    if exam["spool_deleted_at"] is not None or not Path(path).is_file():
        raise ReviewError(409, f"the image of exam {job_id} is no longer in the spool "
                               "(retention): it cannot be reviewed")
    try:
        radiograph = _load(path, Path(path).stat().st_mtime)
    except ImageLoadError as exc:
        raise ReviewError(409, f"the image of exam {job_id} cannot be read: {exc}") from None
    if config is not None:
        # The header as the worker saw it: completed by the matched HL7 order (the sex).
        radiograph = replace(radiograph, dataset=amend_header(config, store, job_id,
                                                              radiograph.dataset))
    return Working(exam, analysis, radiograph, draft)


@functools.lru_cache(maxsize=4)
def _load(path: str, _mtime: float) -> Radiograph:
    """A reader corrects several bones of one image in a row: decode it once."""
    return load_radiograph(path)


def _interpret(config: NodeConfig, store: Store, work: Working,
               analysis: Analysis) -> Interpretation:
    from dxr_node.node.worker import _site_reference

    header = work.radiograph.dataset
    priors = []
    if analysis.ok and work.exam["patient_id"]:
        priors = store.priors(work.exam["patient_id"], work.exam["issuer_of_patient_id"],
                              work.exam["sop_instance_uid"])
    return interpret(analysis, header, priors=priors,
                     reference=_site_reference(config.reference_table))


def summary(analysis: Analysis, interpretation: Interpretation | dict | None) -> dict[str, Any]:
    """The values a reader's action changes, for the audit trail (before and after)."""
    clinical = (interpretation.to_dict() if isinstance(interpretation, Interpretation)
                else interpretation or {})
    prior = clinical.get("prior") or {}
    return {
        "status": analysis.status,
        "bones": {name: {
            "cortical_thickness_mm": _round(b.cortical_thickness_mm),
            "width_mm": _round(b.width_mm), "mci": _round(b.mci),
            "length_mm": _round(b.length_mm), "reader_positioned": b.reader_positioned,
            "proximal_rc": [round(v, 1) for v in b.proximal_rc],
            "distal_rc": [round(v, 1) for v in b.distal_rc],
        } for name, b in analysis.bones.items()},
        "dxr_bmd_g_cm2": _round(analysis.dxr_bmd_g_cm2), "mci": _round(analysis.mci),
        "bhi": _round(analysis.bhi), "t_score": _round(clinical.get("t_score")),
        "z_score": _round(clinical.get("z_score")), "category": clinical.get("category"),
        "relative_risk": _round(clinical.get("relative_risk")),
        "change_since_prior_percent": _round(prior.get("change_percent")),
        "billing_modifier": clinical.get("billing_modifier"),
    }


def _round(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def _excluded(analysis: Analysis) -> list[str]:
    return [n for n in BONE_NAMES if analysis.has(ProblemCode.READER_EXCLUDED, n)]


def _before(store: Store, work: Working) -> dict[str, Any]:
    current = (ReviewStore(store).review(work.exam["job_id"]) or {}).get("interpretation") \
        if work.draft else work.exam["interpretation"]
    return summary(work.analysis, current)


def correct(config: NodeConfig, store: Store, job_id: int, user: User, bone: str,
            proximal_rc: Point, distal_rc: Point) -> dict[str, Any]:
    """Re-measure ``bone`` between the reader's ends; returns the new working result and
    the time the re-measurement took."""
    work = working(store, job_id, config)
    analysis = work.analysis
    radial = radial_direction(analysis)
    try:
        measured = remeasure_bone(work.radiograph.pixels, analysis.pixel_spacing_mm, bone,
                                  proximal_rc, distal_rc, paediatric=analysis.paediatric,
                                  radial_rc=radial)
    except RemeasureError as exc:
        raise ReviewError(422, str(exc)) from None
    bones = {**analysis.bones, bone: measured.bone}
    excluded = tuple(n for n in _excluded(analysis) if n != bone)
    return _save(config, store, work, user, "correct", with_bones(analysis, bones, excluded),
                 bone, extra={"remeasure_seconds": round(measured.seconds, 4)})


def exclude(config: NodeConfig, store: Store, job_id: int, user: User,
            bone: str) -> dict[str, Any]:
    """Mark ``bone`` not measurable: the result becomes partial (modifier 52)."""
    if bone not in BONE_NAMES:
        raise ReviewError(422, f"unknown bone {bone!r}: expected one of {', '.join(BONE_NAMES)}")
    work = working(store, job_id, config)
    bones = {n: b for n, b in work.analysis.bones.items() if n != bone}
    excluded = tuple(sorted({*_excluded(work.analysis), bone}))
    return _save(config, store, work, user, "exclude",
                 with_bones(work.analysis, bones, excluded), bone)


def _save(config: NodeConfig, store: Store, work: Working, user: User, action: str,
          analysis: Analysis, bone: str | None, extra: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    interpretation = _interpret(config, store, work, analysis)
    before = _before(store, work)
    after = summary(analysis, interpretation) | (extra or {})
    try:
        ReviewStore(store).save_draft(
            work.exam["job_id"], user, action, analysis=analysis.to_dict(),
            interpretation=interpretation.to_dict(), bone=bone, reason=None, before=before,
            after=after)
    except (KeyError, ValueError) as exc:
        raise ReviewError(409, str(exc)) from None
    log_event(log, f"review_{action}", job=work.exam["job_id"], user=user.username, bone=bone)
    return {"job_id": work.exam["job_id"], "action": action, **(extra or {}),
            "analysis": analysis.to_dict(), "interpretation": interpretation.to_dict()}


def discard(store: Store, job_id: int, user: User) -> None:
    """Throw the reader's draft away: back to the engine's result."""
    work = working(store, job_id)
    if not work.draft:
        raise ReviewError(409, f"exam {job_id} has no corrections to discard")
    review = ReviewStore(store).review(job_id)
    if review is None:  # a draft is a review row: gone only if deleted meanwhile
        raise ReviewError(409, f"exam {job_id} has no corrections to discard")
    try:
        ReviewStore(store).discard_draft(job_id, user, summary(
            work.analysis, review["interpretation"]))
    except (KeyError, ValueError) as exc:
        raise ReviewError(409, str(exc)) from None


def approve(config: NodeConfig, store: Store, job_id: int, user: User) -> dict[str, Any]:
    """The working result becomes final: verified objects are issued and queued."""
    work = working(store, job_id, config)
    if not work.analysis.bones:
        raise ReviewError(409, "nothing was measured: place the bones by hand, or reject")
    interpretation = _interpret(config, store, work, work.analysis)
    signoff = _signoff(config, work, user)
    kinds: list[str] = list(config.send_objects)
    return _issue(config, store, work, user, "approve", work.analysis, interpretation,
                  signoff, kinds, reason=None)


def reject(config: NodeConfig, store: Store, job_id: int, user: User, reason: str,
           text: str = "") -> dict[str, Any]:
    """No result is issued: a final SR (and PDF, if sent) says so and why."""
    if reason not in REJECT_REASONS:
        raise ReviewError(422, f"reason: expected one of {', '.join(REJECT_REASONS)}")
    text = " ".join(text.split())[:MAX_REASON_TEXT]
    why = REJECT_REASONS[reason] + (f": {text}" if text else "")
    work = working(store, job_id, config)
    no_result = replace(work.analysis, status=STATUS_REJECTED, bones={},
                        problems=(Problem.of(ProblemCode.READER_REJECTED,
                                             f"rejected by the reader: {why}"),),
                        cortical_thickness_mm=None, width_mm=None, mci=None, vpa_mm=None,
                        dxr_bmd_g_cm2=None, bhi=None)
    interpretation = _interpret(config, store, work, no_result)
    signoff = replace(_signoff(config, work, user), rejection=why)
    kinds = ["SR"] + (["PDF"] if "PDF" in config.send_objects else [])
    return _issue(config, store, work, user, "reject", no_result, interpretation, signoff,
                  kinds, reason=why)


def _signoff(config: NodeConfig, work: Working, user: User):
    from dxr_node.reports.identity import DerivedIdentity
    from dxr_node.reports.review import ReplacedObject, SignOff

    source = work.radiograph.dataset
    if source is None:  # only DICOM exams (from the node's SCP) are reviewed
        raise ReviewError(409, "the exam's image has no DICOM header to report against")
    replaces = []
    for obj in work.exam["objects"]:
        # Series UIDs are deterministic: the file (gone after retention) is not needed.
        series = _series_uid(obj["path"]) or DerivedIdentity.for_kind(
            obj["kind"], source, work.analysis).series_uid
        replaces.append(ReplacedObject(obj["kind"], obj["sop_class_uid"],
                                       obj["sop_instance_uid"], series))
    return SignOff(reader_name=user.display_name, organisation=config.review.organisation,
                   at=datetime.datetime.now(datetime.UTC).replace(microsecond=0),
                   revision=uuid.uuid4().hex, replaces=tuple(replaces))


def _series_uid(path: str) -> str | None:
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True,
                                   specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError):
        return None  # retention deleted it


def _issue(config: NodeConfig, store: Store, work: Working, user: User, action: str,
           analysis: Analysis, interpretation: Interpretation, signoff: Any,
           kinds: list[str], reason: str | None) -> dict[str, Any]:
    from dxr_node.node.worker import write_object
    from dxr_node.reports import build_reports

    started = time.perf_counter()
    header = work.radiograph.dataset
    if header is None:
        raise ReviewError(409, "the exam's image has no DICOM header to reference")
    try:
        datasets = build_reports(header, analysis, interpretation,
                                 to_display_uint8(work.radiograph.pixels), kinds=kinds,
                                 signoff=signoff)
        produced = [write_object(config.objects_path, ds) for ds in datasets]
    except (ValueError, OSError) as exc:
        raise ReviewError(500, f"final objects not built: {exc}") from None
    try:
        # The hospital's ORU/DFT/FHIR of this verdict, queued with it (review_link).
        messages, order_id = review_messages(config, store, work.exam, header, action,
                                             analysis, interpretation, datasets)
    except ValueError as exc:
        raise ReviewError(500, f"result messages not built: {exc}") from None
    before = _before(store, work)
    after = summary(analysis, interpretation)
    try:
        ReviewStore(store).finish(
            work.exam["job_id"], user, action,
            status=analysis.status if action == "approve" else None,
            analysis=analysis.to_dict(), interpretation=interpretation.to_dict(),
            bmd=analysis.dxr_bmd_g_cm2, objects=produced,
            destinations=[d.name for d in config.destinations], reason=reason,
            before=before, after=after,
            also=(lambda db, job_id: queue_in(db, job_id, messages, order_id))
            if messages else None)
    except (KeyError, ValueError) as exc:
        raise ReviewError(409, str(exc)) from None
    log_event(log, f"review_{action}", job=work.exam["job_id"], user=user.username,
              objects=len(produced), seconds=round(time.perf_counter() - started, 2))
    return {"job_id": work.exam["job_id"], "action": action, "reader": user.display_name,
            "objects": [{"kind": o.kind, "sop_instance_uid": o.sop_instance_uid}
                        for o in produced],
            "analysis": analysis.to_dict(), "interpretation": interpretation.to_dict()}
