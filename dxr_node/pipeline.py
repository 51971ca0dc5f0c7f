"""Engine -> clinical -> reports for one image; shared by `dxr-node analyze` and the node.

`process_file` is what a node worker runs; `analyze_command` is the CLI front end that
runs the same chain over many paths in one process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import pydicom

from dxr_node.clinical import ReferenceTable, interpret
from dxr_node.clinical.result import Interpretation, PriorResult
from dxr_node.engine.analyze import analyze, error_analysis
from dxr_node.engine.image import (
    DEFAULT_LIMITS,
    DecodeLimits,
    ImageLoadError,
    Radiograph,
    load_radiograph,
    to_display_uint8,
)
from dxr_node.engine.result import STATUS_ERROR, STATUS_OK, Analysis
from dxr_node.fileio import write_durably

log = logging.getLogger(__name__)

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
                 limits: DecodeLimits = DEFAULT_LIMITS) -> PipelineResult:
    """Analyse one image and build its report objects.

    ``amend_header`` completes the image header before it is interpreted and reported
    (the node's matched HL7 order: indication, sex, birth date).

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
                                    to_display_uint8(radiograph.pixels), kinds=kinds)
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


def analyze_command(args: argparse.Namespace) -> int:
    if os.environ.get("DXR_NODE_DEBUG"):
        logging.basicConfig(level=logging.DEBUG)  # tracebacks of internal errors
    history = _open_history(args.history) if args.history else None
    if args.history and history is None:
        return 2
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"dxr-node: --out {out_dir}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    statuses = []
    for source in args.paths:
        result, written = _analyze_one(source, args, history, out_dir)
        statuses.append(result.analysis.status)
        record = result_json(result, source, written)
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            print(_human_summary(record), flush=True)
        if result.analysis.status == STATUS_ERROR:
            print(f"dxr-node: {source}: {'; '.join(result.analysis.reasons)}", file=sys.stderr)
    if STATUS_ERROR in statuses:
        return 2
    return 0 if all(s == STATUS_OK for s in statuses) else 1


def _analyze_one(source: str, args: argparse.Namespace, history: HistorySource | None,
                 out_dir: Path | None) -> tuple[PipelineResult, list[Path]]:
    kinds = ("SR", "SC", "GSPS", "PDF") if out_dir else ()
    started = time.perf_counter()
    try:
        result = process_file(source, kinds=kinds, history=history,
                              pixel_spacing_mm=args.pixel_spacing, sex=args.sex,
                              age_years=args.age)
    except ImageLoadError as exc:
        return PipelineResult(error_analysis(source, str(exc), started), None, []), []
    except Exception as exc:  # a bug must not stop the other images
        log.debug("analysis of %s failed", source, exc_info=True)  # DXR_NODE_DEBUG=1
        reason = f"internal error: {type(exc).__name__}: {exc}"
        return PipelineResult(error_analysis(source, reason, started), None, []), []
    written: list[Path] = []
    if out_dir is not None:
        from dxr_node.reports import render_overlay, write_objects

        try:
            written = write_objects(result.objects, out_dir)
            if result.radiograph is not None and result.radiograph.dataset is None:
                written.append(_write_overlay_png(result, source, out_dir, render_overlay))
        except OSError as exc:  # disk full, permissions: the numbers still stand
            problem = f"report objects not written: {exc.strerror or exc}"
            return replace(result, report_problem=problem), written
    return result, written


def _write_overlay_png(result: PipelineResult, source: str, out_dir: Path, render) -> Path:
    """Non-DICOM inputs have no study to attach objects to: write the overlay as PNG."""
    import cv2

    rgb = render(to_display_uint8(result.radiograph.pixels), result.analysis,
                 result.interpretation)
    target = out_dir / f"{Path(source).stem}_dxr_overlay.png"
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode the overlay of {source} as PNG")
    write_durably(target, out_dir / f".{target.name}.{os.getpid()}.part",
                  lambda handle: handle.write(png.tobytes()))
    return target


def _open_history(path: str) -> HistorySource | None:
    if not Path(path).is_file():
        print(f"dxr-node: --history {path}: no such database", file=sys.stderr)
        return None
    from dxr_node.node.store import Store, StoreError

    try:
        return Store(path, read_only=True)  # a priors source: never create or migrate
    except StoreError as exc:
        print(f"dxr-node: --history: {exc}", file=sys.stderr)
        return None


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _human_summary(record: dict) -> str:
    lines = [f"{record['source']}: {record['status']}"
             + (f" ({'; '.join(record['reasons'])})" if record["reasons"] else "")]
    if record["bones"]:
        lines.append("  bone   T mm   W mm   MCI    L mm")
        for name, bone in record["bones"].items():
            lines.append(f"  {name:5} {_fmt(bone['cortical_thickness_mm']):>6} "
                         f"{_fmt(bone['width_mm']):>6} {_fmt(bone['mci']):>6} "
                         f"{_fmt(bone['length_mm'], '.1f'):>6}")
    if record["status"] == STATUS_OK:
        lines.append(f"  DXR-BMD {_fmt(record['dxr_bmd_g_cm2'], '.3f')} g/cm2  "
                     f"MCI {_fmt(record['mci'], '.3f')}  BHI {_fmt(record['bhi'])}  "
                     f"T-score {_fmt(record.get('t_score'), '.1f')}  "
                     f"Z-score {_fmt(record.get('z_score'), '.1f')}  "
                     f"{record.get('category') or ''}")
    return "\n".join(lines)
