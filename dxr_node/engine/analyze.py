"""One radiograph in, one Analysis out: locate MC2-4, measure the shafts, QC, indices.

Pure: no I/O beyond reading the image (in `analyze_path`), no global state, so it runs
the same in the CLI, in a node worker process and in the tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

from dxr_node import ALGORITHM_NAME, __version__
from dxr_node.engine import indices
from dxr_node.engine.image import ImageLoadError, Radiograph, load_radiograph
from dxr_node.engine.locate import (
    HandLocation,
    LocatedBone,
    LocateError,
    locate_upright,
    location_to_input,
)
from dxr_node.engine.pose import Point, Pose, other_hand
from dxr_node.engine.profile import (
    EDGE_AT_WINDOW_BORDER,
    ShaftMeasurement,
    measure_shaft,
    shared_blur_px,
)
from dxr_node.engine.result import (
    BONE_NAMES,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_REJECTED,
    Analysis,
    BoneMeasurement,
    Problem,
    known_mm,
)
from dxr_node.engine.result import ProblemCode as Code

ALGORITHM = {"name": ALGORITHM_NAME, "version": __version__}

# DXR measures a band of the central shaft: its length as a fraction of the bone length.
BAND_FRACTION = 0.20
# A short or narrow-waisted shaft (children) may flare within that band: measure it once
# more over the narrower central band before giving up on it.
SHORT_BAND_FRACTION = 0.10
# Search half-widths across the shaft, in the locator's width estimates: the second only
# when the bone's edge met the first's border.
SEARCH_WINDOWS = (1.1, 1.6)
# Coarsest pixel spacing that still resolves a ~1-2 mm cortex with several pixels.
MAX_SPACING_MM = 0.2
# Plausible adult/adolescent mid-shaft geometry (mm); outside it the fit is not trusted.
WIDTH_RANGE_MM = (4.0, 14.0)
CHILD_MIN_WIDTH_MM = 3.0  # metacarpals of school-age children (toddlers are rejected)
THICKNESS_RANGE_MM = (0.3, 4.5)
MCI_RANGE = (0.2, 0.85)
# Metacarpals II-IV of one hand are alike: larger spreads mean a bone was mislocated.
MAX_WIDTH_RATIO = 1.6
MAX_LENGTH_RATIO = 1.45
MAX_MCI_RATIO = 1.8
PAEDIATRIC = "paediatric"
UNRESOLVED_BLUR = ("cortex not resolved: its blur cannot be told from its thickness, and no "
                   "other bone of the image gave the blur")


def analyze_path(path: str | Path, pixel_spacing_mm: float | None = None,
                 ) -> tuple[Analysis, Radiograph | None]:
    """Load and analyse one file; unreadable input gives an "error" Analysis."""
    started = time.perf_counter()
    try:
        radiograph = load_radiograph(path, pixel_spacing_mm)
    except ImageLoadError as exc:
        return error_analysis(str(path), str(exc), started), None
    return analyze(radiograph, started=started), radiograph


def error_analysis(source: str, reason: str, started: float | None = None,
                   code: Code = Code.UNREADABLE) -> Analysis:
    elapsed = (time.perf_counter() - started) * 1000 if started is not None else 0.0
    return Analysis(source=source, status=STATUS_ERROR,
                    problems=(Problem.of(code, reason),), laterality=None,
                    laterality_tag=None, pixel_spacing_mm=None, pixel_spacing_source=None,
                    image_rows=0, image_cols=0, algorithm=dict(ALGORITHM), elapsed_ms=elapsed)


def analyze(radiograph: Radiograph, started: float | None = None) -> Analysis:
    started = time.perf_counter() if started is None else started
    pixels = radiograph.pixels
    spacing = radiograph.pixel_spacing_mm
    reasons: list[Problem] = []
    fatal = False

    if spacing is None:
        reasons.append(Problem.of(Code.NO_SPACING,
                                  radiograph.spacing_problem or "no pixel spacing"))
        reasons.append(Problem.of(Code.RATIO_ONLY,
                                  "millimetre values not reported: ratio measures only"))
    elif radiograph.spacing_problem:  # e.g. an ignored --pixel-spacing
        reasons.append(Problem.of(Code.NO_SPACING, radiograph.spacing_problem))
    if spacing is not None and spacing > MAX_SPACING_MM:
        reasons.append(Problem.of(Code.COARSE_SPACING,
                                  f"resolution too coarse: pixel spacing {spacing:.3f} mm "
                                  f"> {MAX_SPACING_MM} mm"))
        fatal = True

    # Only a header spacing is trusted for the locator's absolute size check: one typed on
    # the command line for an export may be a rough assumption.
    header_spacing = spacing if radiograph.pixel_spacing_source != "command line" else None
    expected = _image_laterality(radiograph)
    # Located and measured on the hand turned upright (a film gives the same numbers
    # however it was stored); reported in the input's pixels.
    upright, pose = pixels, Pose(0, False, pixels.shape)
    try:
        upright, pose, upright_location = locate_upright(pixels, header_spacing, expected)
    except LocateError as exc:
        upright_location = HandLocation(
            bones={}, laterality=None, rotation_deg=None, paediatric=False,
            problems=(Problem.of(Code.NOT_A_HAND, f"not a hand radiograph: {exc}"),))
    location = location_to_input(upright_location, pose)
    for problem in location.problems:
        reasons.append(problem)
        # "MC4 shaft cut by the field edge" loses one bone; anything else, the hand.
        fatal = fatal or (problem.rejection and problem.bone is None)
    if location.paediatric:
        reasons.append(Problem.of(Code.PAEDIATRIC, PAEDIATRIC))
    if location.laterality and expected and location.laterality != expected:
        # The locator reads the image as PA; seen AP it shows the other hand.
        seen_ap = expected != radiograph.laterality_tag
        shown = other_hand(location.laterality) if seen_ap else location.laterality
        reasons.append(Problem.of(Code.LATERALITY,
                                  f"laterality disagreement: image shows {shown}"
                                  f"{' (AP view)' if seen_ap else ''}, "
                                  f"header says {radiograph.laterality_tag}"))
        fatal = True  # the bones were named for the other hand: never measured as they are

    bones = {} if fatal else {
        name: bone_to_input(bone, pose)
        for name, bone in _measure_bones(upright, upright_location, spacing, reasons).items()}
    spacing_source = radiograph.pixel_spacing_source
    if spacing is not None and bones:
        if _spacing_implausible(bones, location.paediatric):
            widths = [known_mm(b.width_mm) for b in bones.values()]
            reasons.append(Problem.of(
                Code.SPACING_MISMATCH,
                f"pixel spacing {spacing:.3f} mm ({spacing_source}) is implausible for this "
                f"hand: outer widths {min(widths):.1f}-{max(widths):.1f} mm; millimetre "
                f"values not reported"))
            bones = {name: _without_mm(bone) for name, bone in bones.items()}
            spacing = spacing_source = None
        else:
            for name, why in _size_problems(bones, location.paediatric).items():
                reasons.append(Problem.of(Code.IMPLAUSIBLE_SIZE, f"{name}: {why}", name))
                del bones[name]
    if len(bones) >= 2:  # a partial result is checked as strictly as a complete one
        inconsistency = hand_inconsistency(bones)
        if inconsistency:
            reasons.append(inconsistency_problem(inconsistency))
            bones = {}

    complete = not fatal and len(bones) == len(BONE_NAMES)
    fields = hand_indices(bones, spacing) if complete else {}
    return Analysis(
        source=radiograph.source,
        status=STATUS_OK if complete else STATUS_REJECTED,
        problems=tuple(reasons),
        laterality=location.laterality,
        laterality_tag=radiograph.laterality_tag,
        pixel_spacing_mm=spacing,
        pixel_spacing_source=spacing_source,
        image_rows=int(pixels.shape[0]),
        image_cols=int(pixels.shape[1]),
        bones=bones,
        paediatric=location.paediatric,
        hand_rotation_deg=location.rotation_deg,
        algorithm=dict(ALGORITHM),
        elapsed_ms=(time.perf_counter() - started) * 1000,
        **fields,
    )


def _image_laterality(radiograph: Radiograph) -> str | None:
    """The thumb side a header implies, as the locator reports it (PA, fingers up: a left
    hand has its thumb on the right): the header's laterality, the other one for an AP
    view (palm towards the tube). None without a header laterality."""
    tag = radiograph.laterality_tag
    if tag not in ("L", "R"):
        return None
    header = radiograph.dataset
    view = str(header.get("ViewPosition", "") or "").upper() if header is not None else ""
    if view == "AP":
        return other_hand(tag)
    return tag


def _measure_bones(pixels: np.ndarray, location: HandLocation, spacing: float | None,
                   reasons: list[Problem]) -> dict[str, BoneMeasurement]:
    shafts: dict[str, _Shaft] = {}
    for name in BONE_NAMES:
        if name in location.bones:
            shafts[name] = _measure_shaft(pixels, location.bones[name])
        elif not any(problem.bone == name for problem in location.problems):
            reasons.append(Problem.of(Code.BONE_NOT_FOUND, f"{name} not found", name))
    # A shaft whose own blur fit fell back is re-measured with the image's blur, taken from
    # the bones that resolved it. It is not measured on an assumed blur: where the free
    # blur degenerates, blur and cortex trade off against each other, and T follows
    # whichever blur is tried (by 10-20 % over 0.6-2.5 px on real films).
    blur = shared_blur_px(s.measurement for s in shafts.values()
                         if s.problem is None and s.measurement is not None)
    for name, shaft in shafts.items():
        if shaft.measurement is None or shaft.measurement.blur_source != "fallback":
            continue
        if blur is None:
            if shaft.problem is None:
                shafts[name] = replace(shaft, problem=UNRESOLVED_BLUR)
            continue
        again = _measure_shaft(pixels, location.bones[name], blur)
        if again.problem is None or shaft.problem is not None:
            shafts[name] = again
        else:
            shafts[name] = replace(again, problem=f"with the image's blur ({blur:.1f} px), "
                                                  f"{again.problem}")
    radial = _radial_direction(location.bones)
    bones = {}
    for name, shaft in shafts.items():
        if shaft.problem:
            code = Code.IMPLAUSIBLE_MCI if shaft.implausible_mci else Code.SHAFT_UNMEASURED
            reasons.append(Problem.of(code, f"{name}: {shaft.problem}", name))
            continue
        if shaft.note:
            reasons.append(Problem.of(Code.CENTRAL_BAND, f"{name}: {shaft.note}", name))
        bones[name] = _bone_measurement(location.bones[name], shaft, spacing, radial)
    return bones


@dataclass(frozen=True)
class _Shaft:
    measurement: ShaftMeasurement | None
    problem: str | None  # why the measurement cannot be used
    band_fraction: float  # band length used, as a fraction of the bone length
    note: str | None = None  # how it was measured, when not the standard way
    implausible_mci: bool = False  # the problem is the plausibility check, not the fit


def _measure_shaft(pixels: np.ndarray, located: LocatedBone,
                   blur_sigma_px: float | None = None) -> _Shaft:
    """Measure over the standard band; when only the band's flaring ends spoil it (a short
    child's bone), once more over the central short band."""
    shaft = _fit_band(pixels, located, BAND_FRACTION, blur_sigma_px)
    if shaft.measurement is not None and shaft.measurement.band_flares:
        short = _fit_band(pixels, located, SHORT_BAND_FRACTION, blur_sigma_px)
        if short.problem is None:
            return replace(short, note=f"measured over the central {SHORT_BAND_FRACTION:.0%} "
                                       f"of its length ({shaft.problem})")
    return shaft


def _fit_band(pixels: np.ndarray, located: LocatedBone, fraction: float,
              blur_sigma_px: float | None) -> _Shaft:
    try:
        for window in SEARCH_WINDOWS:
            measurement = measure_shaft(
                pixels, located.center_rc, located.axis_angle_deg,
                band_half_length_px=fraction * located.length_px / 2,
                search_half_width_px=window * located.width_estimate_px + 6,
                blur_sigma_px=blur_sigma_px,
            )
            # The locator's width is a quick estimate: a bone wider than it meets the
            # window's border, and is looked at once more through a wider one.
            if measurement.problem != EDGE_AT_WINDOW_BORDER:
                break
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        # A numerically degenerate shaft is a measurement failure, not a crash.
        return _Shaft(None, f"shaft fit failed ({type(exc).__name__}: {exc})", fraction)
    if measurement.problem:
        return _Shaft(measurement, measurement.problem, fraction)
    problem = _consistency_problem(measurement)
    return _Shaft(measurement, problem, fraction, implausible_mci=problem is not None)


def _consistency_problem(shaft: ShaftMeasurement) -> str | None:
    mci = indices.metacarpal_index(shaft.cortical_thickness_px, shaft.width_px)
    if not MCI_RANGE[0] <= mci <= MCI_RANGE[1]:
        return f"implausible metacarpal index {mci:.2f}"
    return None


def _spacing_implausible(bones: dict[str, BoneMeasurement], paediatric: bool) -> bool:
    """Every bone (two at least) too narrow or too wide alike: the spacing is wrong."""
    if len(bones) < 2:
        return False
    widths = [known_mm(b.width_mm) for b in bones.values()]
    low, high = CHILD_MIN_WIDTH_MM if paediatric else WIDTH_RANGE_MM[0], WIDTH_RANGE_MM[1]
    return all(w < low for w in widths) or all(w > high for w in widths)


def _size_problems(bones: dict[str, BoneMeasurement], paediatric: bool) -> dict[str, str]:
    low = CHILD_MIN_WIDTH_MM if paediatric else WIDTH_RANGE_MM[0]
    problems = {}
    for name, bone in bones.items():
        width, thickness = known_mm(bone.width_mm), known_mm(bone.cortical_thickness_mm)
        if not low <= width <= WIDTH_RANGE_MM[1]:
            problems[name] = f"implausible outer width {width:.2f} mm"
        elif not THICKNESS_RANGE_MM[0] <= thickness <= THICKNESS_RANGE_MM[1]:
            problems[name] = f"implausible cortical thickness {thickness:.2f} mm"
    return problems


def _without_mm(bone: BoneMeasurement) -> BoneMeasurement:
    return replace(bone, cortical_thickness_mm=None, width_mm=None, medullary_width_mm=None,
                   length_mm=None, vpa_mm=None, cortical_thickness_sd_mm=None,
                   width_sd_mm=None)


def _bone_measurement(located: LocatedBone, measured: _Shaft, spacing: float | None,
                      radial: np.ndarray | None) -> BoneMeasurement:
    shaft = measured.measurement
    if shaft is None:  # only shafts without a problem are turned into bones
        raise ValueError(f"{located.name}: no shaft measurement to report")
    return bone_from_shaft(located.name, shaft, measured.band_fraction, located.length_px,
                           located.proximal_rc, located.distal_rc, spacing, radial)


def bone_from_shaft(name: str, shaft: ShaftMeasurement, band_fraction: float,
                    length_px: float, proximal_rc: tuple[float, float],
                    distal_rc: tuple[float, float], spacing: float | None,
                    radial: Any = None, reader_positioned: bool = False) -> BoneMeasurement:
    """A bone's measurement from its shaft fit (shared by the automatic path and a
    reader's re-measurement). ``radial``: (d_row, d_col) towards the thumb, or None."""
    # Edge lines from the shaft fit's refined axis and centre; offsets are across-axis
    # distances (direction (cos a, sin a) in (row, col)) from the given centre.
    theta = math.radians(shaft.axis_angle_deg)
    along = np.array([-math.sin(theta), math.cos(theta)])  # (d_row, d_col), distal
    across = np.array([math.cos(theta), math.sin(theta)])
    center = np.asarray(shaft.center_rc, float)
    half = band_fraction * length_px / 2

    def segment(offset: float) -> tuple[tuple[float, float], tuple[float, float]]:
        middle = center + (offset - shaft.center_offset_px) * across
        a, b = middle - half * along, middle + half * along
        return (float(a[0]), float(a[1])), (float(b[0]), float(b[1]))

    edges = [segment(o) for o in (shaft.outer_a_px, shaft.inner_a_px,
                                  shaft.inner_b_px, shaft.outer_b_px)]
    if radial is not None and float(np.dot(across, radial)) > 0:
        edges.reverse()  # side "a" is the radial (thumb) side
    outer_a, inner_a, inner_b, outer_b = edges

    def mm(px: float) -> float | None:
        return px * spacing if spacing is not None else None

    t_px, w_px = shaft.cortical_thickness_px, shaft.width_px
    return BoneMeasurement(
        name=name,
        cortical_thickness_px=t_px,
        width_px=w_px,
        length_px=length_px,
        cortical_thickness_mm=mm(t_px),
        width_mm=mm(w_px),
        medullary_width_mm=mm(shaft.medullary_width_px),
        length_mm=mm(length_px),
        mci=indices.metacarpal_index(t_px, w_px),
        vpa_mm=indices.vpa_mm(t_px * spacing, w_px * spacing) if spacing else None,
        center_rc=(float(center[0]), float(center[1])),
        axis_angle_deg=shaft.axis_angle_deg,
        n_profiles=shaft.n_profiles,
        n_rejected_profiles=shaft.n_rejected,
        cortical_thickness_sd_mm=mm(shaft.thickness_sd_px),
        width_sd_mm=mm(shaft.width_sd_px),
        roi_rc=(outer_a[0], outer_a[1], outer_b[1], outer_b[0]),
        outer_edge_a_rc=outer_a,
        inner_edge_a_rc=inner_a,
        inner_edge_b_rc=inner_b,
        outer_edge_b_rc=outer_b,
        proximal_rc=(float(proximal_rc[0]), float(proximal_rc[1])),
        distal_rc=(float(distal_rc[0]), float(distal_rc[1])),
        blur_sigma_px=shaft.blur_sigma_px,
        reader_positioned=reader_positioned,
    )


def inconsistency_problem(inconsistency: str) -> Problem:
    return Problem.of(Code.INCONSISTENT,
                      f"measurements internally inconsistent: {inconsistency}")


def hand_inconsistency(bones: dict[str, BoneMeasurement]) -> str | None:
    """Why bones of one hand cannot all be metacarpals II-IV measured right, or None."""
    def spread(values: list[float]) -> float:
        return max(values) / min(values)

    measured = list(bones.values())
    checks = (("outer width", [b.width_px for b in measured], MAX_WIDTH_RATIO),
              ("length", [b.length_px for b in measured], MAX_LENGTH_RATIO),
              ("metacarpal index", [b.mci for b in measured], MAX_MCI_RATIO))
    for label, values, limit in checks:
        if spread(values) > limit:
            listed = ", ".join(f"{b.name} {v:.2f}" for b, v in zip(measured, values, strict=True))
            return f"{label} differs too much between bones ({listed})"
    return None


def bone_to_input(bone: BoneMeasurement, pose: Pose) -> BoneMeasurement:
    """A bone measured on the upright image, in input pixels."""
    if pose.identity:
        return bone

    def segment(points: tuple[Point, Point]) -> tuple[Point, Point]:
        return pose.to_input(points[0]), pose.to_input(points[1])

    a, b, c, d = (pose.to_input(p) for p in bone.roi_rc)
    return replace(bone, center_rc=pose.to_input(bone.center_rc),
                   axis_angle_deg=pose.angle_to_input(bone.axis_angle_deg),
                   roi_rc=(a, b, c, d),
                   outer_edge_a_rc=segment(bone.outer_edge_a_rc),
                   inner_edge_a_rc=segment(bone.inner_edge_a_rc),
                   inner_edge_b_rc=segment(bone.inner_edge_b_rc),
                   outer_edge_b_rc=segment(bone.outer_edge_b_rc),
                   proximal_rc=pose.to_input(bone.proximal_rc),
                   distal_rc=pose.to_input(bone.distal_rc))


def _radial_direction(located: dict[str, LocatedBone]) -> np.ndarray | None:
    """Unit vector (d_row, d_col) from MC4 toward MC2, i.e. toward the thumb."""
    if "MC2" not in located or "MC4" not in located:
        return None
    vector = np.subtract(located["MC2"].center_rc, located["MC4"].center_rc)
    norm = float(np.hypot(*vector))
    return vector / norm if norm > 0 else None


def hand_indices(bones: dict[str, BoneMeasurement], spacing: float | None) -> dict:
    """The whole-hand fields of an Analysis from its measured bones."""
    measured = list(bones.values())
    fields: dict = {"mci": fmean(b.mci for b in measured)}
    if spacing is None:
        return fields
    vpa = fmean(known_mm(b.vpa_mm) for b in measured)
    fields.update(
        cortical_thickness_mm=fmean(known_mm(b.cortical_thickness_mm) for b in measured),
        width_mm=fmean(known_mm(b.width_mm) for b in measured),
        vpa_mm=vpa,
        porosity=0.0,
        porosity_measured=False,
        dxr_bmd_g_cm2=indices.dxr_bmd_g_cm2(vpa, 0.0),
        bhi=fmean(indices.bone_health_index(known_mm(b.cortical_thickness_mm),
                                            known_mm(b.width_mm), known_mm(b.length_mm))
                  for b in measured),
    )
    return fields
