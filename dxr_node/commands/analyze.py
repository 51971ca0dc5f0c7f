"""`dxr-node analyze`: the pipeline over many paths in one process, without the node.

Here, above both wings, because ``--history`` reads the node's database while the
pipeline itself never imports the node (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from dxr_node.engine.analyze import error_analysis
from dxr_node.engine.image import ImageLoadError, to_display_uint8
from dxr_node.engine.result import STATUS_ERROR, STATUS_OK, ProblemCode
from dxr_node.fileio import write_durably
from dxr_node.node.database import is_postgres_url
from dxr_node.node.store import Store, StoreError
from dxr_node.pipeline import HistorySource, PipelineResult, process_file, result_json
from dxr_node.reports.review import ReplacedObject

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
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
    earlier = _written_srs(out_dir) if out_dir is not None else []
    statuses = []
    for source in args.paths:
        result, written = _analyze_one(source, args, history, out_dir, earlier)
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


def _written_srs(out_dir: Path) -> list[ReplacedObject]:
    """The SRs already in ``--out``: a re-analysed image's new SR names its earlier one
    (same series, other content) as its predecessor."""
    found = []
    for path in sorted(out_dir.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
                "Modality", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"])
            if ds.get("Modality") == "SR":
                found.append(ReplacedObject("SR", str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                            str(ds.SeriesInstanceUID)))
        except (OSError, AttributeError, pydicom.errors.InvalidDicomError):
            continue  # not one of ours, or unreadable: nothing it could replace
    return found


def _analyze_one(source: str, args: argparse.Namespace, history: HistorySource | None,
                 out_dir: Path | None, earlier: list[ReplacedObject]
                 ) -> tuple[PipelineResult, list[Path]]:
    kinds = ("SR", "SC", "GSPS", "PDF") if out_dir else ()
    started = time.perf_counter()
    try:
        result = process_file(source, kinds=kinds, history=history,
                              pixel_spacing_mm=args.pixel_spacing, sex=args.sex,
                              age_years=args.age, replaces=earlier)
    except ImageLoadError as exc:
        return PipelineResult(error_analysis(source, str(exc), started), None, []), []
    except Exception as exc:  # a bug must not stop the other images
        log.debug("analysis of %s failed", source, exc_info=True)  # DXR_NODE_DEBUG=1
        reason = f"internal error: {type(exc).__name__}: {exc}"
        return PipelineResult(error_analysis(source, reason, started,
                                             ProblemCode.INTERNAL_ERROR), None, []), []
    written: list[Path] = []
    if out_dir is not None:
        from dxr_node.reports import render_overlay, write_objects

        try:
            written = write_objects(result.objects, out_dir)
            if result.radiograph is not None and result.radiograph.dataset is None:
                written.append(_write_overlay_png(result, result.radiograph.pixels, source,
                                                  out_dir, render_overlay))
        except OSError as exc:  # disk full, permissions: the numbers still stand
            problem = f"report objects not written: {exc.strerror or exc}"
            return replace(result, report_problem=problem), written
    return result, written


def _write_overlay_png(result: PipelineResult, pixels: np.ndarray, source: str,
                       out_dir: Path, render: Callable[..., np.ndarray]) -> Path:
    """Non-DICOM inputs have no study to attach objects to: write the overlay as PNG."""
    import cv2

    rgb = render(to_display_uint8(pixels), result.analysis, result.interpretation)
    target = out_dir / f"{Path(source).stem}_dxr_overlay.png"
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode the overlay of {source} as PNG")
    write_durably(target, out_dir / f".{target.name}.{os.getpid()}.part",
                  lambda handle: handle.write(png.tobytes()))
    return target


def _open_history(path: str) -> HistorySource | None:
    if not is_postgres_url(path) and not Path(path).is_file():
        print(f"dxr-node: --history {path}: no such database", file=sys.stderr)
        return None
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
