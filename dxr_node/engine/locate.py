"""Find the hand, its laterality and metacarpals II-IV on a PA hand radiograph.

Classical image analysis, no trained weights, no known pixel spacing needed:

1. A copy downscaled to ``WORK_SIZE``; bright bands along the border (collimator
   shadow, plate edges) are cut from the exposed field. The hand mask is the largest
   component above a triangle or Otsu threshold, on the image or on copies with the
   background (gradient, or local level) removed: among those showing five fingers
   arranged like a hand, the one with the smoothest outline wins, but a mask outlined on
   soft tissue (the bones of a spread hand) yields to a hand mask around it with a wider
   palm; black corners padded by a rotation count as unexposed. Nothing hand-like
   (no palm, not five rays side by side) is "not a hand radiograph".
2. The palm is the largest inscribed disc of the mask: its radius sets the working
   scale, so hands imaged at very different resolutions are handled alike. Fingers are
   what an opening with a disc of about half that radius removes; fingers held together
   are split by the bone ridges running along them.
3. The thumb is the outer finger set apart by the wider angular gap; the other four give
   the fingers-up direction, and the thumb's side the laterality.
4. In a canonical fingers-up frame at a fixed palm radius, each ray is tracked from the
   middle of its finger into the carpus along the bones' ridge (Hessian) map. Joint gaps
   are the valleys of the intensity along the ray; the MCP joint is a clear gap followed
   by a long gap-free run, chosen jointly for the three rays (MCP joints at one level,
   lengths alike). The base ends at the CMC gap just beyond where the shaft's ridge
   fades (or dips, over a carpal bone it overlaps).
5. On the input pixels, each axis is refitted to the mid-points of the shaft's edges and
   each end placed at the near edge of the darkest joint gap (a base with no clear gap
   keeps its end from step 4); the mid-shaft centre is half-way between the ends.
6. Growth plates (extra gaps at the heads), an unossified carpus or short metacarpals
   mark children and toddlers.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import cv2
import numpy as np

from dxr_node.engine.identity import (
    MAX_PROXIMAL_CONTINUATION,
    IdentityCheck,
    Row,
    check_row,
    continues_proximally,
    find_row,
    local_peaks,
)
from dxr_node.engine.pose import Pose, upright_pose
from dxr_node.engine.result import Problem
from dxr_node.engine.result import ProblemCode as Code

WORK_SIZE = 512  # longest side of the copy used to find the hand
PALM_RADIUS_PX = 120.0  # palm inscribed radius in the canonical frame
RIDGE_SIGMA = 0.07 * PALM_RADIUS_PX  # scale of the ridge map that shows metacarpal shafts
BONE_WIDTHS_PER_SIGMA = 3.0  # a ridge map shows bones about this many sigmas wide
# Toddler hands: the carpus is mostly cartilage, the metacarpals short for the palm,
# and (when the pixel spacing is known) the third metacarpal shorter than this.
TODDLER_CARPAL_BONE_FRACTION = 0.25
TODDLER_LENGTH_PER_PALM_RADIUS = 1.05
TODDLER_MC3_LENGTH_MM = 38.0
# Metacarpal length per outer width (median of the bones): toddlers' are stubby (real
# toddlers seen 4.2-5.4, adults and adolescents 6.1-11).
TODDLER_LENGTH_PER_WIDTH = 5.6
ADULT_LENGTH_PER_WIDTH = 6.1  # one bone this slender: no toddler's hand
# Stubbier than this is no metacarpal, even a toddler's (seen: toddlers 4.2-5.4, adults
# 6.1-11; mislocations in the carpus or forearm 2.8-3.7).
MIN_LENGTH_PER_WIDTH = 3.9
# Where phalanges were taken for metacarpals, the MCP joint is looked for this far
# (palm radii) beyond the finger's base instead of 1.8.
DEEPER_MCP_REACH = 3.0
CHILD_CARPAL_BONE_FRACTION = 0.57  # carpus partly cartilage
# A growth plate: a second dark band beside the deepest one at the MCP joint, at least
# this share of its depth, from PHYSIS_CLEARANCE beyond its extent to PHYSIS_REACH from
# its centre (bone widths).
PHYSIS_DEPTH = 0.5
PHYSIS_CLEARANCE = 0.1
PHYSIS_REACH = 1.5
PHYSIS_LINE_UP = 0.06  # widths: the band at the same place across the bone
PHYSIS_MIN_BONES = 2  # showing a growth plate of the same kind
PHYSIS_KINDS = ("beyond the joint", "before the joint")  # distal, proximal of the deepest band
# The deepest band, taken for the MCP joint, lies within this many widths of the bone's
# end as found (a child's head may end at its physis, 0.4-0.9 widths short of the joint);
# farther, the end is not where it was found and no band can be placed beside the joint.
PHYSIS_JOINT_REACH = 1.25
# Padding is a flat polygon of few straight sides: a corner (3-6) or, where an image
# already padded is turned again, its corners joined around the border (12-13 seen); a
# background clipped to its lowest value follows the hand's outline (many more).
MAX_PADDING_VERTICES = 16
MAX_FINGER_GAP_DEG = 40.0  # between neighbouring long fingers seen from the palm centre
OUTLINE_ON_BACKGROUND = 0.2  # outline level, background 0 to hand inside 1
WIDER_PALM = 1.25  # palm radius of a hand mask around a mask of the bones
MIN_PALM_FRACTION = 0.09  # palm radius per short side of the image (hands seen: >= 0.12)
PALM_CANDIDATE_SHARE = 0.7  # other discs this share of the largest may be the palm
# MC2 / MC4 length: about 1.17 in adults; below this the thumb side is in doubt (with
# the thumb unseen, below the second figure).
MIN_MC2_TO_MC4_LENGTH = 0.95
MIN_MC2_TO_MC4_LENGTH_UNSEEN_THUMB = 1.05
MAX_MC4_HEAD_LAG = 0.3  # lengths MC4's head may lie proximal of MC3's

FINGER_NAMES = ("index", "middle", "ring", "little")
BONE_FOR_FINGER = {"index": "MC2", "middle": "MC3", "ring": "MC4", "little": "MC5"}

Point = tuple[float, float]


@dataclass(frozen=True)
class LocatedBone:
    """One metacarpal found in the image (all coordinates in input pixels, [row, col])."""

    name: str  # "MC2" | "MC3" | "MC4"
    center_rc: Point  # mid-shaft centre
    axis_angle_deg: float  # proximal->distal, deg CCW from +col, rows down; fingers up = 90
    proximal_rc: Point  # base end along the axis
    distal_rc: Point  # head end (MCP joint)
    length_px: float
    width_estimate_px: float  # rough outer width, to size the profile search


@dataclass(frozen=True)
class HandLocation:
    bones: dict[str, LocatedBone]
    laterality: str | None  # "L" | "R" from the thumb side
    rotation_deg: float | None  # fingers-up = 0, clockwise positive; None: no hand
    paediatric: bool  # open growth plates seen
    problems: tuple[Problem, ...]
    # For previews and diagnostics: hand outline and finger rays in input pixels.
    outline_rc: tuple[Point, ...] = ()
    rays_rc: tuple[tuple[Point, Point], ...] = ()
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class LocateError(ValueError):
    """The input is not an image the locator can work on (wrong shape, empty)."""


def locate_metacarpals(pixels: np.ndarray, pixel_spacing_mm: float | None = None,
                       expected_laterality: str | None = None) -> HandLocation:
    """Locate the hand, its laterality and metacarpals II-IV in a bone-bright image.

    Everything is found from the image alone; ``pixel_spacing_mm``, when known, only
    adds an absolute size check for toddler hands. ``expected_laterality`` ("L"/"R", the
    image laterality the header implies for a PA view) decides the thumb side only when
    the thumb itself is not seen, and a row of shafts read against it is refused.
    Results are in input pixels (see ``locate_upright``).
    """
    _, pose, location = locate_upright(pixels, pixel_spacing_mm, expected_laterality)
    return location_to_input(location, pose)


def locate_upright(pixels: np.ndarray, pixel_spacing_mm: float | None = None,
                   expected_laterality: str | None = None
                   ) -> tuple[np.ndarray, Pose, HandLocation]:
    """(upright image, its pose, the location in the upright image's pixels).

    The hand is first turned upright by whole quarter turns and a mirror (see ``pose``),
    so a film gives the same bones however it was stored; measuring on the upright image
    too makes the numbers the same. ``location_to_input`` maps a location back.
    """
    image = np.asarray(pixels)
    if image.ndim != 2 or min(image.shape) < 64:
        raise LocateError(f"expected a 2-D greyscale image of at least 64x64, got {image.shape}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise LocateError("the image holds NaN or infinite pixel values")
    downscaled = _downscale(image)
    readings = _hand_and_fingers(downscaled.work, downscaled.field)
    pose = _pose(image.shape, readings)
    if not pose.identity:
        image = pose.upright(image)
        downscaled = _downscale(image)
        readings = _hand_and_fingers(downscaled.work, downscaled.field)
    location = _locate_in_readings(image, pixel_spacing_mm,
                                   pose.laterality_in_upright(expected_laterality),
                                   downscaled, readings)
    return image, pose, location


def _pose(shape: tuple[int, int], readings: list[tuple]) -> Pose:
    """The upright pose of the best reading: its long fingers' direction, its thumb (five
    rays arranged like a hand) or none."""
    if not readings:
        return upright_pose(shape, None, None)
    _, palm_centre, palm_radius, fingers = readings[0]
    thumb = None
    if len(fingers) == 5 and _hand_like(fingers):
        thumb = _split_thumb(fingers, palm_centre, palm_radius)[0].tip - palm_centre
    return upright_pose(shape, _common_direction(fingers), thumb)


def location_to_input(location: HandLocation, pose: Pose) -> HandLocation:
    """A location found on the upright image, in input pixels."""
    if pose.identity:
        return location
    bones = {name: replace(bone, center_rc=pose.to_input(bone.center_rc),
                           proximal_rc=pose.to_input(bone.proximal_rc),
                           distal_rc=pose.to_input(bone.distal_rc),
                           axis_angle_deg=pose.angle_to_input(bone.axis_angle_deg))
             for name, bone in location.bones.items()}
    rotation = (None if location.rotation_deg is None
                else pose.rotation_to_input(location.rotation_deg))
    return replace(location, bones=bones, rotation_deg=rotation,
                   laterality=pose.laterality_to_input(location.laterality),
                   outline_rc=tuple(pose.to_input(p) for p in location.outline_rc),
                   rays_rc=tuple((pose.to_input(a), pose.to_input(b))
                                 for a, b in location.rays_rc))


def _locate_in_readings(image: np.ndarray, pixel_spacing_mm: float | None,
                        expected_laterality: str | None, downscaled: _Downscaled,
                        readings: list[tuple]) -> HandLocation:
    """The first reading of the hand whose metacarpals hold, else why the best failed."""
    exposed, scale, grey_range = downscaled.field, downscaled.scale, downscaled.grey_range
    if not readings:
        return _failed("no hand found: not a hand radiograph", code=Code.NOT_A_HAND)
    tried = []
    for mask, palm_centre, palm_radius, fingers in readings:
        location = _locate_in_reading(
            image, pixel_spacing_mm, expected_laterality,
            _WorkScale(scale, exposed, grey_range, mask, palm_centre, palm_radius), fingers)
        if not location.problems or any(p.code is Code.TODDLER for p in location.problems):
            return location
        tried.append(location)
    return tried[0]  # why the best reading failed


def _locate_in_reading(image: np.ndarray, pixel_spacing_mm: float | None,
                       expected_laterality: str | None, work_scale: _WorkScale,
                       fingers: list[_Finger]) -> HandLocation:
    """The metacarpals of one reading of the hand (its mask, palm and finger rays)."""
    scale, mask = work_scale.scale, work_scale.mask
    palm_centre, palm_radius = work_scale.palm_centre, work_scale.palm_radius
    outline = _outline(mask, scale)
    if len(fingers) == 4 and _side_by_side(fingers):
        # Four rays side by side: the thumb is out of the field or lies along the index.
        # Both ends are tried as the index; the row of metacarpals must say which.
        tries = [_locate_rays(image, pixel_spacing_mm, work_scale, fingers[::-1], "L", False),
                 _locate_rays(image, pixel_spacing_mm, work_scale, fingers, "R", False)]
        if expected_laterality in ("L", "R"):
            # The header names the hand: only that end can be the index.
            tries = [t for t in tries if t.laterality == expected_laterality]
        passed = [t for t in tries if not t.problems]
        if len(passed) == 1:
            return passed[0]
        if len(passed) == 2:
            return _failed("bone identity uncertain: four finger rays and either end could be "
                           "the index", outline, code=Code.IDENTITY_UNCERTAIN)
        why = min(tries, key=lambda t: len(t.problems)).problems[0].text
        failed = _failed("not a hand radiograph or bone identity uncertain: four finger rays "
                         f"and no row of metacarpals beside them ({why})", outline,
                         code=Code.FINGER_RAYS)
    elif len(fingers) != 5:
        failed = _failed(f"not a hand radiograph: {len(fingers)} finger rays found, need 5",
                         outline, code=Code.FINGER_RAYS)
    elif not _hand_like(fingers):
        failed = _failed("not a hand radiograph: the rays are not arranged like fingers",
                         outline, code=Code.FINGER_RAYS)
    else:
        thumb, long_fingers, thumb_evidence = _split_thumb(fingers, palm_centre, palm_radius)
        # Thumb last in clockwise order = thumb on the image right with fingers up = left.
        laterality = "L" if thumb is fingers[-1] else "R"
        failed = _locate_rays(image, pixel_spacing_mm, work_scale, long_fingers, laterality)
        failed.details["thumb_evidence"] = float(thumb_evidence)
        if expected_laterality in ("L", "R") and laterality != expected_laterality:
            # The header names the other hand. An adducted thumb can look like the little
            # finger, and a header can be wrong: read from either end the row may hold.
            # Only a hand that reads the header's way alone is measured.
            header_fingers = fingers[-2::-1][:4] if expected_laterality == "L" else fingers[1:5]
            by_header = _locate_rays(image, pixel_spacing_mm, work_scale, header_fingers,
                                     expected_laterality)
            if not by_header.problems and failed.problems:
                return by_header
            # The hand the image shows is kept: image and header then disagree (unknown).
            failed = replace(_failed("bone identity uncertain: the thumb the image shows is "
                                     "on the side the header's laterality does not put it",
                                     outline, code=Code.IDENTITY_UNCERTAIN),
                             laterality=laterality)
        elif not failed.problems or any(p.code is Code.TODDLER for p in failed.problems):
            return failed
    # The rays did not give metacarpals that hold: look for the row of metacarpal shafts
    # itself across the palm, in the direction most rays point.
    from_row = _locate_from_row(image, pixel_spacing_mm, work_scale, fingers,
                                expected_laterality)
    if from_row is not None and not from_row.problems:
        if expected_laterality in ("L", "R") and from_row.laterality != expected_laterality:
            return replace(_failed("bone identity uncertain: the row of metacarpals puts the "
                                   "thumb on the side the header laterality does not", outline,
                                   code=Code.IDENTITY_UNCERTAIN), laterality=from_row.laterality)
        return from_row
    return failed


def _locate_from_row(image: np.ndarray, pixel_spacing_mm: float | None, work: _WorkScale,
                     fingers: list[_Finger], expected_laterality: str | None
                     ) -> HandLocation | None:
    """MC2-MC4 from the row of metacarpal shafts (MC2-MC5) across the palm, fingers up
    along the rays' common direction. The thumb side must be established twice: by the
    hand going on beyond the row (thenar, thumb) and by a thumb ray diverging on that
    side (or, without one, by the header's laterality); where the hand runs out of the
    field on the side it reaches less far, by the ray or header alone (the identity check
    then holds the labels to their shafts). A row that turns out to be the proximal
    phalanges is passed over once for the row beyond it. None when no row is found."""
    up = _common_direction(fingers)
    if up is None:
        return None
    rotation_deg = 90.0 - math.degrees(math.atan2(-up[1], up[0]))
    zoom = PALM_RADIUS_PX / (work.palm_radius / work.scale)
    frame = _canonical(_normalise(image, *work.grey_range), work.palm_centre / work.scale,
                       rotation_deg, zoom)
    ridge = _ridge_map(frame.image, RIDGE_SIGMA)
    to_frame = frame.matrix @ np.diag([1 / work.scale, 1 / work.scale, 1.0])
    hand = cv2.warpAffine(work.mask, to_frame, frame.image.shape[::-1],
                          flags=cv2.INTER_NEAREST)
    bases = frame.from_input(np.array([f.base for f in fingers]) / work.scale)
    top = float(np.median(bases[:, 1]))  # where the fingers leave the palm
    field = cv2.warpAffine(work.exposed, to_frame, frame.image.shape[::-1],
                           flags=cv2.INTER_NEAREST)
    bottom = top + 2.2 * PALM_RADIUS_PX
    located = None
    for _ in range(2):
        row = find_row(ridge, hand, top, bottom, PALM_RADIUS_PX, field)
        if row is None:
            return located
        laterality = "L" if row.xs[0] > row.xs[3] else "R"  # thumb towards +x: left hand
        thumb_side = _thumb_ray_side(fingers, frame, work.scale, up, row)
        named = thumb_side or expected_laterality
        if not row.side_from_extent and named is not None:
            # The hand runs out of the field on one side: the thumb side rests on the
            # thumb ray or the header alone, and the identity check (field-aware) must
            # hold it.
            if named != laterality:
                row = replace(row, xs=row.xs[::-1])
            laterality = named
        elif named != laterality:
            return located  # the thumb side is not established twice
        virtual = []
        for x in row.xs:
            tip_base = np.array([[x, row.level_y - 1.7 * PALM_RADIUS_PX],
                                 [x, row.level_y - 0.8 * PALM_RADIUS_PX]])
            tip, base = frame.to_input(tip_base) * work.scale
            length = float(np.linalg.norm(tip - base))
            virtual.append(_Finger(tip, base, (tip - base) / length, length, 0.0))
        shafts = {name: np.array([x, row.level_y])
                  for name, x in zip(("MC2", "MC3", "MC4"), row.xs, strict=False)}
        located = _locate_rays(image, pixel_spacing_mm, work, virtual, laterality, False,
                               shafts)
        located.details["located_by_row"] = 1.0
        if located.details["proximal_continuation"] <= MAX_PROXIMAL_CONTINUATION:
            return located
        # A row of proximal phalanges (the fingers' bases were found at their middle
        # joints): the metacarpals lie beyond it, looked for once more there.
        top, bottom = row.level_y + 0.6 * PALM_RADIUS_PX, bottom + PALM_RADIUS_PX
    return located


def _thumb_ray_side(fingers: list[_Finger], frame: _Canonical, scale: float,
                    up: np.ndarray, row: Row) -> str | None:
    """The laterality a thumb ray implies ("L": thumb towards +x fingers up), or None.

    The thumb is a ray diverging outwards by 20 degrees or more from the fingers'
    common direction, its base beside the row's outer shaft on that side; rays on both
    sides, or none, say nothing."""
    centre = float(np.mean(row.xs))
    half_span = 0.5 * abs(row.xs[0] - row.xs[3])
    sides = set()
    for finger in fingers:
        cosine = float(np.dot(finger.direction, up))
        if cosine > math.cos(math.radians(20)):
            continue  # a finger along the others
        base, tip = frame.from_input(np.array([finger.base, finger.tip]) / scale)
        outward = tip[0] - base[0]
        offset = base[0] - centre
        if offset * outward > 0 and abs(offset) >= 0.6 * half_span:
            sides.add("L" if offset > 0 else "R")
    return sides.pop() if len(sides) == 1 else None


def _common_direction(fingers: list[_Finger]) -> np.ndarray | None:
    """Mean direction of the rays within 30 degrees of their median direction (three at
    least): the thumb and stray protrusions are left out."""
    if len(fingers) < 2:
        return None
    angles = np.array([math.atan2(f.direction[1], f.direction[0]) for f in fingers])
    median = math.atan2(np.median(np.sin(angles)), np.median(np.cos(angles)))
    close = [f.direction for f, a in zip(fingers, angles, strict=True)
             if abs((a - median + math.pi) % (2 * math.pi) - math.pi) <= math.radians(30)]
    if len(close) < 3:
        return None  # two rays can agree by chance (a finger and the forearm's edge)
    up = np.mean(close, axis=0)
    return up / np.linalg.norm(up)


def _locate_rays(image: np.ndarray, pixel_spacing_mm: float | None, work: _WorkScale,
                 long_fingers: list[_Finger], laterality: str, thumb_seen: bool = True,
                 shafts: dict[str, np.ndarray] | None = None,
                 beyond: dict[str, float] | None = None) -> HandLocation:
    """MC2-MC4 along the rays of the index, middle, ring (and little) fingers; with
    ``shafts`` (canonical-frame points on MC2-MC4 from the row of shafts), from there;
    with ``beyond`` (canonical y per bone), only bones whose head lies proximal of it."""
    scale, mask = work.scale, work.mask
    palm_centre, palm_radius = work.palm_centre, work.palm_radius
    outline = _outline(mask, scale)
    up = np.mean([f.direction for f in long_fingers], axis=0)
    rotation_deg = 90.0 - math.degrees(math.atan2(-up[1], up[0]))
    rotation_deg = (rotation_deg + 180.0) % 360.0 - 180.0

    zoom = PALM_RADIUS_PX / (palm_radius / scale)
    frame = _canonical(_normalise(image, *work.grey_range), palm_centre / scale, rotation_deg,
                       zoom)
    smooth = cv2.GaussianBlur(frame.image, (0, 0), 1.0)
    ridge = _ridge_map(frame.image, RIDGE_SIGMA)
    to_frame = frame.matrix @ np.diag([1 / scale, 1 / scale, 1.0])
    inside = cv2.warpAffine(work.exposed, to_frame, frame.image.shape[::-1],
                            flags=cv2.INTER_NEAREST)

    problems: list[Problem] = []
    bones: dict[str, LocatedBone] = {}
    canonical_bones: dict[str, _CanonicalBone] = {}
    rays = []
    candidates: dict[str, list[_CanonicalBone]] = {}
    refined: dict[str, _Refined] = {}
    little: list[_CanonicalBone] = []
    for finger, finger_name in zip(long_fingers, FINGER_NAMES, strict=False):
        name = BONE_FOR_FINGER[finger_name]
        rays.append((_rc(finger.base / scale), _rc(finger.tip / scale)))
        if name == "MC5" and not thumb_seen and shafts is None:
            # The thumb unseen, the ray read as the little finger may be the thumb: its
            # metacarpal is looked for too (see THUMB_HEAD_SHIFT).
            base, tip = frame.from_input(np.array([finger.base, finger.tip]) / scale)
            little = _metacarpal_candidates(smooth, ridge, base, tip)
        if name != "MC5" and shafts is not None:
            candidates[name] = _shaft_candidates(smooth, ridge, shafts[name])
        elif name != "MC5":
            base, tip = frame.from_input(np.array([finger.base, finger.tip]) / scale)
            candidates[name] = _metacarpal_candidates(
                smooth, ridge, base, tip, 1.8 if beyond is None else DEEPER_MCP_REACH)
    if beyond is not None:
        candidates = {name: [c for c in found if c.distal[1] >= beyond.get(name, -math.inf)]
                      for name, found in candidates.items()}
    chosen = _even_out_lengths(_choose_consistent(candidates))
    expected = _expected_lengths(chosen)
    for name, bone in sorted(chosen.items()):
        if not _inside(inside, bone):
            problems.append(Problem.of(Code.BONE_CUT, f"{name} shaft cut by the field edge",
                                       name))
            continue
        canonical_bones[name] = bone
        located = _to_input(name, bone, frame)
        # Look for its base as far as the longest of the hand's rays implies: one ray
        # found short must not keep its own CMC gap out of reach.
        reach = located.length_px * max(1.0, expected[name] / max(bone.length, 1e-9))
        refined[name] = _refine_at_full_resolution(image, located, reach)
    # The checks below (maturity, identity) judge each bone by its own ends; only the
    # bases the usual proportions chose are measured (they assume the labels checked).
    bones.update({name: r.bone(r.own_length) for name, r in refined.items()})
    proportioned = _choose_bases(refined)
    problems.extend(Problem.of(Code.BONE_NOT_FOUND, f"{name} not found", name)
                    for name in candidates if not candidates[name])

    out_of_line = _inconsistent(canonical_bones)
    in_line = {name: bone for name, bone in bones.items() if name not in out_of_line}
    continuation = continues_proximally(frame.image, {
        name: (*frame.from_input(np.array([b.proximal_rc[::-1], b.distal_rc[::-1]])),
               b.width_estimate_px * zoom) for name, b in in_line.items()}) if in_line else 0.0
    # Maturity from all bones chosen: medians stand one misplaced bone. Short bones call
    # the hand a toddler's only when two agree and end at the carpus (a toddler's is
    # cartilage): bones running on into further long bones are phalanges.
    splayed = _splayed({name: canonical_bones[name] for name in in_line})
    paediatric, toddler, features = _maturity(
        image, smooth, inside, canonical_bones, bones, pixel_spacing_mm,
        len(in_line) >= 2 and continuation <= MAX_PROXIMAL_CONTINUATION and not splayed)
    for name in out_of_line:
        problems.append(Problem.of(
            Code.BONE_NOT_FOUND, f"{name} not found (out of line with the other metacarpals)",
            name))
        del canonical_bones[name], bones[name]
    if toddler:
        problems.insert(0, Problem.of(Code.TODDLER, "bones too small to measure (toddler)"))
    elif splayed:
        problems.insert(0, Problem.of(Code.IDENTITY_UNCERTAIN, "bone identity uncertain: the "
                                      "bones found cross or splay apart, as no metacarpals do"))
    elif features.get("length_per_width", math.inf) < MIN_LENGTH_PER_WIDTH:
        problems.insert(0, Problem.of(Code.IDENTITY_UNCERTAIN, "bone identity uncertain: the "
                                      "bones found are too stubby for metacarpals"))
    elif features.get("mc3_length_mm", math.inf) < TODDLER_MC3_LENGTH_MM:
        problems.insert(0, Problem.of(Code.IDENTITY_UNCERTAIN, "bone identity uncertain: MC3 "
                                      "is too short for an adult's at the header's spacing "
                                      "and not stubby like a toddler's"))
    hand = cv2.warpAffine(mask, to_frame, frame.image.shape[::-1], flags=cv2.INTER_NEAREST)
    if canonical_bones:
        if continuation > MAX_PROXIMAL_CONTINUATION and beyond is None:
            # Phalanges taken for metacarpals (long or flexed fingers): the metacarpals
            # lie beyond them. Looked for once more there, under the same checks.
            deeper = {name: 0.5 * (bone.proximal[1] + bone.distal[1])
                      for name, bone in canonical_bones.items()}
            retry = _locate_rays(image, pixel_spacing_mm, work, long_fingers, laterality,
                                 thumb_seen, shafts, deeper)
            if not retry.problems:
                return retry
        identity = _check_identity(_shaft_ridges(frame.image, ridge, canonical_bones), hand,
                                   inside, canonical_bones, laterality, thumb_seen)
        features["identity_shafts"] = identity.shafts
        features["identity_labelled"] = identity.labelled
        features["thumb_side_margin"] = identity.thumb_side_margin
        features["identity_confidence"] = identity.confidence
        for name in identity.dropped:
            problems.append(Problem.of(Code.BONE_NOT_FOUND, f"{name} not found (no shaft "
                                       "where the row of metacarpals puts it)", name))
            del bones[name], canonical_bones[name]
        if identity.problem and not toddler:
            problems.insert(0, Problem.of(Code.IDENTITY_UNCERTAIN, identity.problem))
        elif continuation > MAX_PROXIMAL_CONTINUATION:
            problems.insert(0, Problem.of(
                Code.IDENTITY_UNCERTAIN, "bone identity uncertain: the bones run on "
                "proximally into further long bones (phalanges taken for metacarpals?)"))
        elif not toddler and _thumb_read_as_little_finger(little, canonical_bones):
            problems.insert(0, Problem.of(Code.IDENTITY_UNCERTAIN, "bone identity uncertain: "
                                          "the ray read as the little finger has its "
                                          "metacarpal head far proximal of MC4's (a thumb?)"))
        elif not toddler and _mc2_shorter_than_mc4(bones, thumb_seen):
            # MC2 is the longest metacarpal, MC4 about 15 % shorter: labels read from the
            # wrong side of the hand would make "MC2" (then MC5) the shorter one.
            problems.insert(0, Problem.of(Code.IDENTITY_UNCERTAIN, "bone identity uncertain: "
                                          "MC2 is not longer than MC4 (thumb side in doubt)"))
        elif not toddler and _mc4_head_lags(proportioned):
            problems.insert(0, Problem.of(Code.IDENTITY_UNCERTAIN, "bone identity uncertain: "
                                          "MC4's head lies far proximal of MC3's (the MCP "
                                          "joints found are not in a row)"))
    features["palm_radius_px"] = palm_radius / scale
    features["proximal_continuation"] = continuation
    if not toddler and any(p.code == Code.IDENTITY_UNCERTAIN for p in problems):
        # Growth plates on bones that may not be metacarpals say nothing of the hand.
        paediatric = False
    bones = {name: proportioned[name] for name in bones}
    return HandLocation(bones=bones, laterality=laterality, rotation_deg=rotation_deg,
                        paediatric=paediatric, problems=tuple(problems), outline_rc=outline,
                        rays_rc=tuple(rays), details=features)


def _thumb_read_as_little_finger(little: list[_CanonicalBone],
                                 bones: dict[str, _CanonicalBone]) -> bool:
    """Four rays, the thumb unseen, read with one end as the index: the ray read as the
    little finger is the thumb when none of its best three metacarpal candidates has its
    head less than THUMB_HEAD_SHIFT of MC4's length proximal of MC4's head (the best
    alone may be a segment running into the carpus). With the little finger missing from
    the rays, the row of shafts alone can be read from the thumb's end (MC1 counted as
    MC5): dha_3270 turned 12 degrees was so reported with MC2 and MC4 swapped."""
    if not little or "MC4" not in bones:
        return False
    mc4 = bones["MC4"]
    shifts = [candidate.distal[1] - mc4.distal[1] for candidate in little[:3]]
    return bool(min(shifts) > THUMB_HEAD_SHIFT * mc4.length)


# MC5's head lies a little proximal of MC4's (0.1-0.34 of a length on the real films,
# the most from a poor candidate on a turned wrist film); the thumb's MCP joint far
# proximal of the MCP line (0.52-0.54 on dha_3270), near MC2's distal third: MC1 is
# about two thirds of MC2's length, its base beside MC2's.
THUMB_HEAD_SHIFT = 0.4


def _mc2_shorter_than_mc4(bones: dict[str, LocatedBone], thumb_seen: bool) -> bool:
    """MC2 not clearly the longer: with the thumb unseen the side rests on the hand's
    outline alone, so the lengths must confirm it with a margin."""
    if "MC2" not in bones or "MC4" not in bones:
        return not thumb_seen  # nothing to confirm the side with
    ratio = MIN_MC2_TO_MC4_LENGTH if thumb_seen else MIN_MC2_TO_MC4_LENGTH_UNSEEN_THUMB
    return bones["MC2"].length_px < ratio * bones["MC4"].length_px


def _mc4_head_lags(bones: dict[str, LocatedBone]) -> bool:
    """MC4's head more than MAX_MC4_HEAD_LAG lengths proximal of MC3's along the bones'
    mean axis: the MCP joints lie in a gentle arc (MC4's 0.04-0.24 lengths behind on the
    real films), so one set of heads was found in the phalanges (flexed fingers)."""
    if "MC3" not in bones or "MC4" not in bones:
        return False
    axis = np.sum([np.subtract(b.distal_rc, b.proximal_rc) / b.length_px
                   for b in bones.values()], axis=0)
    axis /= max(float(np.linalg.norm(axis)), 1e-9)
    lag = float(np.dot(np.subtract(bones["MC3"].distal_rc, bones["MC4"].distal_rc), axis))
    return lag > MAX_MC4_HEAD_LAG * float(np.median([b.length_px for b in bones.values()]))


@dataclass(frozen=True)
class _WorkScale:
    """The hand found on the downscaled working copy."""

    scale: float  # input -> work
    exposed: np.ndarray  # exposed field (work pixels)
    grey_range: tuple[float, float]
    mask: np.ndarray
    palm_centre: np.ndarray  # (x, y) work pixels
    palm_radius: float  # work pixels


def _side_by_side(fingers: list[_Finger]) -> bool:
    angles = np.degrees([f.rel_angle for f in fingers])
    return bool(np.diff(angles).max() <= MAX_FINGER_GAP_DEG)


def _shaft_ridges(canonical: np.ndarray, ridge: np.ndarray,
                  bones: dict[str, _CanonicalBone]) -> np.ndarray:
    """The ridge map at the scale of the bones found: the palm's scale (RIDGE_SIGMA) unless
    the bones are wider than it resolves as one ridge each (a narrow palm for its bones;
    each cortex would then stand out as a "shaft" of its own)."""
    width = float(np.median([b.width for b in bones.values()]))
    if width <= BONE_WIDTHS_PER_SIGMA * RIDGE_SIGMA:
        return ridge
    return _ridge_map(canonical, width / BONE_WIDTHS_PER_SIGMA)


def _check_identity(ridge: np.ndarray, hand: np.ndarray, field: np.ndarray,
                    bones: dict[str, _CanonicalBone], laterality: str, thumb_seen: bool
                    ) -> IdentityCheck:
    axes = [b.distal - b.proximal for b in bones.values()]
    axis = np.mean([a / max(np.linalg.norm(a), 1e-9) for a in axes], axis=0) if axes else None
    if axis is None:
        return IdentityCheck("bone identity uncertain: no metacarpal found", {})
    # Fingers up, a left hand (PA) has its thumb on the right (+x).
    return check_row(ridge, hand, {n: b.centre for n, b in bones.items()},
                     axis / np.linalg.norm(axis), 1.0 if laterality == "L" else -1.0,
                     PALM_RADIUS_PX, thumb_seen, field)


def _failed(reason: str, outline: tuple[Point, ...] = (), *, code: Code) -> HandLocation:
    return HandLocation(bones={}, laterality=None, rotation_deg=None, paediatric=False,
                        problems=(Problem.of(code, reason),), outline_rc=outline)


def _rc(xy: np.ndarray) -> Point:
    return (float(xy[1]), float(xy[0]))


@dataclass(frozen=True)
class _Finger:
    tip: np.ndarray  # (x, y) work pixels
    base: np.ndarray  # where the finger leaves the palm
    direction: np.ndarray  # unit vector base -> tip
    length: float
    rel_angle: float  # angle of the tip around the palm centre, relative to the mean


class _Downscaled(NamedTuple):
    """The working copy of the image (longest side WORK_SIZE)."""

    work: np.ndarray  # normalised to 0..1 over the field; outside it, the background
    field: np.ndarray  # exposed field mask
    scale: float  # input -> work
    grey_range: tuple[float, float]  # (low, high) input grey levels


def _downscale(image: np.ndarray) -> _Downscaled:
    scale = min(1.0, WORK_SIZE / max(image.shape))
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    field = _exposed_field(small) & (1 - _padding(small))
    low, high = (float(v) for v in np.percentile(small[field > 0], [0.5, 99.5]))
    work = _normalise(small, low, high)
    work[field == 0] = np.percentile(work[field > 0], 2)
    return _Downscaled(work, field, scale, (low, high))


def _flatten_background(work: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Subtract a plane fitted to the darkest field pixels (heel effect, plate gradients)."""
    rows, cols = work.shape
    ys, xs = np.mgrid[0:rows:4, 0:cols:4]
    values = work[::4, ::4]
    inside = field[::4, ::4] > 0
    design = np.column_stack([np.ones(xs.size), xs.ravel() / cols, ys.ravel() / rows])
    keep = inside.ravel() & (values.ravel() <= np.percentile(values[inside], 30))
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(design[keep], values.ravel()[keep], rcond=None)
        residual = values.ravel() - design @ coef
        spread = np.percentile(np.abs(residual[keep]), 80) + 1e-4
        keep = inside.ravel() & (residual < 2 * spread)
    ys, xs = np.mgrid[0:rows, 0:cols]
    plane = coef[0] + coef[1] * xs / cols + coef[2] * ys / rows
    return np.clip(work - plane.astype(np.float32), 0, 1)


def _remove_local_background(work: np.ndarray) -> np.ndarray:
    """The image minus its opening by a disc wider than a hand is thick (strong, uneven
    background gradients); computed at a quarter of the size, which is plenty for it."""
    small = cv2.resize(work, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    background = cv2.morphologyEx(small, cv2.MORPH_OPEN, _disc(0.12 * min(small.shape)))
    background = cv2.resize(cv2.GaussianBlur(background, (0, 0), 2), work.shape[::-1],
                            interpolation=cv2.INTER_LINEAR)
    return np.clip(work - background, 0, 1)


def _exposed_field(image: np.ndarray) -> np.ndarray:
    """Mask of the exposed field: drops bright bands along the border (collimator shadow,
    unexposed plate edges), walking in from each side while most of the line is bright."""
    median, top = np.percentile(image, [50, 99.5])
    bright = image > median + 0.3 * (top - median)
    field = np.ones(image.shape, np.uint8)
    rows, cols = image.shape
    for axis, size in ((1, rows), (0, cols)):
        fill = bright.mean(axis=axis)
        for order in (range(size), range(size - 1, -1, -1)):
            depth = 0
            for index in order:
                if fill[index] < 0.5 or depth > 0.2 * size:
                    break
                depth += 1
            if depth:
                # A few more lines for the blurred edge of the band.
                band = list(order)[: depth + 3]
                if axis == 1:
                    field[band, :] = 0
                else:
                    field[:, band] = 0
    return field


def _padding(image: np.ndarray) -> np.ndarray:
    """Mask of flat polygons of the lowest value along the border: the corners padded by
    rotating or re-framing an image. Unexposed like a collimator shadow, and dark: left in,
    they would be taken for the background and the whole picture for the hand. (A
    background clipped to that value surrounds the hand: its outline is no polygon.)"""
    low, high = float(image.min()), float(image.max())
    flat = (image <= low + 1e-6 * max(high - low, 1.0)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(flat, connectivity=8)
    padding = np.zeros_like(flat)
    rows, cols = image.shape
    for label in range(1, count):
        x, y, width, height, area = stats[label]
        on_border = x == 0 or y == 0 or x + width == cols or y + height == rows
        if not on_border or not 0.002 * flat.size <= area <= 0.5 * flat.size:
            continue
        region = (labels == label).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polygon = cv2.approxPolyDP(max(contours, key=cv2.contourArea), 2.0, True)
        if len(polygon) <= MAX_PADDING_VERTICES:
            padding |= region
    # The interpolated rim of the padding is no darker than its inside: drop it too.
    return cv2.dilate(padding, _disc(2))


def _normalise(image: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - low) / (high - low), 0, 1).astype(np.float32)


def _hand_and_fingers(work: np.ndarray, field: np.ndarray) -> list[tuple]:
    """Readings of the hand, best first, each (mask, palm centre, palm radius, fingers):
    the soft-tissue threshold that shows five fingers with the smoothest outline, else
    the one showing most fingers; empty when nothing is found.

    Backgrounds differ (dark, grey, graded, edge-enhanced), so several classical
    thresholds are tried, on the image and on its background-flattened copy.
    """
    found = []  # (key, outline contrast, (mask, palm centre, palm radius, fingers))
    # Where a protrusion touching the field's edge is cut by it (the forearm).
    near_field_edge = cv2.erode(field, _disc(6)) == 0
    for image in (_flatten_background(work, field), work, _remove_local_background(work)):
        grey = (np.clip(cv2.GaussianBlur(image, (0, 0), 2) / max(image.max(), 1e-6), 0, 1)
                * 255).astype(np.uint8)
        # The same for every mask tried on this image: computed once.
        smooth = cv2.GaussianBlur(image, (0, 0), 1)
        background = float(np.percentile(smooth[field > 0], 5))
        for method in (cv2.THRESH_TRIANGLE, cv2.THRESH_OTSU):
            threshold, _ = cv2.threshold(grey, 0, 255, method)
            mask = _hand_mask(grey > threshold, field)
            if mask is None:
                continue
            dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
            if dist.max() < MIN_PALM_FRACTION * min(work.shape):
                continue  # no palm: a narrow structure such as a spine
            if dist.max() > max(work.shape):
                continue  # no background at all (OpenCV's distance is then "infinite")
            # A leak into the margins lengthens the outline more than it adds area.
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            ragged = sum(cv2.arcLength(c, True) for c in contours) / math.sqrt(mask.sum())
            contrast = _outline_contrast(smooth, background, field, mask)
            for palm_centre, palm_radius in _palm_candidates(dist):
                ridge = _ridge_map(image, 0.06 * palm_radius)
                # A larger opening also frees fingers held together (two fingers are
                # about as wide as the smaller disc).
                for opening in (0.45, 0.6):
                    fingers = _fingers(mask, dist, ridge, near_field_edge, palm_centre,
                                       palm_radius, opening)
                    key = (_hand_like(fingers), len(fingers) == 5, -abs(len(fingers) - 5),
                           -ragged, palm_radius)
                    found.append((key, contrast, (mask, palm_centre, palm_radius, fingers)))
                    if key[0]:
                        break  # a larger opening can only tie, and the first of equals wins
    if not found:
        return []
    key, contrast, best = max(found, key=lambda entry: entry[0])
    # A threshold between soft tissue and bone outlines the bones of a spread hand, which
    # also shows five rays like a hand, smoothly: its outline lies on soft tissue and its
    # "palm" is only the carpus. A hand mask around it, outlined on the background, with a
    # clearly wider palm, is the hand. (A mask leaking into the margins keeps the palm.)
    if contrast > OUTLINE_ON_BACKGROUND:
        wider = [entry for entry in found
                 if entry[0][:3] == key[:3] and entry[1] <= OUTLINE_ON_BACKGROUND
                 and entry[2][2] >= WIDER_PALM * best[2]
                 and (entry[2][0] & best[0]).sum() >= 0.9 * best[0].sum()]
        if wider:
            return [max(wider, key=lambda entry: entry[0])[2]]
        # Fingers held together or crossing show fewer rays on the whole hand's mask: it is
        # tried when the bones' own outline gives no metacarpals that hold, whatever its
        # palm (the bones' outline may take its "palm" in the forearm, as wide as a hand's).
        whole_hand = [entry for entry in found
                      if entry[1] <= OUTLINE_ON_BACKGROUND
                      and (entry[2][0] & best[0]).sum() >= 0.9 * best[0].sum()]
        if whole_hand:
            return [best, max(whole_hand, key=lambda entry: entry[0])[2]]
    return [best]


def _palm_candidates(dist: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Centres and radii of the largest inscribed discs that could be the palm: the
    largest, and up to two more nearly as large elsewhere (a wide forearm or a burned-in
    frame around the wrist can hold the largest disc)."""
    peak = float(dist.max())
    # Local maxima on a quarter-size copy: plenty for discs this large, and fast.
    small = dist[::4, ::4]
    dilated = cv2.dilate(small, _disc(max(1.0, 0.125 * peak)))
    ys, xs = np.nonzero((small >= dilated) & (small >= PALM_CANDIDATE_SHARE * peak))
    ys, xs = ys * 4, xs * 4
    order = np.argsort(-dist[ys, xs])
    top_y, top_x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    chosen = [(np.array([top_x, top_y], dtype=np.float64), peak)]
    for y, x in zip(ys[order], xs[order], strict=True):
        # Back on the full grid: the largest distance within the quarter-size cell.
        y0, x0 = max(0, y - 3), max(0, x - 3)
        cell = dist[y0:y + 4, x0:x + 4]
        dy, dx = np.unravel_index(int(np.argmax(cell)), cell.shape)
        y, x = y0 + dy, x0 + dx
        centre = np.array([x, y], dtype=np.float64)
        if all(np.linalg.norm(centre - c) >= r for c, r in chosen):
            chosen.append((centre, float(dist[y, x])))
        if len(chosen) == 3:
            break
    return chosen


def _outline_contrast(smooth: np.ndarray, background: float, field: np.ndarray,
                      mask: np.ndarray) -> float:
    """Level just outside the mask, from the background (0) to the mask's inside (1), on
    the smoothed image whose background level (within the field) is ``background``."""
    ring = (cv2.dilate(mask, _disc(4)) - cv2.dilate(mask, _disc(1))) & field
    inner = cv2.erode(mask, _disc(4))
    if not ring.any() or not inner.any():
        return 1.0
    inside = np.median(smooth[inner > 0])
    return float((np.median(smooth[ring > 0]) - background) / max(inside - background, 1e-6))


def _hand_like(fingers: list[_Finger]) -> bool:
    """Five rays, four of them side by side (no wide gap between neighbours), as in a
    hand; ribs or other protrusions of a non-hand image rarely line up so."""
    if len(fingers) != 5:
        return False
    angles = np.degrees([f.rel_angle for f in fingers])  # ordered; the thumb at one end
    return min(np.diff(angles[1:]).max(), np.diff(angles[:4]).max()) <= MAX_FINGER_GAP_DEG


def _hand_mask(foreground: np.ndarray, field: np.ndarray) -> np.ndarray | None:
    """Largest foreground component inside the field, holes filled, or None."""
    # Stay clear of the field edge, whose blurred rim would join the hand.
    mask = cv2.bitwise_and(foreground.astype(np.uint8), cv2.erode(field, _disc(3)))
    # Break thin bright lines (plate edges, collimator seams) that would join the hand.
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _disc(3))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < 0.03 * mask.size:
        return None
    mask = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


def _disc(radius: float) -> np.ndarray:
    size = 2 * max(1, int(round(radius))) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _fingers(mask: np.ndarray, dist: np.ndarray, ridge: np.ndarray, edge: np.ndarray,
             palm_centre: np.ndarray, palm_radius: float, opening: float) -> list[_Finger]:
    """Finger-like protrusions of the mask (what a half-palm-sized opening removes).

    ``dist`` is the mask's distance transform, ``edge`` the pixels near the field's edge.
    Fingers held together make one protrusion: it is split by the number of bone
    ridges running along it.
    """
    palm = _open_with_disc(dist, opening * palm_radius)
    protrusions = cv2.erode(mask & (1 - palm), _disc(1))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(protrusions, connectivity=4)
    found = []
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] < 0.2 * palm_radius**2:
            continue  # too small for a finger (checked again below, from the pixels)
        x, y, w, h = stats[label, :4]
        ys, xs = np.nonzero(labels[y:y + h, x:x + w] == label)
        ys, xs = ys + y, xs + x
        # A wide cut by the field edge is the forearm, not a finger.
        if len(xs) < 0.2 * palm_radius**2 or edge[ys, xs].sum() > 3 * palm_radius:
            continue
        points = np.column_stack([xs, ys]).astype(np.float64)
        centroid = points.mean(axis=0)
        _, vectors = np.linalg.eigh(np.cov((points - centroid).T))
        direction = vectors[:, 1]
        if np.dot(centroid - palm_centre, direction) < 0:
            direction = -direction
        along = (points - centroid) @ direction
        length = float(along.max() - along.min())
        width = len(xs) / max(length, 1.0)
        if length < 0.6 * palm_radius or width > 0.9 * palm_radius:
            continue
        tip = centroid + direction * along.max()
        base = centroid + direction * along.min()
        normal = np.array([-direction[1], direction[0]])
        for offset in _ridge_offsets(ridge, base, tip, normal, width, palm_radius):
            found.append((tip + offset * normal, base + offset * normal, direction, length))
    if not found:
        return []
    # Angles of the tips around the palm centre, relative to their mean direction; a
    # protrusion pointing away from most of the others is the forearm.
    unit = [(tip - palm_centre) / np.linalg.norm(tip - palm_centre) for tip, *_ in found]
    mean = np.sum(unit, axis=0)
    keep = [float(np.dot(u, mean)) > -0.2 * np.linalg.norm(mean) for u in unit]
    found = [f for f, k in zip(found, keep, strict=True) if k]
    unit = [u for u, k in zip(unit, keep, strict=True) if k]
    mean = np.sum(unit, axis=0)
    mean_angle = math.atan2(mean[1], mean[0])
    fingers = []
    for (tip, base, direction, length), u in zip(found, unit, strict=True):
        rel = (math.atan2(u[1], u[0]) - mean_angle + math.pi) % (2 * math.pi) - math.pi
        fingers.append(_Finger(tip, base, direction, length, rel))
    return sorted(fingers, key=lambda f: f.rel_angle)


def _open_with_disc(dist: np.ndarray, radius: float) -> np.ndarray:
    """Morphological opening by a Euclidean disc of the mask whose distance transform is
    ``dist``, through a second distance transform (a large disc as a structuring element
    is slow)."""
    core = (dist > radius).astype(np.uint8)
    return (cv2.distanceTransform(1 - core, cv2.DIST_L2, 5) <= radius).astype(np.uint8)


def _ridge_offsets(ridge: np.ndarray, base: np.ndarray, tip: np.ndarray, normal: np.ndarray,
                   width: float, palm_radius: float) -> list[float]:
    """Sideways offsets of the bone ridges along a protrusion: one per finger in it."""
    across = np.arange(-0.6 * width, 0.6 * width + 0.5, 0.5)
    sections = []
    for fraction in (0.3, 0.45, 0.6, 0.75):
        centre = base + fraction * (tip - base)
        profile = _sample(ridge, centre[0] + across * normal[0], centre[1] + across * normal[1])
        peaks = local_peaks(profile, 0.4 * profile.max(), int(0.25 * palm_radius / 0.5))
        sections.append(across[peaks])
    counts = [len(p) for p in sections]
    typical = max(sorted(set(counts)), key=counts.count)  # the most frequent count
    if typical < 2:
        return [0.0]
    offsets = np.mean([p for p in sections if len(p) == typical], axis=0)
    return [float(o) for o in offsets]


def _outline(mask: np.ndarray, scale: float) -> tuple[Point, ...]:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return ()
    contour = max(contours, key=cv2.contourArea)[:, 0, :] / scale
    return tuple((float(y), float(x)) for x, y in contour)


def _split_thumb(fingers: list[_Finger], palm_centre: np.ndarray, palm_radius: float):
    """(thumb, [index, middle, ring, little]) from five fingers ordered by angle.

    The thumb is the outer finger set apart by the wider angular gap; a shorter reach
    from the palm centre (the thumb is the shortest ray) adds to the evidence.
    """
    first, last = fingers[0], fingers[-1]
    gap_first = math.degrees(fingers[1].rel_angle - first.rel_angle)
    gap_last = math.degrees(last.rel_angle - fingers[-2].rel_angle)
    reach_first = np.linalg.norm(first.tip - palm_centre) / palm_radius
    reach_last = np.linalg.norm(last.tip - palm_centre) / palm_radius
    score_last = (gap_last - gap_first) + 15.0 * (reach_first - reach_last)
    if score_last >= 0:
        return last, fingers[-2::-1][:4], score_last
    return first, fingers[1:5], -score_last


@dataclass(frozen=True)
class _Canonical:
    """Fingers-up frame at a fixed palm radius; ``matrix`` maps input (x, y) to it."""

    image: np.ndarray
    matrix: np.ndarray  # 2x3, input pixel (x, y) -> canonical (x, y)
    inverse: np.ndarray  # 2x3, canonical -> input

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        xy = np.atleast_2d(np.asarray(xy, dtype=np.float64))
        return xy @ self.inverse[:, :2].T + self.inverse[:, 2]

    def from_input(self, xy: np.ndarray) -> np.ndarray:
        xy = np.atleast_2d(np.asarray(xy, dtype=np.float64))
        return xy @ self.matrix[:, :2].T + self.matrix[:, 2]


def _canonical(image: np.ndarray, centre_xy: np.ndarray, rotation_deg: float,
               zoom: float) -> _Canonical:
    """Rotate the input image counter-clockwise by rotation_deg (fingers up) and zoom."""
    matrix = cv2.getRotationMatrix2D((float(centre_xy[0]), float(centre_xy[1])),
                                     rotation_deg, zoom)
    rows, cols = image.shape
    corners = np.array([[0, 0], [cols, 0], [0, rows], [cols, rows]], dtype=np.float64)
    mapped = corners @ matrix[:, :2].T + matrix[:, 2]
    matrix[:, 2] -= mapped.min(axis=0)
    width, height = np.ceil(mapped.max(axis=0) - mapped.min(axis=0)).astype(int)
    if zoom < 1:  # anti-alias before the shrinking warp
        image = cv2.GaussianBlur(image, (0, 0), 0.5 / zoom)
    warped = cv2.warpAffine(image, matrix, (int(width), int(height)), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return _Canonical(warped, matrix, cv2.invertAffineTransform(matrix))


def _ridge_map(canonical: np.ndarray, sigma: float) -> np.ndarray:
    """Bright tubular structures of width about 3*sigma: minus the Hessian's lower eigenvalue."""
    smooth = cv2.GaussianBlur(canonical, (0, 0), sigma)
    dxx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0, ksize=3)
    dyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2, ksize=3)
    dxy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1, ksize=3)
    lower = 0.5 * (dxx + dyy) - np.sqrt(0.25 * (dxx - dyy) ** 2 + dxy**2)
    return np.maximum(-lower, 0) * sigma**2


def _sample(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear samples at float (x, y) positions (any shape); 0 outside the image."""
    xs = np.asarray(xs, dtype=np.float32)
    ys = np.asarray(ys, dtype=np.float32)
    # remap wants maps under 32767 on a side: fold the samples into rows of 1024 (the
    # padding's samples are dropped; zeros are cheaper to pad with than np.resize's repeats).
    count = xs.size
    padded = -(-count // 1024) * 1024
    flat_x = np.zeros(padded, np.float32)
    flat_y = np.zeros(padded, np.float32)
    flat_x[:count] = xs.ravel()
    flat_y[:count] = ys.ravel()
    map_x, map_y = flat_x.reshape(-1, 1024), flat_y.reshape(-1, 1024)
    values = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=0)
    return values.ravel()[:count].reshape(xs.shape)


def _best_line(ridge: np.ndarray, top: np.ndarray, heading_deg: float, length: float,
               lateral: float, spread_deg: float) -> tuple[np.ndarray, float, float]:
    """Straight segment of the strongest mean ridge: (top point, angle deg, score).

    Candidates start within +-lateral of ``top`` (across the heading) and point proximally
    within +-spread_deg of ``heading_deg`` (image angle of the proximal direction).
    """
    shifts = np.arange(-lateral, lateral + 1.0)
    angles = heading_deg + np.arange(-spread_deg, spread_deg + 1.0)
    along = np.arange(0.0, length, 2.0)
    base = np.radians(heading_deg)
    normal = np.array([-math.sin(base), math.cos(base)])
    starts = top[None, :] + shifts[:, None] * normal[None, :]  # (S, 2)
    rad = np.radians(angles)
    steps = np.stack([np.cos(rad), np.sin(rad)], axis=1)  # (A, 2)
    xs = starts[:, None, None, 0] + along[None, None, :] * steps[None, :, None, 0]
    ys = starts[:, None, None, 1] + along[None, None, :] * steps[None, :, None, 1]
    scores = _sample(ridge, xs, ys).mean(axis=2)  # (S, A)
    s, a = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return starts[s], float(angles[a]), float(scores[s, a])


@dataclass(frozen=True)
class _CanonicalBone:
    """A metacarpal in the canonical frame (x, y); profile kept for maturity checks."""

    distal: np.ndarray
    proximal: np.ndarray
    centre: np.ndarray
    width: float
    score: float  # how clearly the MCP gap stands out (for choosing between candidates)

    @property
    def length(self) -> float:
        return float(np.linalg.norm(self.distal - self.proximal))


def _metacarpal_candidates(smooth: np.ndarray, ridge: np.ndarray, base: np.ndarray,
                           tip: np.ndarray, mcp_reach: float = 1.8) -> list[_CanonicalBone]:
    """Possible metacarpals continuing a finger proximally (canonical frame), best first.

    The ray is tracked from the middle of the finger into the carpus; joint gaps (and
    growth plates) are the valleys of the intensity along it. The MCP joint is a clear
    gap followed by a long run without one (the metacarpal is the ray's longest bone);
    the choice between candidates is left to the agreement between the rays.
    """
    radius = PALM_RADIUS_PX
    start = 0.5 * (base + tip)
    to_base = float(np.linalg.norm(base - start))
    path = _track_ray(ridge, start, base - tip, to_base + 4.2 * radius)
    # The MCP joint lies within a proximal phalanx of the finger's base (the forearm
    # lies further).
    return _candidates_along(smooth, ridge, path, to_base - 0.6 * radius,
                             to_base + mcp_reach * radius)


def _shaft_candidates(smooth: np.ndarray, ridge: np.ndarray, point: np.ndarray
                      ) -> list[_CanonicalBone]:
    """Possible metacarpals through a point on its shaft (canonical frame), best first:
    the axis follows the shaft's ridge, the MCP joint is a clear gap distal of the point
    followed by a gap-free run, as for a traced ray."""
    radius = PALM_RADIUS_PX
    centre, direction = _refine_axis(ridge, point, np.array([0.0, 1.0]), 0.4 * radius)
    if direction[1] < 0:
        direction = -direction  # proximal is +y, fingers up
    reach = 1.7 * radius
    path = centre + np.arange(-reach, reach, 1.0)[:, None] * direction  # distal first
    return _candidates_along(smooth, ridge, path, reach - 1.3 * radius, reach - 0.3 * radius)


def _candidates_along(smooth: np.ndarray, ridge: np.ndarray, path: np.ndarray,
                      first: float, last: float) -> list[_CanonicalBone]:
    """Metacarpals along a path (distal to proximal, one pixel a step) whose MCP gap lies
    between arc lengths ``first`` and ``last``, best first: a clear gap followed by a
    long run without one (the metacarpal is the ray's longest bone)."""
    radius = PALM_RADIUS_PX
    profile = _path_profile(smooth, path, 0.04 * radius)
    valleys = _valley_strength(profile, int(0.08 * radius))
    arc = np.arange(len(path), dtype=np.float64)
    usable = (arc >= first) & (arc <= last)
    if valleys[usable].max(initial=0.0) <= 0:
        return []
    local_max = (valleys >= np.roll(valleys, 1)) & (valleys >= np.roll(valleys, -1))
    strongest = valleys[usable].max()
    ridge_along = _sample(ridge, path[:, 0], path[:, 1])
    scored = []
    for index in np.flatnonzero(usable & local_max & (valleys >= 0.25 * strongest)):
        inner = valleys[int(index + 0.12 * radius): int(index + 1.1 * radius)]
        if len(inner) >= 0.9 * radius:
            scored.append(((valleys[index] - 2.0 * inner.max()) / strongest, int(index)))
    scored.sort(reverse=True)
    return [replace(_bone_from_gap(smooth, ridge, path, profile, valleys, local_max,
                                   ridge_along, distal_i), score=score)
            for score, distal_i in scored[:4]]


def _bone_from_gap(smooth: np.ndarray, ridge: np.ndarray, path: np.ndarray,
                   profile: np.ndarray, valleys: np.ndarray, local_max: np.ndarray,
                   ridge_along: np.ndarray, distal_i: int) -> _CanonicalBone:
    """The metacarpal starting at the MCP gap ``distal_i`` along a tracked ray."""
    radius = PALM_RADIUS_PX
    # The shaft's ridge fades where the base widens into the carpus: the CMC joint. A
    # clear gap before that (as strong as half the MCP gap) ends the bone earlier.
    mid_shaft = slice(int(distal_i + 0.3 * radius), int(distal_i + 0.8 * radius))
    shaft_ridge, shaft_level = np.median(ridge_along[mid_shaft]), np.median(profile[mid_shaft])
    proximal_i = min(int(distal_i + 2.0 * radius), len(path) - 1)
    clear_gap = local_max & (valleys >= 0.5 * valleys[distal_i])
    for index in range(int(distal_i + 0.8 * radius), proximal_i):
        if clear_gap[index]:
            proximal_i = index
            break
        reach = int(0.1 * radius)
        fading = ridge_along[index] < 0.5 * shaft_ridge or (
            # A dip that rises again: the base passing into a carpal bone it overlaps.
            ridge_along[index] < 0.6 * shaft_ridge
            and ridge_along[index] <= ridge_along[index - reach: index + reach + 1].min())
        if fading:
            # The ridge fades as the base flares, a little before the CMC gap itself.
            # The gap ends the bone if it is a clear joint space and the base stays as
            # bright as the shaft up to it (in toddlers the shaft ends in cartilage).
            ahead = np.flatnonzero((clear_gap & (valleys >= 0.15 * shaft_level))
                                   [index: min(int(index + 0.35 * radius), proximal_i)])
            proximal_i = index
            if len(ahead):
                base = profile[index: max(index + 1, index + int(ahead[0] - 0.08 * radius))]
                if base.min() >= 0.85 * shaft_level:
                    proximal_i = index + int(ahead[0])
            break
    length = proximal_i - distal_i
    shaft = path[distal_i + int(0.15 * length): proximal_i - int(0.15 * length)]
    centroid = shaft.mean(axis=0)
    direction = path[proximal_i] - path[distal_i]
    direction /= np.linalg.norm(direction)
    point, direction = _refine_axis(ridge, centroid, direction, 0.35 * length)
    # Settle both ends on the joint gaps seen along the straight axis itself.
    distal_s = float(np.dot(path[distal_i] - point, direction))
    proximal_s = float(np.dot(path[proximal_i] - point, direction))
    along = np.arange(distal_s - 0.3 * radius, proximal_s + 0.3 * radius, 0.5)
    straight = point + along[:, None] * direction
    straight_valleys = _valley_strength(_path_profile(smooth, straight, 0.04 * radius),
                                        int(0.16 * radius))
    distal_s = _strongest_near(straight_valleys, along, distal_s, 0.15 * radius)
    proximal_s = _strongest_near(straight_valleys, along, proximal_s, 0.2 * radius)
    distal = point + distal_s * direction
    proximal = point + proximal_s * direction
    centre = 0.5 * (distal + proximal)
    return _CanonicalBone(distal=distal, proximal=proximal, centre=centre,
                          width=_width_across(smooth, centre, direction), score=0.0)


def _choose_consistent(candidates: dict[str, list[_CanonicalBone]]) -> dict[str, _CanonicalBone]:
    """One candidate per ray: good gaps, MCP joints at about one level (fingers up) and
    lengths alike; a ray whose every choice breaks the pattern is left out."""
    names = [name for name, found in candidates.items() if found]
    if not names:
        return {}
    best_cost, best = math.inf, {}
    for choice in itertools.product(*(range(len(candidates[n])) for n in names)):
        bones = {n: candidates[n][k] for n, k in zip(names, choice, strict=True)}
        levels = [b.distal[1] for b in bones.values()]
        lengths = [b.length for b in bones.values()]
        cost = -sum(b.score for b in bones.values())
        cost += 4.0 * max(0.0, (max(levels) - min(levels)) / PALM_RADIUS_PX - 0.3)
        cost += 4.0 * max(0.0, max(lengths) / max(min(lengths), 1.0) - 1.35)
        if cost < best_cost:
            best_cost, best = cost, bones
    return best


def _strongest_near(values: np.ndarray, along: np.ndarray, guess: float, reach: float) -> float:
    window = np.abs(along - guess) <= reach
    if not window.any():
        return guess
    return float(along[window][int(np.argmax(values[window]))])


def _refine_axis(ridge: np.ndarray, centre: np.ndarray, direction: np.ndarray,
                 half_length: float) -> tuple[np.ndarray, np.ndarray]:
    """Straighten an axis by a line fit to the ridge's centroid across each step."""
    radius = PALM_RADIUS_PX
    normal = np.array([-direction[1], direction[0]])
    along = np.arange(-half_length, half_length + 1.0, 2.0)
    across = np.arange(-0.1 * radius, 0.1 * radius + 1.0)
    points = centre + along[:, None, None] * direction + across[None, :, None] * normal
    values = _sample(ridge, points[..., 0], points[..., 1])
    weights = np.maximum(values - 0.5 * values.max(axis=1, keepdims=True), 0)
    total = weights.sum(axis=1)
    keep = total > 0
    if keep.sum() < 5:
        return centre, direction
    offsets = (weights[keep] * across).sum(axis=1) / total[keep]
    slope, intercept = np.polyfit(along[keep], offsets, 1)
    new_direction = direction + slope * normal
    new_direction /= np.linalg.norm(new_direction)
    return centre + intercept * normal, new_direction


def _path_profile(image: np.ndarray, path: np.ndarray, half_width: float) -> np.ndarray:
    """Mean of the image across a narrow band at each point of a path."""
    tangent = np.gradient(path, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.column_stack([-tangent[:, 1], tangent[:, 0]])
    across = np.linspace(-half_width, half_width, 5)
    points = path[:, None, :] + across[None, :, None] * normal[:, None, :]
    return _sample(image, points[..., 0], points[..., 1]).mean(axis=1)


def _valley_strength(profile: np.ndarray, reach: int) -> np.ndarray:
    """How far each sample lies below the brighter sides of it (joint gaps, physes)."""
    padded = np.pad(profile, reach, mode="edge")
    count = len(profile)
    before = np.max([padded[reach - k: reach - k + count] for k in range(1, reach + 1)], axis=0)
    after = np.max([padded[reach + k: reach + k + count] for k in range(1, reach + 1)], axis=0)
    return np.maximum(np.minimum(before, after) - profile, 0)


def _width_across(smooth: np.ndarray, centre: np.ndarray, direction: np.ndarray) -> float:
    """Outer width: distance between the steepest rise and fall across the shaft."""
    radius = PALM_RADIUS_PX
    normal = np.array([-direction[1], direction[0]])
    across = np.arange(-0.22 * radius, 0.22 * radius + 0.5, 0.5)
    along = np.linspace(-0.1 * radius, 0.1 * radius, 9)
    points = centre + along[:, None, None] * direction + across[None, :, None] * normal
    profile = _sample(smooth, points[..., 0], points[..., 1]).mean(axis=0)
    slope = np.gradient(profile)
    middle = len(across) // 2
    rise = int(np.argmax(slope[:middle]))
    fall = middle + int(np.argmin(slope[middle:]))
    return float(across[fall] - across[rise])


def _inside(field: np.ndarray, bone: _CanonicalBone) -> bool:
    """Whether the whole bone, with its width and the joint gaps beyond its ends, lies in
    the exposed field (a bone cut by the edge seems to end there)."""
    axis = bone.distal - bone.proximal
    normal = np.array([-axis[1], axis[0]]) / max(np.linalg.norm(axis), 1e-6)
    steps = np.linspace(-0.15, 1.15, 27)[:, None]
    points = np.concatenate([bone.proximal + steps * axis + side * 0.5 * bone.width * normal
                             for side in (-1, 0, 1)])
    return bool((_sample(field.astype(np.float32), points[:, 0], points[:, 1]) > 0.5).all())


def _to_input(name: str, bone: _CanonicalBone, frame: _Canonical) -> LocatedBone:
    centre, proximal, distal = frame.to_input(np.array([bone.centre, bone.proximal, bone.distal]))
    zoom = float(np.sqrt(abs(np.linalg.det(frame.matrix[:, :2]))))
    axis = distal - proximal
    return LocatedBone(
        name=name,
        center_rc=_rc(centre),
        axis_angle_deg=math.degrees(math.atan2(-axis[1], axis[0])) % 360.0,
        proximal_rc=_rc(proximal),
        distal_rc=_rc(distal),
        length_px=float(np.linalg.norm(axis)),
        width_estimate_px=bone.width / zoom,
    )


# Typical metacarpal lengths relative to MC2 (adults; MC3 about 4 % and MC4 15 % shorter).
LENGTH_RATIO = {"MC2": 1.0, "MC3": 0.955, "MC4": 0.855}


def _expected_lengths(bones: dict[str, _CanonicalBone]) -> dict[str, float]:
    """Each bone's length as the longest of the hand's rays implies (LENGTH_RATIO), or
    their median where the longest is out of proportion with the rest."""
    implied = [b.length / LENGTH_RATIO[n] for n, b in bones.items()]
    if not implied:
        return {}
    reference = max(implied) if max(implied) <= 1.3 * np.median(implied) else np.median(implied)
    return {name: float(reference) * LENGTH_RATIO[name] for name in bones}


def _even_out_lengths(bones: dict[str, _CanonicalBone]) -> dict[str, _CanonicalBone]:
    """Lengthen a bone cut short (its base hidden where the bases overlap) to the length
    its neighbours imply; the full-resolution pass then looks for its gap there."""
    if len(bones) < 2:
        return bones
    evened = {}
    expected_lengths = _expected_lengths(bones)
    for name, bone in bones.items():
        expected = expected_lengths[name]
        if bone.length < 0.9 * expected:
            proximal = bone.distal + (bone.proximal - bone.distal) * (expected / bone.length)
            bone = replace(bone, proximal=proximal, centre=0.5 * (bone.distal + proximal))
        evened[name] = bone
    return evened


def _splayed(bones: dict[str, _CanonicalBone]) -> bool:
    """Two bones whose axes cross (over their central 80 %) or differ in direction by more
    than MAX_AXIS_SPREAD_DEG: segments of the carpus or the fingers, not MC2-MC4, which
    lie side by side, fanning out a little."""
    for first, second in itertools.combinations(bones.values(), 2):
        a, b = (first.distal - first.proximal, second.distal - second.proximal)
        cosine = float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-9))
        if math.degrees(math.acos(min(1.0, max(-1.0, cosine)))) > MAX_AXIS_SPREAD_DEG:
            return True
        # Where the two lines meet, as shares of each segment (parallel lines never do).
        matrix = np.column_stack([a, -b])
        if abs(np.linalg.det(matrix)) > 1e-9:
            along_first, along_second = np.linalg.solve(matrix, second.proximal - first.proximal)
            if 0.1 < along_first < 0.9 and 0.1 < along_second < 0.9:
                return True
    return False


MAX_AXIS_SPREAD_DEG = 40.0  # between two of MC2-MC4 (they fan out by 20 degrees or less)


def _inconsistent(bones: dict[str, _CanonicalBone]) -> list[str]:
    """Bones whose level or length (fingers up) is far from the others', or that lie more
    than MAX_LEVEL_SHIFT lengths beyond them along the bones' own mean axis: a wrong
    segment. (Rays read off the fingers can point well away from the metacarpals; a
    phalanx a bone's length beyond them may then sit at their level across that frame.)"""
    if len(bones) < 3:
        return []
    levels = {name: bone.centre[1] for name, bone in bones.items()}
    lengths = {name: bone.length for name, bone in bones.items()}
    level, length = np.median(list(levels.values())), np.median(list(lengths.values()))
    axis = np.mean([(b.distal - b.proximal) / max(lengths[name], 1e-9)
                    for name, b in bones.items()], axis=0)
    along = {name: float(np.dot(bone.centre, axis)) / max(float(np.linalg.norm(axis)), 1e-9)
             for name, bone in bones.items()}
    middle = np.median(list(along.values()))
    return [name for name in bones
            if abs(levels[name] - level) > 0.35 * PALM_RADIUS_PX
            or abs(lengths[name] - length) > 0.35 * length
            or abs(along[name] - middle) > MAX_LEVEL_SHIFT * length]


# MC2-MC4 centres lie within a fifth of a length of each other along the bones; a phalanx
# taken for one lies about 0.8 lengths beyond.
MAX_LEVEL_SHIFT = 0.6


def _refine_at_full_resolution(image: np.ndarray, bone: LocatedBone,
                               base_reach_px: float | None = None) -> _Refined:
    """Sharpen a bone found at the working scale on the input pixels themselves.

    The axis is fitted to the mid-points between the outer edges of the central shaft,
    and each end moves to the steepest intensity step (bone end into joint gap) near it.
    Base gaps are looked for up to BASE_REACH[1] of ``base_reach_px`` (default: the
    bone's length) from the head.
    """
    proximal = np.array(bone.proximal_rc[::-1])
    distal = np.array(bone.distal_rc[::-1])
    length = float(np.linalg.norm(distal - proximal))
    width = bone.width_estimate_px
    if length < 10 or width < 2:
        return _Refined(bone.name, distal, (proximal - distal) / max(length, 1e-9),
                        width, length, length, [])
    reach = max(length, base_reach_px or 0.0)
    # The profile runs from the centre to the farthest base gap looked for.
    far = max(0.9 * length, (BASE_REACH[1] + 0.05) * reach - 0.45 * length)
    margin = far - 0.5 * length + 1.5 * width
    low = np.maximum(np.floor(np.minimum(proximal, distal) - margin), 0).astype(int)
    high = np.minimum(np.ceil(np.maximum(proximal, distal) + margin),
                      np.array(image.shape[::-1]) - 1).astype(int)
    crop = np.ascontiguousarray(image[low[1]: high[1] + 1, low[0]: high[0] + 1],
                                dtype=np.float32)
    crop = np.asarray(cv2.GaussianBlur(crop, (0, 0), max(1.0, width / 20)), dtype=np.float32)
    proximal, distal = proximal - low, distal - low
    direction = (distal - proximal) / length
    normal = np.array([-direction[1], direction[0]])
    centre = 0.5 * (proximal + distal)

    # Axis: mid-points between the steepest rise and fall across the central shaft.
    along = np.linspace(-0.3 * length, 0.3 * length, 25)
    across = np.arange(-0.9 * width, 0.9 * width + 0.25, 0.5)
    points = centre + along[:, None, None] * direction + across[None, :, None] * normal
    slopes = np.gradient(_sample(crop, points[..., 0], points[..., 1]), axis=1)
    middle = len(across) // 2
    rise = across[np.argmax(slopes[:, :middle], axis=1)]
    fall = across[middle + np.argmin(slopes[:, middle:], axis=1)]
    mids, widths = 0.5 * (rise + fall), fall - rise
    keep = np.abs(mids - np.median(mids)) <= 2.5 * np.median(np.abs(mids - np.median(mids))) + 1
    if keep.sum() >= 8:
        slope, intercept = np.polyfit(along[keep], mids[keep], 1)
        centre = centre + intercept * normal
        direction = direction + slope * normal
        direction /= np.linalg.norm(direction)
        normal = np.array([-direction[1], direction[0]])
        width = float(np.median(widths[keep]))

    # Ends: the darkest gap near each end (joint space), then the bone's own edge on the
    # near side of it (a rounded head falls off gently, the far bone's plate sharply).
    along = np.arange(-far, far, 0.5)
    band = np.linspace(-0.25 * width, 0.25 * width, 5)
    points = centre + along[:, None, None] * direction + band[None, :, None] * normal
    profile = _sample(crop, points[..., 0], points[..., 1]).mean(axis=1)
    slope = np.gradient(profile)
    gaps = _valley_strength(profile, max(2, int(0.06 * length / 0.5)))
    edge = 0.06 * length
    # The MCP joint is a gap between two bright bone ends: judged against its near sides
    # (HEAD_GAP_REACH). Against a bone's length, the wide pale zone under the phalanx
    # base's subchondral plate dips deeper, and adult heads were put in the phalanx.
    joints = _valley_strength(profile, max(2, int(HEAD_GAP_REACH * width / 0.5)))
    head_gap = _strongest_near(joints, along, 0.5 * length, 0.1 * length)
    at_head = int(np.argmin(np.abs(along - head_gap)))
    # The bases are looked for from, and judged against, the deepest dip against a bone's
    # length near the ray's head (the joint's or the phalanx base's), as they were tuned.
    ray_head = _strongest_near(gaps, along, 0.5 * length, 0.1 * length)
    strength = gaps[int(np.argmin(np.abs(along - ray_head)))]
    # In children the gap found may be the growth plate under the head's epiphysis (a
    # long bright cap, unlike the thin epiphysis of the phalanx beyond the joint); in an
    # adult head found short of its joint, a trabecular dip. Then the joint is further
    # on: when a gap there is half as deep as the deepest (there or at the head), the
    # first one nearly as deep (a wide joint space between cartilage caps dips less than
    # the phalanx's growth plate just beyond it).
    beyond = (along > head_gap + 0.1 * length) & (along < head_gap + 0.3 * length)
    deepest = max(joints[at_head], joints[beyond].max(initial=0.0))
    if (beyond & (joints >= 0.5 * deepest)).any():
        first = np.flatnonzero(beyond & (joints >= JOINT_GAP_SHARE * deepest))[0]
        valley = (along >= along[first]) & (along <= along[first] + 0.05 * length)
        head_gap = along[valley][int(np.argmax(joints[valley]))]
    distal_s = _bone_edge(along, -slope, head_gap, -edge)
    # The base: every clear gap a metacarpal's length (BASE_REACH of the ray's) proximal of
    # the head is a possible CMC joint; which one is left to the lengths of all three
    # bones (_choose_bases). Without a joint space on the axis (a base overlapping the
    # carpus) the base lies where the other bones' lengths put it.
    window = np.flatnonzero((along >= ray_head - BASE_REACH[1] * reach)
                            & (along <= ray_head - BASE_REACH[0] * length))
    local_max = (gaps >= np.roll(gaps, 1)) & (gaps >= np.roll(gaps, -1))
    clear = window[local_max[window] & (gaps[window] >= BASE_GAP_SHARE * strength)
                   & (gaps[window] > 0)]
    bases = _distinct_bases([
        (distal_s - _bone_edge(along, slope, along[index], edge),
         min(1.0, float(gaps[index]) / max(float(strength), 1e-9)))
        for index in clear[np.argsort(gaps[clear])[::-1]]], SAME_BASE * length)
    # The bone's own length, without the proportions: what the identity checks compare.
    own_gap = _strongest_near(gaps, along, -0.5 * length, 0.1 * length)
    own_depth = gaps[int(np.argmin(np.abs(along - own_gap)))]
    own_base = (_bone_edge(along, slope, own_gap, edge)
                if own_depth >= BASE_GAP_SHARE * strength else -0.5 * length)
    return _Refined(bone.name, centre + distal_s * direction + low, -direction, width,
                    distal_s + 0.5 * length, distal_s - own_base, bases)


def _distinct_bases(found: list[tuple[float, float]], tolerance: float
                    ) -> list[tuple[float, float]]:
    """The first MAX_BASES of ``found`` ((length, depth), deepest gap first), no two
    within ``tolerance`` of each other.

    Ripples in one wide dip end at the same bone edge: counted once, at the deepest. Four
    copies of one base crowded the CMC gap out of the choice on a film that, resampled to
    0.8 of its size, kept it (scaph_05346409 MC4)."""
    distinct: list[tuple[float, float]] = []
    for length, depth in found:
        if all(abs(length - known) > tolerance for known, _ in distinct):
            distinct.append((length, depth))
    return distinct[:MAX_BASES]


def _bone_edge(along: np.ndarray, rise: np.ndarray, gap: float, edge: float) -> float:
    """A bone's own end beside its joint gap: where ``rise`` (the slope into the bone) is
    steepest between the gap and ``edge`` further along (``edge`` < 0: before it)."""
    near = (along >= min(gap, gap + edge)) & (along <= max(gap, gap + edge))
    return float(along[near][int(np.argmax(rise[near]))]) if near.any() else gap


HEAD_GAP_REACH = 0.3  # bone widths each side of the MCP joint gap to its bright ends
JOINT_GAP_SHARE = 0.4  # of the deepest gap near the head: the joint beyond a growth plate
BASE_REACH = (0.75, 1.2)  # a base this far from the head, in lengths found along the ray
BASE_GAP_SHARE = 0.3  # a CMC joint space at least this deep against the MCP's
# Lengths may stray from the usual proportions by LENGTH_RATIO_SPREAD (log units: people
# differ, and so do the joint lines found) at no cost; a further LENGTH_RATIO_SLOPE costs
# as much as half a gap's depth, growing with its square.
LENGTH_RATIO_SPREAD = 0.03
LENGTH_RATIO_SLOPE = 0.03
HIDDEN_BASE_COST = 1.2  # a base with no joint space: costlier than a weak but visible gap
SAME_BASE = 0.03  # bases closer than this share of a length are one
MAX_BASES = 4  # possible CMC gaps per bone, deepest first


@dataclass(frozen=True)
class _Refined:
    """A bone at full resolution: its head, its axis and each length its base's possible
    CMC gaps give it (with how deep each gap is against the MCP's, 0-1)."""

    name: str
    distal: np.ndarray  # (x, y)
    proximal_direction: np.ndarray
    width: float
    ray_length: float  # from the head to the base found along the ray
    own_length: float  # to the deepest gap near the ray's base (or the ray's end)
    bases: list[tuple[float, float]]  # (length, depth share)

    def bone(self, length: float) -> LocatedBone:
        proximal = self.distal + length * self.proximal_direction
        axis = self.distal - proximal
        return LocatedBone(
            name=self.name,
            center_rc=_rc(0.5 * (self.distal + proximal)),
            axis_angle_deg=math.degrees(math.atan2(-axis[1], axis[0])) % 360.0,
            proximal_rc=_rc(proximal),
            distal_rc=_rc(self.distal),
            length_px=float(np.linalg.norm(axis)),
            width_estimate_px=self.width,
        )


def _choose_bases(refined: dict[str, _Refined]) -> dict[str, LocatedBone]:
    """One base per bone: clear CMC gaps, and lengths in the proportions metacarpals have
    (LENGTH_RATIO), so that one bone's base is not taken at a carpal joint beyond it or
    inside its own base. A base with no clear gap takes the length the others imply
    (the ray's own end when none has a gap); one implied beyond a clear gap of its own
    would lie in the carpus past a joint space seen, and costs that gap's depth."""
    names = sorted(refined)
    best_cost, best = math.inf, {}
    choices = [[None, *refined[n].bases] for n in names]
    for choice in itertools.product(*choices):
        seen = {n: c for n, c in zip(names, choice, strict=True) if c is not None}
        cost = HIDDEN_BASE_COST * (len(names) - len(seen))
        cost += sum(1.0 - depth for _, depth in seen.values())
        logs = np.log([length / LENGTH_RATIO[n] for n, (length, _) in seen.items()])
        if len(logs) >= 2:
            excess = np.maximum(np.abs(logs - logs.mean()) - LENGTH_RATIO_SPREAD, 0.0)
            cost += 0.5 * float(((excess / LENGTH_RATIO_SLOPE) ** 2).sum())
        reference = math.exp(float(logs.mean())) if len(logs) else None
        if reference is not None:
            cost += sum(max((depth for length, depth in refined[n].bases
                             if length < reference * LENGTH_RATIO[n]
                             * math.exp(-LENGTH_RATIO_SPREAD)), default=0.0)
                        for n in names if n not in seen)
        if cost < best_cost:
            best_cost, best = cost, {
                n: refined[n].bone(seen[n][0] if n in seen else
                                   reference * LENGTH_RATIO[n] if reference is not None
                                   else refined[n].ray_length)
                for n in names}
    return best


def _maturity(image: np.ndarray, smooth: np.ndarray, field: np.ndarray,
              canonical: dict[str, _CanonicalBone], bones: dict[str, LocatedBone],
              pixel_spacing_mm: float | None, bones_agree: bool
              ) -> tuple[bool, bool, dict[str, Any]]:
    """(paediatric, toddler, features).

    Paediatric: besides the MCP joint, growth plates show as further dark bands across
    the bones near the metacarpal heads. Toddler: the carpus is still mostly cartilage,
    so little of it is as bright as the metacarpal shafts, and the metacarpals are short;
    only with ``bones_agree`` (else the bones found are wrong segments, short for a
    reason other than age).
    """
    if not canonical:
        return False, False, {}
    lengths = [b.length for b in canonical.values()]
    features: dict[str, Any] = {
        "gaps_near_head": float(np.median([_gaps_near_head(image, b) for b in bones.values()])),
        "carpal_bone_fraction": _carpal_bone_fraction(smooth, field, canonical),
        "length_per_palm_radius": float(np.median(lengths)) / PALM_RADIUS_PX,
        "length_per_width": float(np.median([b.length_px / max(b.width_estimate_px, 1e-6)
                                             for b in bones.values()])),
    }
    # Small for the hand AND stubby: a wrist film's large palm disc alone makes an adult's
    # metacarpals look short for the hand, but not short for their own width.
    if pixel_spacing_mm and "MC3" in bones:
        features["mc3_length_mm"] = bones["MC3"].length_px * pixel_spacing_mm
    # Stubby, as a toddler's metacarpals are (but not stubbier than any metacarpal: that
    # is a mislocation), and small for the hand or, with a header spacing, in millimetres;
    # or, whatever their shape, short in millimetres beside a carpus still cartilage.
    cartilage = features["carpal_bone_fraction"] < TODDLER_CARPAL_BONE_FRACTION
    short_mm = features.get("mc3_length_mm", math.inf) < TODDLER_MC3_LENGTH_MM
    # Stubby: all of them (one with an adult's shape makes the others segments of longer
    # bones, not a toddler's).
    stubby = (MIN_LENGTH_PER_WIDTH <= features["length_per_width"] < TODDLER_LENGTH_PER_WIDTH
              and all(b.length_px < ADULT_LENGTH_PER_WIDTH * max(b.width_estimate_px, 1e-6)
                      for b in bones.values()))
    small = features["length_per_palm_radius"] < TODDLER_LENGTH_PER_PALM_RADIUS
    toddler = bones_agree and ((stubby and (cartilage or short_mm or small))
                                 or (short_mm and cartilage))
    # Open growth plates of one kind must be seen on two bones before anything else may
    # call the hand a child's: the physes of one kind (under the metacarpal heads, or at
    # the phalanges' bases beyond the joints) close together on MC2-MC5, while dark bands
    # near one head or a pale carpus also come from an adult's joint texture or a
    # mislocated bone, and an adult is never to be called a child. (A 22-year-old's MC2
    # showed a "physis" before its joint and MC4 one beyond it.)
    kinds = {name: _open_physes(image, bone) for name, bone in bones.items()}
    shared = max(PHYSIS_KINDS, key=lambda kind: sum(kind in found for found in kinds.values()))
    physes = [name for name, found in kinds.items() if shared in found]
    features["open_physes"] = physes
    paediatric = toddler or (len(physes) >= PHYSIS_MIN_BONES and (
        features["gaps_near_head"] >= 2
        or features["carpal_bone_fraction"] < CHILD_CARPAL_BONE_FRACTION))
    return paediatric, toddler, features


def _open_physes(image: np.ndarray, bone: LocatedBone) -> set[str]:
    """The growth plates seen at this bone's MCP joint, by the side of the deepest dark band
    there (the joint gap, or a physis deeper than it) they lie on (PHYSIS_KINDS): a second
    band across the whole width, within 1.5 bone widths (the metacarpal head or the base
    of the proximal phalanx), at least PHYSIS_DEPTH of the deepest one's depth and at the
    same place in 3 of 4 strips along the bone (an adult's trabecular texture does not
    line up across the bone)."""
    distal = np.array(bone.distal_rc[::-1])
    direction = (distal - np.array(bone.proximal_rc[::-1])) / max(bone.length_px, 1e-6)
    normal = np.array([-direction[1], direction[0]])
    width = max(bone.width_estimate_px, 4.0)
    step = max(0.5, width / 80)
    along = np.arange(-0.35 * bone.length_px, 0.35 * bone.length_px, step) / width
    edges = np.linspace(-0.3, 0.3, 5) * width
    strips = []
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        across = np.linspace(start, end, 5)
        points = (distal + along[:, None, None] * width * direction
                  + across[None, :, None] * normal)
        strip = _sample(image.astype(np.float32, copy=False), points[..., 0],
                        points[..., 1]).mean(axis=1)
        strips.append(cv2.GaussianBlur(strip.reshape(-1, 1), (0, 0),
                                       max(0.7, width / 60 / step)).ravel())
    profiles = np.array(strips)
    reach = max(2, int(0.3 * width / step))
    mean = profiles.mean(axis=0)
    valleys = _valley_strength(mean, reach)
    near_head = np.abs(along) < 0.25 * bone.length_px / width
    deepest = int(np.argmax(np.where(near_head, valleys, -1.0)))
    depth = valleys[deepest]
    if depth <= 0 or abs(along[deepest]) > PHYSIS_JOINT_REACH:
        return set()
    # The deepest band's own extent (a joint gap can be wide) is not a second band.
    dark = mean < mean[deepest] + 0.5 * depth
    first = last = deepest
    while first > 0 and dark[first - 1]:
        first -= 1
    while last < len(mean) - 1 and dark[last + 1]:
        last += 1
    beside = (((along > along[last] + PHYSIS_CLEARANCE) & (along < along[deepest] + PHYSIS_REACH)),
              ((along < along[first] - PHYSIS_CLEARANCE) & (along > along[deepest] - PHYSIS_REACH)))
    strip_valleys = [_valley_strength(profile, reach) for profile in profiles]
    found = set()
    for kind, window in zip(PHYSIS_KINDS, beside, strict=True):
        if not window.any():
            continue
        places = np.array([along[np.argmax(np.where(window, v, -1.0))] for v in strip_valleys])
        depths = np.array([np.max(v[window]) / depth for v in strip_valleys])
        lined_up = (np.abs(places - np.median(places)) < PHYSIS_LINE_UP) & (depths > 0.05)
        if np.median(depths) >= PHYSIS_DEPTH and lined_up.sum() >= 3:
            found.add(kind)
    return found


def _gaps_near_head(image: np.ndarray, bone: LocatedBone) -> int:
    """Dark bands across the axis around the MCP joint: 1 in adults, more with physes."""
    distal = np.array(bone.distal_rc[::-1])
    proximal = np.array(bone.proximal_rc[::-1])
    direction = (distal - proximal) / max(bone.length_px, 1e-6)
    normal = np.array([-direction[1], direction[0]])
    width = bone.width_estimate_px
    along = np.arange(-0.3 * bone.length_px, 0.3 * bone.length_px, 0.5)
    band = np.linspace(-0.2 * width, 0.2 * width, 5)
    points = distal + along[:, None, None] * direction + band[None, :, None] * normal
    profile = _sample(image.astype(np.float32, copy=False), points[..., 0], points[..., 1])
    profile = cv2.GaussianBlur(profile.mean(axis=1).reshape(-1, 1), (0, 0),
                               max(1.0, width / 16)).ravel()
    valleys = _valley_strength(profile, max(2, int(0.3 * width / 0.5)))
    if valleys.max() <= 0:
        return 0
    peaks = local_peaks(valleys, 0.35 * valleys.max(), max(2, int(0.08 * bone.length_px / 0.5)))
    return len(peaks)


def _carpal_bone_fraction(smooth: np.ndarray, field: np.ndarray,
                          bones: dict[str, _CanonicalBone]) -> float:
    """Share of the carpus (just proximal to the metacarpal bases) as bright as bone;
    NaN when the carpus is mostly outside the exposed field."""
    radius = PALM_RADIUS_PX
    centres = np.array([b.centre for b in bones.values()])
    bases = np.array([b.proximal for b in bones.values()])
    shafts = np.concatenate([np.linspace(b.proximal, b.distal, 20)[5:15] for b in bones.values()])
    bone_level = float(np.median(_sample(smooth, shafts[:, 0], shafts[:, 1])))
    # Soft tissue: half-way to the neighbouring metacarpals on both sides.
    beside = np.concatenate([centres + [0.22 * radius, 0.0], centres - [0.22 * radius, 0.0]])
    soft_level = float(np.median(_sample(smooth, beside[:, 0], beside[:, 1])))
    left, right = bases[:, 0].min() - 0.3 * radius, bases[:, 0].max() + 0.3 * radius
    top = bases[:, 1].mean() + 0.1 * radius
    ys, xs = np.mgrid[top: top + 0.6 * radius: 2.0, left: right: 2.0]
    seen = _sample(field.astype(np.float32), xs, ys) > 0.5
    if seen.mean() < 0.5:
        return math.nan
    carpus = _sample(smooth, xs, ys)[seen]
    return float(np.mean(carpus > soft_level + 0.5 * (bone_level - soft_level)))


def _track_ray(ridge: np.ndarray, start: np.ndarray, heading: np.ndarray,
               length: float) -> np.ndarray:
    """Follow a chain of bones along the ridge map; points (x, y) one pixel apart.

    Short straight segments found by line search, each starting where the previous one
    had got half-way, bridge the joint gaps where the ridge fades.
    """
    segment = 0.4 * PALM_RADIUS_PX
    point = np.asarray(start, dtype=np.float64)
    angle = math.degrees(math.atan2(heading[1], heading[0]))
    points = [point]
    travelled = 0.0
    while travelled < length:
        begin, angle, _ = _best_line(ridge, point, angle, segment, 0.06 * PALM_RADIUS_PX, 12)
        direction = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
        steps = np.arange(1.0, 0.5 * segment + 0.5)
        points.extend(begin + steps[:, None] * direction)
        point = points[-1]
        travelled += 0.5 * segment
    return _resample(np.array(points))


def _resample(path: np.ndarray) -> np.ndarray:
    """The polyline resampled at one-pixel arc length."""
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    even = np.arange(0.0, arc[-1], 1.0)
    return np.column_stack([np.interp(even, arc, path[:, 0]), np.interp(even, arc, path[:, 1])])
