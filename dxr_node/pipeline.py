"""Engine -> clinical -> reports for one image; shared by `dxr-node analyze` and the node.

`process_file` is what a node worker runs; `dxr_node.commands.analyze` is the CLI front
end that runs the same chain over many paths in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pydicom

from dxr_node.clinical import ReferenceTable, interpret
from dxr_node.clinical.result import Interpretation, PriorResult
from dxr_node.engine.analyze import analyze
from dxr_node.engine.image import (
    DEFAULT_LIMITS,
    DecodeLimits,
    Radiograph,
    load_radiograph,
    to_display_uint8,
)
from dxr_node.engine.result import Analysis

if TYPE_CHECKING:
    from dxr_node.reports.review import ReplacedObject

DEFAULT_KINDS = ("SR", "SC", "GSPS")


class HistorySource(Protocol):
    """Earlier results of a patient (the node's store implements it)."""

    def priors(self, patient_id: str, issuer: str | None,
               exclude_sop_instance_uid: str) -> list[PriorResult]: ...


@dataclass(frozen=True)
class PipelineResult:
    analysis: Analysis
    interpretation: Interpretation | None
    objects: list[pydicom.Dataset]
    radiograph: Radiograph | None = None
    report_problem: str | None = None  # why the requested report objects were not built


def process_file(path: str | Path, *, kinds: Collection[str] = DEFAULT_KINDS,
                 history: HistorySource | None = None, objects_for_rejected: bool = True,
                 pixel_spacing_mm: float | None = None, sex: str | None = None,
                 age_years: float | None = None,
                 reference: ReferenceTable | None = None,
                 amend_header: Callable[[pydicom.Dataset], None] | None = None,
                 limits: DecodeLimits = DEFAULT_LIMITS,
                 replaces: Sequence[ReplacedObject] = ()) -> PipelineResult:
    """Analyse one image and build its report objects.

    ``amend_header`` completes the image header before it is interpreted and reported
    (the node's matched HL7 order: indication, sex, birth date). ``replaces``: objects
    written before, which may hold an earlier result of this image (``build_reports``).

    Raises ImageLoadError only for unreadable input; everything else is in the result.
    """
    started = time.perf_counter()
    radiograph = load_radiograph(path, pixel_spacing_mm, limits=limits)
    analysis = analyze(radiograph, started=started)
    header = radiograph.dataset
    if amend_header is not None and header is not None:
        amend_header(header)
    priors = _priors(history, header) if history is not None and analysis.ok else []
    interpretation = interpret(analysis, header, sex=sex, age_years=age_years, priors=priors,
                               reference=reference)
    objects: list[pydicom.Dataset] = []
    report_problem = None
    if header is not None and kinds and (analysis.ok or objects_for_rejected):
        from dxr_node.reports import build_reports  # heavy (highdicom): only when needed

        try:
            objects = build_reports(header, analysis, interpretation,
                                    to_display_uint8(radiograph.pixels), kinds=kinds,
                                    replaces=replaces)
        except ValueError as exc:  # a header the objects cannot reference (no study UID)
            report_problem = f"report objects not built: {exc}"
    return PipelineResult(analysis, interpretation, objects, radiograph, report_problem)


def _priors(history: HistorySource, header: pydicom.Dataset | None) -> list[PriorResult]:
    patient_id = str(getattr(header, "PatientID", "") or "") if header is not None else ""
    if not patient_id:
        return []
    issuer = str(getattr(header, "IssuerOfPatientID", "") or "") or None
    return history.priors(patient_id, issuer, str(getattr(header, "SOPInstanceUID", "")))


def result_json(result: PipelineResult, source: str, written: Sequence[Path] = ()) -> dict:
    """The one JSON form of a result: the Analysis plus its clinical interpretation."""
    out: dict[str, Any] = result.analysis.to_dict()
    out["source"] = source
    if result.interpretation is not None:
        clinical = result.interpretation.to_dict()
        # The engine's reasons stay "reasons"; why a score is null is "clinical_reasons".
        clinical["clinical_reasons"] = clinical.pop("reasons")
        out.update(clinical)
    out["objects"] = [str(p) for p in written]
    if result.report_problem:
        out["reasons"].append(result.report_problem)
    return out
