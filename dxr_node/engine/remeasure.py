"""Re-measure one metacarpal at the ends a reader placed, and rebuild the hand's result.

A reader who sees a band on the wrong bone clicks that bone's proximal base and distal
head. The shaft is then measured exactly as the automatic path measures a located bone:
the same sub-pixel tube fit (``profile.measure_shaft``) over the central 20 % of the
given length (the central 10 % when that band flares), the same per-bone QC (fit
problems, MCI and size ranges) and, for the hand, the same cross-bone consistency check
and whole-hand indices.

The pieces of ``analyze.py`` this needs are private there (and that module is being
reworked), so the per-bone size checks are restated here; the limits, the bone's
measurement from its shaft fit, the whole-hand indices and the cross-bone check are
imported so that both paths always share them.

Pure, like the rest of the engine: pixels in, numbers out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

# The tube fit imports scipy.optimize on first use (about 0.5 s): load it with this
# module (the console imports it at start-up), not in a reader's first correction.
import scipy.optimize  # noqa: F401

from dxr_node.engine import indices
from dxr_node.engine.analyze import (
    BAND_FRACTION,
    CHILD_MIN_WIDTH_MM,
    MAX_SPACING_MM,
    MCI_RANGE,
    SHORT_BAND_FRACTION,
    THICKNESS_RANGE_MM,
    WIDTH_RANGE_MM,
    bone_from_shaft,
    hand_inconsistency,
    hand_indices,
    inconsistency_problem,
)
from dxr_node.engine.profile import ShaftMeasurement, measure_shaft
from dxr_node.engine.result import (
    BONE_NAMES,
    EXCLUDED_NOTE,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_REJECTED,
    Analysis,
    BoneMeasurement,
    Point,
    Problem,
    legacy_problem,
)
from dxr_node.engine.result import ProblemCode as Code

# A metacarpal's mid-shaft outer width is about 11-15 % of its length (adults and the
# phantoms): the first guess that sizes the profile search before the fit measures it.
WIDTH_PER_LENGTH = 0.14
MIN_LENGTH_PX = 40.0  # two clicks closer than this are a slip, not a bone
READER_NOTE = "positioned by the reader"
# Engine conclusions that a reader's placement of the bones overrides.
OVERRIDDEN_BY_READER = frozenset({Code.NOT_A_HAND, Code.FINGER_RAYS, Code.BONE_NOT_FOUND,
                                  Code.INCONSISTENT})


class RemeasureError(ValueError):
    """The reader's points cannot be measured (the message says why, for the reader)."""


@dataclass(frozen=True)
class Remeasured:
    bone: BoneMeasurement
    seconds: float  # time of the fit, for the reader-facing timing figure


def remeasure_bone(pixels: np.ndarray, spacing_mm: float | None, name: str,
                   proximal_rc: Point, distal_rc: Point, *,
                   paediatric: bool = False, radial_rc: Point | None = None) -> Remeasured:
    """Measure bone ``name`` between the reader's ``proximal_rc`` and ``distal_rc``.

    ``radial_rc`` is a unit (d_row, d_col) toward the thumb, so side "a" of the edges is
    the radial side as in the automatic result. Raises RemeasureError with the QC reason
    when the shaft there does not pass.
    """
    started = time.perf_counter()
    if name not in BONE_NAMES:
        raise RemeasureError(f"unknown bone {name!r}: expected one of {', '.join(BONE_NAMES)}")
    if spacing_mm is not None and spacing_mm > MAX_SPACING_MM:
        # As in the automatic path: such an image cannot resolve the cortex, wherever
        # the bone is placed.
        raise RemeasureError(f"resolution too coarse: pixel spacing {spacing_mm:.3f} mm "
                             f"> {MAX_SPACING_MM} mm")
    rows, cols = np.asarray(pixels).shape[:2]
    for label, (r, c) in (("proximal", proximal_rc), ("distal", distal_rc)):
        if not (math.isfinite(r) and math.isfinite(c) and 0 <= r < rows and 0 <= c < cols):
            raise RemeasureError(f"{name}: the {label} end ({r:.0f}, {c:.0f}) is outside "
                                 f"the image ({rows} x {cols})")
    d_row, d_col = distal_rc[0] - proximal_rc[0], distal_rc[1] - proximal_rc[1]
    length_px = math.hypot(d_row, d_col)
    if length_px < MIN_LENGTH_PX:
        raise RemeasureError(f"{name}: the two ends are only {length_px:.0f} pixels apart")
    # Same convention as the locator: proximal -> distal, degrees CCW from +col, rows down.
    angle = math.degrees(math.atan2(-d_row, d_col))
    center = ((proximal_rc[0] + distal_rc[0]) / 2, (proximal_rc[1] + distal_rc[1]) / 2)

    width_guess = WIDTH_PER_LENGTH * length_px
    shaft, fraction = _measure(pixels, center, angle, length_px, width_guess)
    if shaft is not None and shaft.width_px > 0 and abs(shaft.width_px / width_guess - 1) > 0.2:
        # The guess sized the search badly for this bone: search again around its width.
        again, again_fraction = _measure(pixels, center, angle, length_px, shaft.width_px)
        if again is not None and (_problem(again) is None or _problem(shaft) is not None):
            shaft, fraction = again, again_fraction
    problem = "shaft fit failed" if shaft is None else _problem(shaft)
    if shaft is None or problem:
        raise RemeasureError(f"{name}: {problem}")
    bone = bone_from_shaft(name, shaft, fraction, length_px, proximal_rc, distal_rc,
                           spacing_mm, radial_rc, reader_positioned=True)
    size = _size_problem(bone, paediatric)
    if size:
        raise RemeasureError(f"{name}: {size}")
    return Remeasured(bone, time.perf_counter() - started)


def _measure(pixels: np.ndarray, center: Point, angle: float, length_px: float,
             width_px: float) -> tuple[ShaftMeasurement | None, float]:
    """The automatic path's band logic: the standard band, then the central short band
    when only the flaring band ends spoil it."""
    shaft = _fit(pixels, center, angle, length_px, width_px, BAND_FRACTION)
    if shaft is not None and shaft.band_flares:
        short = _fit(pixels, center, angle, length_px, width_px, SHORT_BAND_FRACTION)
        if short is not None and _problem(short) is None:
            return short, SHORT_BAND_FRACTION
    return shaft, BAND_FRACTION


def _fit(pixels: np.ndarray, center: Point, angle: float, length_px: float, width_px: float,
         fraction: float) -> ShaftMeasurement | None:
    try:
        return measure_shaft(pixels, center, angle,
                             band_half_length_px=max(1.0, fraction * length_px / 2),
                             search_half_width_px=1.1 * width_px + 6)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        return None  # numerically degenerate: a measurement failure, not a crash


def _problem(shaft: ShaftMeasurement) -> str | None:
    if shaft.problem:
        return shaft.problem
    mci = indices.metacarpal_index(shaft.cortical_thickness_px, shaft.width_px)
    if not MCI_RANGE[0] <= mci <= MCI_RANGE[1]:
        return f"implausible metacarpal index {mci:.2f}"
    return None


def _size_problem(bone: BoneMeasurement, paediatric: bool) -> str | None:
    if bone.width_mm is None or bone.cortical_thickness_mm is None:
        return None
    low = CHILD_MIN_WIDTH_MM if paediatric else WIDTH_RANGE_MM[0]
    if not low <= bone.width_mm <= WIDTH_RANGE_MM[1]:
        return f"implausible outer width {bone.width_mm:.2f} mm"
    if not THICKNESS_RANGE_MM[0] <= bone.cortical_thickness_mm <= THICKNESS_RANGE_MM[1]:
        return f"implausible cortical thickness {bone.cortical_thickness_mm:.2f} mm"
    return None


def radial_direction(analysis: Analysis) -> Point | None:
    """Unit (d_row, d_col) from MC4 toward MC2 (the thumb) of a result, when it has both."""
    bones = analysis.bones
    if "MC2" not in bones or "MC4" not in bones:
        return None
    d_row = bones["MC2"].center_rc[0] - bones["MC4"].center_rc[0]
    d_col = bones["MC2"].center_rc[1] - bones["MC4"].center_rc[1]
    norm = math.hypot(d_row, d_col)
    return (d_row / norm, d_col / norm) if norm > 0 else None


# --- the whole hand --------------------------------------------------------------------


def with_bones(analysis: Analysis, bones: dict[str, BoneMeasurement],
               excluded: tuple[str, ...] = ()) -> Analysis:
    """``analysis`` with its bones replaced and every hand value recomputed.

    Reasons the engine gave about a bone the reader has since positioned or excluded
    are dropped (they describe a measurement that no longer exists); a bone the reader
    excluded is named in the reasons. The hand is complete ("ok") with all three bones
    measured and mutually consistent, as in the automatic path.
    """
    touched = {name for name, bone in bones.items() if bone.reader_positioned} | set(excluded)
    problems = [p for p in analysis.problems
                if p.bone not in touched and p.code not in OVERRIDDEN_BY_READER]
    problems += [Problem.of(Code.READER_EXCLUDED, f"{name}: {EXCLUDED_NOTE}", name)
                 for name in excluded]
    ordered = {name: bones[name] for name in BONE_NAMES if name in bones}
    if len(ordered) >= 2:
        inconsistency = hand_inconsistency(ordered)
        if inconsistency:
            problems.append(inconsistency_problem(inconsistency))
    complete = len(ordered) == len(BONE_NAMES) and not any(
        p.code is Code.INCONSISTENT for p in problems)
    hand = hand_indices(ordered, analysis.pixel_spacing_mm) if complete else {}
    cleared = dict.fromkeys(("cortical_thickness_mm", "width_mm", "mci", "vpa_mm",
                             "dxr_bmd_g_cm2", "bhi"))
    return replace(analysis, **{**cleared, **hand, "porosity": 0.0, "porosity_measured": False},
                   bones=ordered, problems=tuple(problems),
                   status=STATUS_OK if complete else STATUS_REJECTED)


# --- the stored JSON form back to dataclasses -------------------------------------------


def analysis_from_dict(data: dict[str, Any]) -> Analysis:
    """Inverse of ``Analysis.to_dict`` (the form the node's store keeps)."""
    known = {f.name for f in fields(Analysis)}
    values = {k: v for k, v in data.items() if k in known}
    if "problems" in data:
        values["problems"] = tuple(Problem.from_dict(p) for p in data["problems"] or ())
    else:
        error = data.get("status") == STATUS_ERROR
        values["problems"] = tuple(legacy_problem(str(text), error)
                                   for text in data.get("reasons") or ())
    values["bones"] = {name: bone_from_dict(b) for name, b in (data.get("bones") or {}).items()}
    values["algorithm"] = dict(values.get("algorithm") or {})
    return Analysis(**values)


def bone_from_dict(data: dict[str, Any]) -> BoneMeasurement:
    known = {f.name for f in fields(BoneMeasurement)}
    values = {k: v for k, v in data.items() if k in known}

    def point(value: Any) -> Point:
        return (float(value[0]), float(value[1]))

    for key in ("center_rc", "proximal_rc", "distal_rc"):
        values[key] = point(values[key])
    values["roi_rc"] = tuple(point(p) for p in values["roi_rc"])
    for key in ("outer_edge_a_rc", "inner_edge_a_rc", "inner_edge_b_rc", "outer_edge_b_rc"):
        values[key] = tuple(point(p) for p in values[key])
    return BoneMeasurement(**values)
