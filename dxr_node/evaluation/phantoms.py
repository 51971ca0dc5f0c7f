"""The engine against the truth of the wide phantom family (``dxr_node.phantom.wide``).

Each case is rendered, encoded as DICOM and decoded again (``radiograph_from_dataset``,
the loader the node uses), analysed, and scored: status and cause, which reported bones
lie on the wrong bone, T and W errors on the bones placed right, and the DXR-BMD error
against the BMD the true T and W give.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np

from dxr_node.engine import indices
from dxr_node.engine.analyze import analyze
from dxr_node.engine.image import radiograph_from_dataset
from dxr_node.engine.result import BONE_NAMES, STATUS_OK, Analysis
from dxr_node.evaluation.realworld import is_paediatric, rejection_cause
from dxr_node.phantom.wide import WideCase, case_dataset

CANDIDATES = ("MC1", "MC2", "MC3", "MC4", "MC5")
# A ROI centre is "on the shaft" of a bone when it lies within its outer radius of the
# bone's axis, between 15 % and 85 % of its length, and nearer that axis than any other
# metacarpal's.
SHAFT_SPAN = (0.15, 0.85)


def analyse_case(case: WideCase) -> Analysis:
    radiograph = radiograph_from_dataset(case_dataset(case), case.name)
    return analyze(radiograph)


def _axis_distance(point: np.ndarray, bone: dict) -> tuple[float, float]:
    """Distance of ``point`` from a bone's axis segment and its position along it (0-1)."""
    a, b = np.asarray(bone["proximal_rc"], float), np.asarray(bone["distal_rc"], float)
    t = float(np.dot(point - a, b - a) / np.dot(b - a, b - a))
    nearest = a + np.clip(t, 0, 1) * (b - a)
    return float(np.linalg.norm(point - nearest)), t


def on_bone(name: str, center_rc: Any, truth: dict) -> bool:
    point = np.asarray(center_rc, float)
    spacing = truth["pixel_spacing_mm"]
    distances = {n: _axis_distance(point, truth["bones"][n])[0] for n in CANDIDATES}
    distance, along = _axis_distance(point, truth["bones"][name])
    half_width_px = truth["bones"][name]["width_mm"] / 2 / spacing
    return (min(distances, key=distances.__getitem__) == name and distance <= half_width_px
            and SHAFT_SPAN[0] <= along <= SHAFT_SPAN[1])


def band_offset(name: str, center_rc: Any, truth: dict) -> float:
    """How far the band's centre lies from the true mid-shaft along the bone, as a share
    of its length (distal positive): where the bone's ends were placed."""
    return _axis_distance(np.asarray(center_rc, float), truth["bones"][name])[1] - 0.5


def true_dxr_bmd(truth: dict) -> float:
    vpa = statistics.fmean(indices.vpa_mm(truth["bones"][n]["cortical_thickness_mm"],
                                          truth["bones"][n]["width_mm"]) for n in BONE_NAMES)
    return indices.dxr_bmd_g_cm2(vpa, 0.0)


def score(analysis: Analysis, truth: dict) -> dict[str, Any]:
    """JSON-safe verdict of one analysis against its truth."""
    wrong, errors = [], {}
    for name, bone in analysis.bones.items():
        if not on_bone(name, bone.center_rc, truth):
            if analysis.status == STATUS_OK:
                wrong.append(name)
            continue
        if bone.cortical_thickness_mm is not None:
            true = truth["bones"][name]
            errors[name] = {"T": bone.cortical_thickness_mm - true["cortical_thickness_mm"],
                            "W": bone.width_mm - true["width_mm"],
                            "along": band_offset(name, bone.center_rc, truth)}
    bmd_error = None
    if analysis.status == STATUS_OK and analysis.dxr_bmd_g_cm2 is not None and not wrong:
        bmd_error = analysis.dxr_bmd_g_cm2 - true_dxr_bmd(truth)
    return {"status": analysis.status, "cause": rejection_cause(analysis),
            "reasons": list(analysis.reasons), "wrong": wrong, "errors": errors,
            "dxr_bmd": analysis.dxr_bmd_g_cm2, "dxr_bmd_true": true_dxr_bmd(truth),
            "dxr_bmd_error": bmd_error, "laterality": analysis.laterality,
            "paediatric": is_paediatric(analysis),
            "laterality_true": truth["laterality"]}


def run_case(case: WideCase) -> dict[str, Any]:
    started = time.perf_counter()
    analysis = analyse_case(case)
    record = score(analysis, case.truth)
    record.update(name=case.name, features=case.truth["features"],
                  seconds=round(time.perf_counter() - started, 3),
                  bones={n: {"center_rc": list(b.center_rc), "mci": b.mci}
                         for n, b in analysis.bones.items()})
    return record


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [r for r in records if r["status"] == STATUS_OK]
    causes: dict[str, int] = {}
    for r in records:
        if r["status"] != STATUS_OK:
            causes[r["cause"]] = causes.get(r["cause"], 0) + 1
    t_err = [e["T"] for r in measured for e in r["errors"].values()]
    w_err = [e["W"] for r in measured for e in r["errors"].values()]
    bmd = [r["dxr_bmd_error"] / r["dxr_bmd_true"] * 100 for r in measured
           if r["dxr_bmd_error"] is not None]
    right_bones = sum(len(r["errors"]) for r in measured)
    offsets = [abs(e["along"]) for r in measured for e in r["errors"].values()]
    return {
        "cases": len(records), "measured": len(measured), "rejected_by_cause": causes,
        "wrong_bones_reported_ok": {r["name"]: r["wrong"] for r in records if r["wrong"]},
        "bones_on_target": right_bones, "bones_reported_ok": 3 * len(measured),
        "T_mae_mm": statistics.fmean(map(abs, t_err)) if t_err else None,
        "W_mae_mm": statistics.fmean(map(abs, w_err)) if w_err else None,
        "T_max_abs_mm": max(map(abs, t_err), default=None),
        "W_max_abs_mm": max(map(abs, w_err), default=None),
        "band_offset_mae": statistics.fmean(offsets) if offsets else None,
        "bands_off_midshaft_5pct": sum(o > 0.05 for o in offsets),
        "dxr_bmd_error_mae_percent": statistics.fmean(map(abs, bmd)) if bmd else None,
        "dxr_bmd_error_max_percent": max(map(abs, bmd), default=None),
        # Every wide hand is an adult's.
        "called_paediatric": [r["name"] for r in records if r.get("paediatric")],
        "laterality_wrong": [r["name"] for r in measured
                             if r["laterality"] and r["laterality"] != r["laterality_true"]],
    }


def rms_cv(groups: list[list[float]]) -> tuple[float | None, list[float]]:
    """Root-mean-square coefficient of variation (%) over groups with >= 2 values."""
    cvs = [statistics.stdev(v) / statistics.fmean(v) * 100 for v in groups if len(v) >= 2]
    if not cvs:
        return None, []
    return math.sqrt(statistics.fmean(c * c for c in cvs)), cvs
