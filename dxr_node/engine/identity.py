"""Bone identity: are the bones labelled MC2-MC4 really the index, middle and ring
metacarpals?

The locator finds each metacarpal from its own finger ray; this module checks the labels
against the whole row of metacarpals, independently of how they were found. Across the
palm, at the level of the located mid-shafts, the metacarpal shafts are bright parallel
tubes side by side. Counted from the ulnar border of the hand (the side opposite the
thumb), the first shaft is MC5, the second MC4, the third MC3 and the fourth MC2: a count
that holds whatever the thumb does (abducted, along the index, out of the field). So:

- each labelled bone must sit on its own shaft (no two labels on one bone);
- MC2, MC3 and MC4 must be neighbouring shafts (none left out between them);
- on the ulnar side of MC4 there must be exactly one more shaft (MC5) before the edge of
  the hand.

Any failure is a bone-identity problem: the hand is rejected, never measured on a guess.
The margin by which the count holds gives each bone a confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# Across-palm spacing of neighbouring metacarpal shafts, in palm radii of the canonical
# frame (adult and adolescent hands: about 0.3-0.5).
MIN_SHAFT_SEPARATION = 0.17
MAX_SHAFT_SPACING = 0.75
# A shaft is a ridge peak at least this share of the labelled bones' median ridge.
SHAFT_LEVEL = 0.30
# A labelled bone must lie on a peak within this distance (palm radii), or within this
# share of the labelled bones' spacing on a widely spaced row (a spread hand's oblique
# shafts blur their peaks across the averaged band): nearer to it than to any neighbour.
MATCH_DISTANCE = 0.12
MATCH_SPACING_SHARE = 0.3
ROW_INDEX = {"MC2": 0, "MC3": 1, "MC4": 2}  # place in the row from the thumb side
# MC5 is thinner than MC4: its ridge is at least this share of MC4's.
MC5_LEVEL = 0.5
MIN_ROW_GAP = 0.5  # neighbouring shafts of the row: at least this share of the spacing
SIXTH_LEVEL = 0.45  # a shaft beyond MC5 this strong (share of MC2-MC4) is a metacarpal
# Median share of the axis beyond the bases that looks like a further long bone, above
# which the "metacarpals" are taken to be phalanges (metacarpals seen: <= 0.5).
MAX_PROXIMAL_CONTINUATION = 0.75
# Beyond MC2 the hand (thenar, thumb) reaches further than beyond MC5: by at least this
# many shaft spacings to confirm a thumb side found otherwise, and never by this many
# less (which would contradict the thumb found).
MIN_THUMB_SIDE_MARGIN = 0.2
# A hand whose run across the palm stops this close (palm radii) to the edge of the
# exposed field is cut by it there: its extent on that side is unknown.
FIELD_EDGE_REACH = 0.1
MAX_ULNAR_EXTENT = 1.6  # shaft spacings: beyond MC5 the hand ends within about one
# A gap in the hand's mask across the palm at most this wide (palm radii) between two parts
# of the hand is a crack in the mask, not its edge: on films with dim palm soft tissue the
# clefts between the fingers reach down between the metacarpal shafts (0.16-0.28 seen),
# while the palm is whole there. (The first web, thumb to index, seen: 0.4 and more.)
MAX_MASK_CRACK = 0.3


@dataclass(frozen=True)
class IdentityCheck:
    problem: str | None  # "bone identity uncertain: ..." or None
    confidence: dict[str, float]  # per labelled bone, 0..1
    # Diagnostics: cross-section positions (palm radii, + towards the thumb) of the shafts.
    shafts: tuple[str, ...] = ()
    labelled: tuple[float, ...] = ()
    thumb_side_margin: float | None = None
    # A label whose shaft does not show (hidden) while the row still holds: that bone is
    # left out (a partial result), the others keep their identity.
    dropped: tuple[str, ...] = ()


def check_row(ridge: np.ndarray, hand: np.ndarray, centres: dict[str, np.ndarray],
              axis: np.ndarray, radial_sign: float, palm_radius: float,
              thumb_seen: bool = True, field: np.ndarray | None = None) -> IdentityCheck:
    """Check MC2-MC4 labels against the row of shafts across the palm, at the mid-shaft
    level or, where something bright hides the row there (a splint, a ring), 0.4 palm
    radii proximal or distal of it: the first level where the row holds decides."""
    first = None
    for offset in (0.0, -0.4, 0.4):
        moved = {name: centre + offset * palm_radius * axis for name, centre in centres.items()}
        check = _check_row_at(ridge, hand, moved, axis, radial_sign, palm_radius, thumb_seen,
                              field)
        if check.problem is None:
            return check
        first = first or check
    assert first is not None
    return first


def _check_row_at(ridge: np.ndarray, hand: np.ndarray, centres: dict[str, np.ndarray],
                  axis: np.ndarray, radial_sign: float, palm_radius: float,
                  thumb_seen: bool, field: np.ndarray | None) -> IdentityCheck:
    """The check at one level.

    ``ridge`` and ``hand`` (mask) are canonical-frame images (fingers up); ``centres`` the
    labelled mid-shaft centres (x, y) there; ``axis`` the mean proximal->distal unit
    vector; ``radial_sign`` +1 when the thumb lies towards +x, -1 towards -x.
    ``thumb_seen``: the thumb side came from the thumb itself; the hand's extent beyond
    the row must then not contradict it. Without it, the extent must confirm the side,
    unless the hand runs out of the exposed ``field`` (canonical frame) on the thumb side:
    its extent there is then unknown, and the side rests on the header.
    """
    names: list[str] = [n for n in ("MC2", "MC3", "MC4") if n in centres]
    if len(names) < 2:
        return IdentityCheck("bone identity uncertain: fewer than two metacarpals found", {})
    normal = np.array([axis[1], -axis[0]])  # perpendicular to the axis
    if normal[0] * radial_sign < 0:
        normal = -normal  # + towards the thumb
    origin = np.mean([centres[n] for n in names], axis=0)
    across = np.arange(-3.0, 3.0 + 1e-9, 0.01)  # palm radii
    along = np.linspace(-0.25, 0.25, 11)  # palm radii around the mid-shaft level
    points = (origin + along[:, None, None] * palm_radius * axis
              + across[None, :, None] * palm_radius * normal)
    strength = _sample(ridge, points).mean(axis=0)
    inside = _bridge_cracks(_sample(hand.astype(np.float32), points).mean(axis=0) > 0.5,
                            int(MAX_MASK_CRACK / 0.01))
    labelled = {n: float(np.dot(centres[n] - origin, normal) / palm_radius) for n in names}
    # The run of the hand containing the labelled bones (a second hand is another run).
    middle = int(np.argmin(np.abs(across - np.mean(list(labelled.values())))))
    run = _run_around(inside, middle)
    if run is None:
        return IdentityCheck("bone identity uncertain: the bones lie outside the hand", {})
    low, high = run
    bone_level = float(np.median([strength[_index(across, s)] for s in labelled.values()]))
    if bone_level <= 0:
        return IdentityCheck("bone identity uncertain: no shaft ridge at the bones", {})
    peaks = local_peaks(strength, SHAFT_LEVEL * bone_level,
                        int(MIN_SHAFT_SEPARATION / 0.01), low, high)
    shafts = across[peaks]
    heights = strength[peaks] / bone_level
    # Each label on its own shaft.
    matched: dict[str, int] = {}
    positions = [labelled[n] for n in names]
    spacing = abs(positions[0] - positions[-1]) / (ROW_INDEX[names[-1]] - ROW_INDEX[names[0]])
    reach = max(MATCH_DISTANCE, MATCH_SPACING_SHARE * spacing)
    for name, position in labelled.items():
        if not len(shafts):
            break
        k = int(np.argmin(np.abs(shafts - position)))
        if abs(shafts[k] - position) <= reach:
            matched[name] = k
    result: dict[str, Any] = {
        "shafts": tuple(f"{s:.2f}:{h:.2f}" for s, h in zip(shafts, heights, strict=True)),
        "labelled": tuple(labelled[n] for n in names)}
    missing = [n for n in names if n not in matched]
    dropped: tuple[str, ...] = ()
    if (len(missing) == 1 and len(names) == 3 and missing[0] != "MC3"
            and _evenly_placed(labelled, missing[0], shafts)):
        # One outer bone hidden (a splint, a ring, an overlap): its shaft is taken where
        # its label is, to keep the count; the bone itself is not measured.
        index = _index(across, labelled[missing[0]])
        peaks = np.sort(np.append(peaks, index))
        shafts = across[peaks]
        heights = strength[peaks] / bone_level
        heights[int(np.flatnonzero(peaks == index)[0])] = 1.0
        matched = {n: int(np.argmin(np.abs(shafts - labelled[n]))) for n in names}
        dropped, missing = (missing[0],), []
    if missing:
        return IdentityCheck(f"bone identity uncertain: {', '.join(missing)} not on a shaft",
                             {}, **result)
    indices = [matched[n] for n in names]
    if len(set(indices)) < len(indices):
        return IdentityCheck("bone identity uncertain: two labels on one shaft", {}, **result)
    # Labels in order from the thumb side (+) to the ulnar side (-), as neighbours.
    first = matched[names[0]] + ROW_INDEX[names[0]]  # index of MC2's shaft
    for name in names:
        if matched[name] != first - ROW_INDEX[name]:
            return IdentityCheck("bone identity uncertain: the labelled bones are not "
                                 "neighbouring shafts in order", {}, **result)
    mc4_index = first - 2
    # The row's shafts MC4..MC2 (unlabelled ones included) lie a spacing apart: two peaks
    # closer than half of it are one bone seen twice or a crossing bone, not two shafts.
    row = shafts[max(mc4_index, 0):min(first, len(shafts) - 1) + 1]
    if len(row) > 1 and np.diff(row).min() < MIN_ROW_GAP * spacing:
        return IdentityCheck("bone identity uncertain: two shafts of the row closer than "
                             "metacarpals lie", {}, **result)
    beyond = [k for k in range(mc4_index)
              if MIN_ROW_GAP * spacing <= shafts[mc4_index] - shafts[k] <= 1.8 * spacing]
    fifth = sorted(beyond, key=lambda k: -heights[k])
    if not fifth or heights[fifth[0]] < MC5_LEVEL * heights[mc4_index]:
        return IdentityCheck("bone identity uncertain: no fifth metacarpal on the ulnar side "
                             "of MC4", {}, **result)
    if len(fifth) > 1 and heights[fifth[1]] >= 0.75 * heights[fifth[0]]:
        return IdentityCheck("bone identity uncertain: two shafts where MC5 should be", {},
                             **result)
    mc5 = fifth[0]
    # A further shaft beyond MC5, as strong as a metacarpal, spaced like one.
    sixth = [k for k in range(mc5) if 0.6 * spacing <= shafts[mc5] - shafts[k] <= 1.5 * spacing
             and heights[k] >= max(SIXTH_LEVEL, 0.6 * heights[mc5])]
    if sixth:
        return IdentityCheck("bone identity uncertain: more than one shaft on the ulnar side "
                             "of MC4 (MC2 may be MC3)", {}, **result)
    # The thumb side: beyond MC2 the hand goes on (thenar, the thumb), beyond MC5 it ends
    # within about one shaft spacing. Judged in shaft spacings, from the mask.
    mc2_index = first
    if mc2_index >= len(shafts):  # MC2 itself not labelled, and no shaft where it belongs
        return IdentityCheck("bone identity uncertain: no shaft where MC2 should be", {},
                             **result)
    radial_extent = (across[high] - shafts[mc2_index]) / spacing
    ulnar_extent = (shafts[mc5] - across[low]) / spacing
    result["thumb_side_margin"] = float(radial_extent - ulnar_extent)
    margin_needed = -MIN_THUMB_SIDE_MARGIN if thumb_seen else MIN_THUMB_SIDE_MARGIN
    # Cut by the field beyond MC2, the hand's reach there is unknown; it must still end
    # within about one spacing beyond MC5 (read from the wrong side, the thenar and thumb
    # would lie there).
    radial_cut = field is not None and _cut_by_field(field, points, across, high)
    if radial_extent - ulnar_extent < margin_needed and (
            not radial_cut or ulnar_extent > MAX_ULNAR_EXTENT):
        return IdentityCheck("bone identity uncertain: the hand does not extend beyond MC2 "
                             "more than beyond MC5 (thumb side)", {}, **result)
    # Confidence: how clearly each shaft stands out from the gaps beside it, and how
    # weak the shafts beyond MC5 are.
    valleys = _valley_depths(strength, peaks, bone_level)
    extra = max([heights[k] for k in range(mc5)], default=0.0)
    confidence: dict[str, float] = {}
    for name in names:
        clear = float(np.clip(valleys[matched[name]] / 0.5, 0.0, 1.0))
        confidence[name] = round(float(np.clip(clear * (1.0 - 0.5 * extra), 0.0, 1.0)), 3)
    for name in dropped:
        confidence.pop(name, None)
    return IdentityCheck(None, confidence, dropped=dropped, **result)


def _axis_contrast(smooth: np.ndarray, proximal: np.ndarray, distal: np.ndarray,
                   width: float, start: float, stop: float) -> np.ndarray:
    """Along the axis from ``start`` to ``stop`` bone lengths from the base: how much the
    axis stands out from points 1.2 widths to either side."""
    axis = distal - proximal
    normal = np.array([-axis[1], axis[0]]) / max(float(np.linalg.norm(axis)), 1e-9)
    points = proximal + np.linspace(start, stop, 60)[:, None] * axis
    sides = [_sample(smooth, points + side * 1.2 * width * normal) for side in (-1, 1)]
    return _sample(smooth, points) - 0.5 * (sides[0] + sides[1])


def _sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples at (x, y) points of any leading shape; 0 outside the image."""
    map_x = np.ascontiguousarray(points[..., 0], dtype=np.float32)
    map_y = np.ascontiguousarray(points[..., 1], dtype=np.float32)
    return cv2.remap(image.astype(np.float32, copy=False), map_x, map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _evenly_placed(labelled: dict[str, float], hidden: str, shafts: np.ndarray) -> bool:
    """Whether a hidden outer bone's label sits one shaft spacing beyond MC3, as far as
    the visible pair is apart, with no visible shaft closer to it than 0.6 spacings."""
    visible = "MC2" if hidden == "MC4" else "MC4"
    spacing = abs(labelled["MC3"] - labelled[visible])
    gap = abs(labelled[hidden] - labelled["MC3"])
    crowded = np.abs(shafts - labelled[hidden]) < 0.6 * spacing
    return bool(0.75 * spacing <= gap <= 1.3 * spacing and not crowded.any())


def _index(across: np.ndarray, position: float) -> int:
    return int(np.argmin(np.abs(across - position)))


def _cut_by_field(field: np.ndarray, points: np.ndarray, across: np.ndarray, end: int
                  ) -> bool:
    """Whether the hand's run across the palm, ending at index ``end`` on its + side, is
    cut by the edge of the exposed field (see ``_leaves_field``)."""
    exposed = _sample(field.astype(np.float32), points).mean(axis=0)
    return _leaves_field(exposed, end, 1, int(FIELD_EDGE_REACH / (across[1] - across[0])))


def _edge_beyond(field: np.ndarray, y: float, x: int, direction: int, palm_radius: float
                 ) -> bool:
    """Whether the hand's run along image row y, ending at column x (in ``direction``),
    is cut by the edge of the exposed field (see ``_leaves_field``)."""
    row = field[int(np.clip(y, 0, field.shape[0] - 1))]
    return _leaves_field(row, x, direction, int(FIELD_EDGE_REACH * palm_radius) + 1)


def _leaves_field(exposed: np.ndarray, end: int, step: int, reach: int) -> bool:
    """Whether samples along a line (1 exposed, 0 not) leave the exposed field within
    ``reach`` samples beyond index ``end`` in direction ``step`` (+1 or -1), or the line
    runs out first: a hand's run ending at ``end`` then goes on out of the image, rather
    than ending on the background."""
    beyond = end + step * np.arange(1, max(reach, 1) + 1)
    if beyond[-1] < 0 or beyond[-1] >= len(exposed):
        return True
    return bool((exposed[beyond] < 0.5).any())


def _bridge_cracks(inside: np.ndarray, max_gap: int) -> np.ndarray:
    """``inside`` with its gaps of at most ``max_gap`` samples between two inside runs
    filled."""
    bridged = inside.copy()
    runs = _runs(inside)
    for (_, end), (start, _) in zip(runs, runs[1:], strict=False):
        if start - end - 1 <= max_gap:
            bridged[end + 1:start] = True
    return bridged


def _run_around(inside: np.ndarray, index: int) -> tuple[int, int] | None:
    if not inside[index]:
        return None
    low = index
    while low > 0 and inside[low - 1]:
        low -= 1
    high = index
    while high < len(inside) - 1 and inside[high + 1]:
        high += 1
    return low, high


def local_peaks(values: np.ndarray, floor: float, separation: int, low: int = -1,
                high: int | None = None) -> np.ndarray:
    """Indices of local maxima above ``floor`` strictly between ``low`` and ``high``,
    chosen greedily from the highest at least ``separation`` apart."""
    local = np.zeros(len(values), bool)
    local[1:-1] = (values[1:-1] >= values[:-2]) & (values[1:-1] >= values[2:])
    local[:low + 1] = False
    if high is not None:
        local[high:] = False
    candidates = np.flatnonzero(local & (values >= floor))
    chosen: list[int] = []
    for index in candidates[np.argsort(-values[candidates], kind="stable")]:
        if all(abs(index - c) >= separation for c in chosen):
            chosen.append(int(index))
    return np.array(sorted(chosen), dtype=int)


def _valley_depths(values: np.ndarray, peaks: np.ndarray, level: float) -> np.ndarray:
    """For each peak, how far the lower of the two valleys beside it falls below it,
    relative to the labelled bones' level (1: down to nothing)."""
    depths = np.zeros(len(peaks))
    for i, k in enumerate(peaks):
        left = values[peaks[i - 1]: k + 1].min() if i > 0 else values[max(0, k - 40): k + 1].min()
        right = (values[k: peaks[i + 1] + 1].min() if i + 1 < len(peaks)
                 else values[k: k + 41].min())
        depths[i] = (values[k] - max(left, right)) / level
    return depths


@dataclass(frozen=True)
class Row:
    """Four neighbouring metacarpal shafts across the palm (canonical frame, fingers up)."""

    level_y: float  # mid-shaft level
    xs: tuple[float, float, float, float]  # shaft positions, from the thumb side: MC2..MC5
    thumb_side_margin: float  # how much further the hand reaches beyond MC2 than MC5
    side_from_extent: bool = True  # False: the thumb side is not known from the row


def find_row(ridge: np.ndarray, hand: np.ndarray, top_y: float, bottom_y: float,
             palm_radius: float, field: np.ndarray | None = None) -> Row | None:
    """The row of MC2-MC5 between two levels, with its thumb side, or None.

    At each level the ridge peaks inside the hand are the bones crossing it; four
    neighbouring peaks, evenly spaced like metacarpals, alike in strength and standing
    where the hand ends within about one spacing on one side (MC5) and goes on on the
    other (thenar, thumb), make a row. The level where the row stands out best wins.
    Where the hand runs out of the exposed ``field`` on the side it reaches less far, the
    thumb side is not known from the row (``side_from_extent`` False; xs from that side).
    """
    best: tuple[float, Row] | None = None
    rows, cols = ridge.shape
    for y in np.arange(max(top_y, 0.0), min(bottom_y, rows - 1.0), 0.05 * palm_radius):
        band = ridge[int(y - 0.1 * palm_radius): int(y + 0.1 * palm_radius) + 1]
        if band.size == 0:
            continue
        strength = band.mean(axis=0)
        inside = hand[int(y)] > 0
        runs = _runs(inside)
        for low, high in runs:
            if high - low < 1.0 * palm_radius:
                continue
            left_cut = field is not None and _edge_beyond(field, y, low, -1, palm_radius)
            right_cut = field is not None and _edge_beyond(field, y, high, 1, palm_radius)
            level = float(np.percentile(strength[low:high + 1], 95))
            if level <= 0:
                continue
            peaks = local_peaks(strength, 0.25 * level,
                                int(MIN_SHAFT_SEPARATION * palm_radius), low, high)
            for i in range(len(peaks) - 3):
                four = peaks[i:i + 4]
                gaps = np.diff(four) / palm_radius
                if gaps.min() < 0.22 or gaps.max() > 0.6 or gaps.max() > 1.6 * gaps.min():
                    continue
                heights = strength[four] / level
                if heights.min() < 0.3:
                    continue
                spacing = float(gaps.mean() * palm_radius)
                left_extent = (four[0] - low) / spacing
                right_extent = (high - four[3]) / spacing
                # Thumb side: where the hand goes on beyond the row; unknown where the
                # shorter side is cut by the field's edge (the hand goes on out of it).
                margin = abs(right_extent - left_extent)
                cut_short = (left_cut if left_extent < right_extent else right_cut)
                if cut_short:
                    margin = 0.0
                if (right_extent >= left_extent) != cut_short:
                    xs = tuple(float(x) for x in four[::-1])
                    outer_ulnar = left_extent
                else:
                    xs = tuple(float(x) for x in four)
                    outer_ulnar = right_extent
                if outer_ulnar > MAX_ULNAR_EXTENT:
                    continue  # the hand goes on beyond MC5 too: not the whole row
                # Neighbours beyond the row as strong as its shafts: a longer row (fingers).
                outside = [k for k in peaks if k < four[0] - 0.5 * spacing
                           or k > four[3] + 0.5 * spacing]
                extra = max([strength[k] / level for k in outside
                             if abs(k - (four[0] if k < four[0] else four[3])) < 1.6 * spacing],
                            default=0.0)
                valleys = [strength[a:b + 1].min() / level for a, b in zip(four[:-1], four[1:],
                                                                             strict=True)]
                score = (float(heights.min()) - max(valleys) - 0.5 * extra
                         - 0.5 * (gaps.max() / gaps.min() - 1.0) + 0.2 * min(margin, 1.0))
                row = Row(float(y), xs, float(margin),  # type: ignore[arg-type]
                          side_from_extent=not cut_short)
                if best is None or score > best[0]:
                    best = (score, row)
    return best[1] if best is not None and best[0] > 0 else None


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def continues_proximally(image: np.ndarray, bones: dict[str, tuple[np.ndarray, np.ndarray, float]]
                         ) -> float:
    """How far the located bones run on, beyond their bases, into further long bones:
    the median over the bones of the share of the axis 0.15-0.7 lengths beyond the base
    that stands out from its sides at least half as much as the shaft does. A metacarpal's
    base meets the carpus (short bones, joint spaces): low. A phalanx taken for a
    metacarpal runs on into its metacarpal: high.

    ``bones``: name -> (proximal, distal, width) in (x, y) pixels of ``image``.
    """
    if not bones:
        return 0.0
    median_width = float(np.median([width for *_, width in bones.values()]))
    smooth = cv2.GaussianBlur(image, (0, 0), max(1.0, median_width / 4))
    shares = []
    for proximal, distal, width in bones.values():
        length = float(np.linalg.norm(distal - proximal))
        if length <= 0 or width <= 0:
            continue
        shaft = float(np.median(_axis_contrast(smooth, proximal, distal, width, 0.3, 0.7)))
        if shaft <= 0:
            continue
        beyond = _axis_contrast(smooth, proximal, distal, width, -0.7, -0.15)
        shares.append(float(np.mean(beyond > 0.5 * shaft)))
    return float(np.median(shares)) if shares else 0.0
