"""A second, much wider family of synthetic hands ("wide"), written independently of the
hand shapes in ``anatomy.py``: the same physics (``render.line_integrals``/``_detect`` and
the ``LongBone``/``Blob`` primitives), different anatomy and positioning.

It exists to JUDGE the engine, never to tune it: fingers together or spread to 30
degrees, flexed or crossing fingers, the thumb abducted, adducted along the index, across
the palm or out of the field, ulnar deviation, wrist-centred films with the fingers cut,
rings, a ruler, a lead marker, burned-in text and a rectangle, a second hand partly in the
field, any in-plane rotation and other hand proportions; ``hard=True`` adds elliptical
shafts, pronation, endosteal roughness and anti-scatter grid lines.

Truth per case (``WideCase.truth``): for MC1-MC5 the shaft axis (``proximal_rc``,
``distal_rc``), ``midshaft_center_rc``, ``width_mm`` and ``cortical_thickness_mm`` (at
mid-shaft, averaged over the central 20 % band for rough shafts), in the final image's
[row, col] pixel frame, plus what was drawn (``features``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from dxr_node.phantom.acquisition import Acquisition
from dxr_node.phantom.anatomy import Blob, HandAnatomy, LongBone, SoftTissue, pair, quad
from dxr_node.phantom.dicom import Patient, to_dataset
from dxr_node.phantom.render import (
    MAX_VALUE,
    Placement,
    _bbox,
    _detect,
    _local_coordinates,
    line_integrals,
)

THUMB_MODES = ("abducted", "adducted", "across", "out")
# One variation per case in the first 12 cases of a set, two in the next 12 (the case's own
# and the one five places on), on hands of random proportions.
SCENARIOS = ("spread", "together", "thumb_adducted", "thumb_across", "thumb_out", "flexed",
             "crossing", "ulnar", "fingers_cut", "objects", "second_hand", "rotation")
_RING_PATH = 3.0  # attenuation across a metal ring band (near-opaque)


@dataclass(frozen=True)
class WideHand:
    """Shape parameters of one hand (canonical right hand, PA, fingers up, mm, degrees)."""

    seed: int
    scale: float
    mc_length: tuple[float, float, float, float]  # MC2..MC5
    mc_width: tuple[float, float, float, float]
    mc_mci: tuple[float, float, float, float]  # 2T/W per bone
    base_step_mm: float  # spacing of the metacarpal bases
    head_step_mm: float  # spacing of the metacarpal heads
    finger_spread_deg: float  # 0 = fingers parallel and touching, 30 = fanned
    flexed: tuple[float, float, float, float]  # per finger II-V flexion (deg), 0 = straight
    crossing: int  # 0 = none, else finger (3/4) that crosses over its radial neighbour
    thumb_mode: str
    thumb_angle_deg: float
    ulnar_deviation_deg: float
    phalanx_ratio: float  # proximal phalanx / metacarpal length
    finger_radius_mm: float
    # Hard level: cross-section depth/width, pronation (compresses the hand across),
    # endosteal roughness amplitude (mm).
    depth_ratio: float = 1.0
    pronation_deg: float = 0.0
    roughness_mm: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator, seed: int, hard: bool = False,
               features: frozenset[str] = frozenset()) -> WideHand:
        """Other proportions always; the variations named in ``features`` (see SCENARIOS)
        on top of an otherwise ordinary hand (thumb abducted, fingers spread 4-15 deg)."""
        scale = float(rng.uniform(0.85, 1.2))
        mc2 = 66.0 * scale * float(rng.normal(1, 0.04))
        lengths = [mc2]
        for low, high in ((0.92, 1.01), (0.82, 0.92), (0.86, 0.98)):
            lengths.append(lengths[-1] * float(rng.uniform(low, high)))
        w2 = 8.6 * scale * float(rng.normal(1, 0.07))
        widths = [w2]
        for low, high in ((0.88, 1.02), (0.78, 0.92), (0.95, 1.12)):
            widths.append(widths[-1] * float(rng.uniform(low, high)))
        hand_mci = float(rng.uniform(0.30, 0.62))
        mcis = [float(np.clip(hand_mci + rng.normal(0, 0.025), 0.26, 0.66)) for _ in range(4)]
        flexed = [0.0, 0.0, 0.0, 0.0]
        if "flexed" in features:
            for finger in rng.choice(4, size=int(rng.integers(1, 4)), replace=False):
                flexed[int(finger)] = float(rng.uniform(30, 75))
        mode = next((m for m in THUMB_MODES if f"thumb_{m}" in features), "abducted")
        thumb_angle = {"abducted": rng.uniform(118, 155), "adducted": rng.uniform(97, 104),
                       "across": rng.uniform(100, 112), "out": rng.uniform(125, 150)}[mode]
        spread = (rng.uniform(15, 30) if "spread" in features
                  else rng.uniform(0, 3) if "together" in features else rng.uniform(4, 15))
        return cls(
            seed=seed, scale=scale, mc_length=quad(lengths), mc_width=quad(widths),
            mc_mci=quad(mcis),
            base_step_mm=float(rng.uniform(8.5, 13.0)) * scale,
            head_step_mm=float(rng.uniform(15.5, 22.0)) * scale,
            finger_spread_deg=float(spread),
            flexed=quad(flexed),
            crossing=int(rng.choice([3, 4])) if "crossing" in features else 0,
            thumb_mode=mode, thumb_angle_deg=float(thumb_angle),
            ulnar_deviation_deg=float(rng.uniform(10, 25)) if "ulnar" in features else 0.0,
            phalanx_ratio=float(rng.uniform(0.56, 0.72)),
            finger_radius_mm=float(rng.uniform(7.5, 10.0)) * scale,
            depth_ratio=float(rng.uniform(0.78, 0.95)) if hard else 1.0,
            pronation_deg=float(rng.uniform(0, 25)) if hard else 0.0,
            roughness_mm=float(rng.uniform(0.05, 0.15)) if hard else 0.0,
        )


@dataclass(frozen=True)
class RoughBone(LongBone):
    """A long bone whose medullary canal wanders (endosteal roughness), seeded."""

    roughness_mm: float = 0.0
    roughness_seed: int = 0

    def profiles(self, samples: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outer, inner, mu = super().profiles(samples)
        if self.roughness_mm <= 0:
            return outer, inner, mu
        rng = np.random.default_rng(self.roughness_seed)
        # Features ~2-4 mm long along the shaft.
        noise = cv2.GaussianBlur(rng.standard_normal((1, samples)).astype(np.float32), (0, 0),
                                 sigmaX=max(1.0, 2.5 / self.length_mm * samples))[0]
        noise /= max(float(noise.std()), 1e-6)
        rough = np.clip(inner + self.roughness_mm * noise, 0.2, outer - 0.25)
        return outer, np.where(inner > 0, rough, inner), mu

    def band_thickness_mm(self, fraction: float = 0.2) -> float:
        """Mean cortical thickness over the central ``fraction`` of the length."""
        outer, inner, _ = self.profiles()
        s = np.linspace(0, 1, len(outer))
        band = np.abs(s - 0.5) <= fraction / 2
        return float(np.mean(outer[band] - inner[band]))


def _unit(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a)])


def _rotate(point: np.ndarray | tuple[float, float], pivot: np.ndarray,
            angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return pivot + rot @ (np.asarray(point, float) - pivot)


def build_anatomy(hand: WideHand) -> HandAnatomy:
    """Bones of the hand in the canonical frame (right hand, PA, fingers up)."""
    rng = np.random.default_rng([hand.seed, 7])
    s = hand.scale
    squeeze = math.cos(math.radians(hand.pronation_deg))  # pronation narrows the hand
    bones: list[LongBone] = []
    metacarpals: dict[str, LongBone] = {}
    for index, name in enumerate(("MC2", "MC3", "MC4", "MC5")):
        slot = index - 1  # MC2 = -1 (radial), MC3 = 0, ...
        base = np.array([slot * hand.base_step_mm * squeeze,
                         (1.5, 0.0, -1.5, -4.5)[index] * s + rng.normal(0, 0.8)])
        head_x = slot * hand.head_step_mm * squeeze * (0.93 if slot == 2 else 1.0)
        length = hand.mc_length[index]
        direction = np.array([head_x - base[0], length])
        direction /= np.linalg.norm(direction)
        width = hand.mc_width[index]
        thickness = hand.mc_mci[index] * width / 2
        bone: LongBone = RoughBone(
            name=name, proximal_xy=tuple(base), distal_xy=tuple(base + length * direction),
            outer_radius_mm=width / 2, inner_radius_mm=width / 2 - thickness,
            base_flare=float(rng.uniform(1.3, 1.6)), head_flare=float(rng.uniform(1.18, 1.4)),
            base_cap_mm=2.8 * s, head_cap_mm=0.7 * width, end_shell_mm=0.45 * s,
            shaft_start=float(rng.uniform(0.26, 0.34)), shaft_end=float(rng.uniform(0.66, 0.74)),
            depth_ratio=hand.depth_ratio, roughness_mm=hand.roughness_mm,
            roughness_seed=hand.seed * 10 + index)
        bones.append(bone)
        metacarpals[name] = bone
    fingers = []
    gap = 1.6 * s
    for index, name in enumerate(("MC2", "MC3", "MC4", "MC5")):
        ray = index + 2
        mc = metacarpals[name]
        angle = 90.0 + (0.5, 0.0, -0.5, -1.0)[index] * hand.finger_spread_deg
        angle += float(rng.normal(0, 1.5))
        if hand.crossing == ray:
            angle += 9.0 + hand.finger_spread_deg * 0.5  # leans over its radial neighbour
        flex = math.cos(math.radians(hand.flexed[index]))
        start = np.asarray(mc.distal_xy)
        chain = [name]
        proximal_length = hand.phalanx_ratio * mc.length_mm * (0.8 if ray == 5 else 1.0)
        lengths = (proximal_length, proximal_length * float(rng.uniform(0.56, 0.68)),
                   proximal_length * float(rng.uniform(0.40, 0.50)))
        for level, length, width_share in zip("PMD", lengths, (0.88, 0.78, 0.66), strict=True):
            width = mc.outer_radius_mm * 2 * width_share
            length = length * max(flex, 0.35)
            proximal = start + gap * _unit(angle)
            distal = proximal + length * _unit(angle)
            bones.append(LongBone(
                f"{level}{ray}", tuple(proximal), tuple(distal), width / 2,
                width / 2 - min(1.3 * s, 0.3 * width), base_flare=1.35,
                head_flare=0.95 if level == "D" else 1.15, base_cap_mm=2.0 * s,
                head_cap_mm=(2.0 if level == "D" else 3.0) * s, shaft_start=0.25,
                shaft_end=0.6 if level == "D" else 0.75, end_shell_mm=0.4 * s,
                depth_ratio=0.8))
            chain.append(f"{level}{ray}")
            start = distal
            angle += float(rng.normal(0, 1.5))
        fingers.append(tuple(chain))
    fingers.insert(0, _thumb(hand, metacarpals["MC2"], bones, rng))
    blobs = _carpals(hand, metacarpals, rng)
    bones += _forearm(hand, rng)
    if hand.ulnar_deviation_deg:
        pivot = np.array([0.0, -22.0 * s])
        turned: list[LongBone] = []
        for bone in bones:
            if bone.name in ("radius", "ulna"):
                turned.append(bone)
                continue
            turned.append(replace(
                bone, proximal_xy=pair(_rotate(bone.proximal_xy, pivot,
                                               -hand.ulnar_deviation_deg)),
                distal_xy=pair(_rotate(bone.distal_xy, pivot, -hand.ulnar_deviation_deg))))
        bones = turned
        blobs = [replace(b, center_xy=pair(_rotate(b.center_xy, pivot,
                                                   -hand.ulnar_deviation_deg * 0.6)),
                         angle_deg=b.angle_deg - hand.ulnar_deviation_deg * 0.6) for b in blobs]
    soft = SoftTissue(finger_radius_mm=hand.finger_radius_mm,
                      palm_half_thickness_mm=float(rng.uniform(12, 17)) * s,
                      wrist_half_thickness_mm=float(rng.uniform(16, 21)) * s,
                      wrist_half_width_mm=float(rng.uniform(26, 33)) * s)
    return HandAnatomy(f"wide-{hand.seed:08d}", "adult", tuple(bones), tuple(blobs),
                       tuple(fingers), soft, osteoporotic=min(hand.mc_mci) < 0.38)


def _thumb(hand: WideHand, mc2: LongBone, bones: list[LongBone],
           rng: np.random.Generator) -> tuple[str, ...]:
    s = hand.scale
    length = 44.0 * s * float(rng.normal(1, 0.04))
    width = 8.4 * s * float(rng.normal(1, 0.05))
    angle = hand.thumb_angle_deg
    if hand.thumb_mode == "adducted":
        # Along the index: the shaft one width plus 2-5 mm radial of MC2's.
        mid2 = np.add(mc2.proximal_xy, mc2.distal_xy) / 2
        clearance = mc2.outer_radius_mm + width / 2 + float(rng.uniform(2.0, 5.0))
        mid = mid2 + np.array([-clearance, -0.25 * mc2.length_mm])
        base = mid - length / 2 * _unit(angle)
    else:
        base = np.array([mc2.proximal_xy[0] - 10.0 * s, mc2.proximal_xy[1] - 4.0 * s])
    mc1 = LongBone("MC1", tuple(base), tuple(base + length * _unit(angle)), width / 2,
                   width / 2 - 1.9 * s, base_flare=1.5, head_flare=1.25, base_cap_mm=2.5 * s,
                   head_cap_mm=5.0 * s, end_shell_mm=0.45 * s)
    bones.append(mc1)
    start = np.asarray(mc1.distal_xy)
    phalanx_angle = {"abducted": angle - 10, "out": angle - 10, "adducted": angle - 4,
                     "across": float(rng.uniform(20, 45))}[hand.thumb_mode]
    for name, plen, pwidth in (("P1", 30.0, 7.8), ("D1", 22.0, 6.4)):
        plen *= s
        pwidth *= s
        proximal = start + 1.8 * s * _unit(phalanx_angle)
        distal = proximal + plen * _unit(phalanx_angle)
        bones.append(LongBone(name, tuple(proximal), tuple(distal), pwidth / 2,
                              pwidth / 2 - 1.3 * s, base_flare=1.35, head_flare=1.1,
                              base_cap_mm=2.0 * s, head_cap_mm=2.5 * s, shaft_start=0.25,
                              shaft_end=0.7, end_shell_mm=0.4 * s, depth_ratio=0.8))
        start = distal
        phalanx_angle += float(rng.normal(0, 3))
    return ("MC1", "P1", "D1")


def _carpals(hand: WideHand, mc: dict[str, LongBone], rng: np.random.Generator) -> list[Blob]:
    """Two rows of eight rounded blocks under the metacarpal bases."""
    s = hand.scale
    bases = {name: np.asarray(bone.proximal_xy) for name, bone in mc.items()}
    distal_row = [("trapezium", bases["MC2"] + (-9 * s, -6 * s), (6.5, 5.5, 6.0)),
                  ("trapezoid", bases["MC2"] + (0.5 * s, -6.5 * s), (5.0, 4.6, 5.5)),
                  ("capitate", bases["MC3"] + (0.0, -11 * s), (10.0, 6.0, 8.0)),
                  ("hamate", (bases["MC4"] + bases["MC5"]) / 2 + (0.0, -9.5 * s),
                   (8.5, 6.5, 7.5))]
    mid_x = (bases["MC2"][0] + bases["MC5"][0]) / 2
    proximal_row = [("scaphoid", (mid_x - 16 * s, -24 * s), (11.0, 5.5, 6.5)),
                    ("lunate", (mid_x - 2 * s, -28 * s), (7.0, 6.5, 7.5)),
                    ("triquetrum", (mid_x + 11 * s, -24 * s), (6.5, 5.0, 6.5)),
                    ("pisiform", (mid_x + 14 * s, -20 * s), (4.3, 4.0, 4.5))]
    blobs = []
    for name, centre, axes in distal_row + proximal_row:
        blobs.append(Blob(name, tuple(np.asarray(centre, float) + rng.normal(0, 0.5, 2)),
                          tuple(a * s * float(rng.uniform(0.92, 1.08)) for a in axes),
                          float(rng.uniform(0, 180)), 0.6 * s, float(rng.uniform(2.2, 3.0))))
    return blobs


def _forearm(hand: WideHand, rng: np.random.Generator) -> list[LongBone]:
    s = hand.scale
    bones = []
    for name, end_at, width, flare, depth in (("radius", (-10.0, -37.0), 17.0, 1.7, 0.6),
                                              ("ulna", (14.0, -41.0), 10.5, 1.25, 0.85)):
        end = np.array(end_at) * s
        width *= s * float(rng.normal(1, 0.04))
        angle = 90.0 + float(rng.normal(0, 2))
        bones.append(LongBone(name, pair(end - 230 * _unit(angle)), pair(end), width / 2,
                              width / 2 - 2.1 * s, base_flare=1.0, head_flare=flare,
                              base_cap_mm=1.0, head_cap_mm=3.0 * s, shaft_start=0.05,
                              shaft_end=0.78, end_shell_mm=0.5 * s, depth_ratio=depth))
    return bones


# --- one case: positioning, extras, rendering ---------------------------------------------

@dataclass(frozen=True)
class WideSetup:
    """How one hand is imaged, and what else is in the field."""

    rotation_deg: float  # any in-plane rotation (counter-clockwise)
    laterality: str
    pixel_spacing_mm: float
    offset_mm: tuple[float, float] = (0.0, 0.0)
    noise_seed: int = 0
    counts_per_mm2: float = 1e6
    blur_sigma_mm: float = 0.1
    edge_gain: float = 0.0
    marker: bool = True
    ring_finger: int = 0  # 0 = none, else the ray (2-5) wearing a ring
    ruler: bool = False
    burned_in: bool = False  # text and a rectangle burned into the pixels
    second_hand: bool = False
    fingers_cut: bool = False  # wrist-centred film: the fingers leave the field
    thumb_out: bool = False
    grid_lines: bool = False

    @classmethod
    def random(cls, rng: np.random.Generator, hand: WideHand, hard: bool = False,
               features: frozenset[str] = frozenset()) -> WideSetup:
        objects = "objects" in features
        return cls(
            rotation_deg=float(rng.uniform(-180, 180)) if "rotation" in features
            else float(rng.normal(0, 10)),
            laterality="L" if rng.random() < 0.5 else "R",
            pixel_spacing_mm=float(rng.choice((0.1, 0.12, 0.14, 0.15, 0.16))),
            offset_mm=(float(rng.normal(0, 6)), float(rng.normal(0, 6))),
            noise_seed=int(rng.integers(0, 2**31)),
            counts_per_mm2=float(np.exp(rng.uniform(np.log(3e5), np.log(3e6)))),
            blur_sigma_mm=float(rng.uniform(0.05, 0.15)),
            edge_gain=float(rng.uniform(0.2, 0.8)) if rng.random() < 0.4 else 0.0,
            marker=objects or rng.random() < 0.8,
            ring_finger=int(rng.choice([3, 4, 5])) if objects else 0,
            ruler=objects, burned_in=objects,
            second_hand="second_hand" in features,
            fingers_cut="fingers_cut" in features,
            thumb_out=hand.thumb_mode == "out",
            grid_lines=hard and rng.random() < 0.6,
        )


@dataclass
class WideCase:
    name: str
    pixels: np.ndarray  # uint16 MONOCHROME2
    acquisition: Acquisition
    truth: dict[str, Any] = field(default_factory=dict)


def render_case(name: str, hand: WideHand, setup: WideSetup) -> WideCase:
    anatomy = build_anatomy(hand)
    acquisition = Acquisition(
        pixel_spacing_mm=setup.pixel_spacing_mm, field_mm=(300.0, 300.0),
        rotation_deg=setup.rotation_deg, laterality=setup.laterality,
        offset_mm=setup.offset_mm, blur_sigma_mm=setup.blur_sigma_mm,
        edge_sigma_mm=2.5 if setup.edge_gain else 0.0, edge_gain=setup.edge_gain,
        counts_per_mm2=setup.counts_per_mm2, scatter_fraction=0.08, marker=setup.marker,
        noise_seed=setup.noise_seed)
    placement = Placement(anatomy, acquisition)
    attenuation = line_integrals(anatomy, acquisition, placement)
    k = acquisition.supersample
    if setup.ring_finger:
        _add_ring(attenuation, anatomy, placement, k, setup.ring_finger)
    if setup.ruler:
        _add_ruler(attenuation, acquisition, k)
    if setup.second_hand:
        _add_second_hand(attenuation, hand, anatomy, acquisition, placement)
    pixels = _detect(attenuation, acquisition, placement)
    del attenuation
    if setup.grid_lines:
        period = 3.3 + (setup.noise_seed % 7) * 0.2  # pixels per grid line pair
        cols = np.arange(pixels.shape[1], dtype=np.float32)
        stripes = 18.0 * np.sin(2 * np.pi * cols / period)
        pixels = np.clip(pixels.astype(np.float32) + stripes[None, :], 0, MAX_VALUE
                         ).astype(np.uint16)
    truth = _truth(anatomy, placement, acquisition)
    rows, cols = pixels.shape
    r0, r1, c0, c1 = 0, rows, 0, cols
    if setup.fingers_cut:
        r0, r1, c0, c1 = _cut_fingers(truth, acquisition, (r0, r1, c0, c1))
    if setup.thumb_out:
        r0, r1, c0, c1 = _cut_thumb(truth, acquisition, (r0, r1, c0, c1))
    pixels = np.ascontiguousarray(pixels[r0:r1, c0:c1])
    _shift(truth, r0, c0)
    if setup.burned_in:
        _burn_in(pixels, truth, acquisition)
    truth.update(rows=pixels.shape[0], cols=pixels.shape[1], laterality=setup.laterality,
                 pixel_spacing_mm=setup.pixel_spacing_mm, rotation_deg=setup.rotation_deg,
                 hand=_asdict(hand), setup=_asdict(setup),
                 features=_features(hand, setup))
    return WideCase(name, pixels, acquisition, truth)


def _asdict(obj: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(obj).items()}


def _features(hand: WideHand, setup: WideSetup) -> list[str]:
    out = [f"thumb {hand.thumb_mode}", f"spread {hand.finger_spread_deg:.0f}deg",
           f"rotation {setup.rotation_deg:.0f}deg"]
    if any(hand.flexed):
        out.append("flexed fingers")
    if hand.crossing:
        out.append(f"finger {hand.crossing} crossing")
    if hand.ulnar_deviation_deg:
        out.append(f"ulnar deviation {hand.ulnar_deviation_deg:.0f}deg")
    for flag, label in ((setup.ring_finger, "ring"), (setup.ruler, "ruler"),
                        (setup.burned_in, "burned-in text+rectangle"),
                        (setup.second_hand, "second hand"), (setup.fingers_cut, "fingers cut"),
                        (setup.grid_lines, "grid lines"), (hand.pronation_deg > 0, "pronation"),
                        (hand.roughness_mm > 0, "endosteal roughness"),
                        (hand.depth_ratio < 1, "elliptical shafts")):
        if flag:
            out.append(label)
    return out


def _truth(anatomy: HandAnatomy, placement: Placement, acquisition: Acquisition
           ) -> dict[str, Any]:
    bones = {}
    for name in ("MC1", "MC2", "MC3", "MC4", "MC5"):
        bone = anatomy.bone(name)
        proximal, distal = placement.rc(bone.proximal_xy), placement.rc(bone.distal_xy)
        thickness = (bone.band_thickness_mm() if isinstance(bone, RoughBone)
                     else bone.cortical_thickness_mm)
        bones[name] = {
            "width_mm": 2 * bone.outer_radius_mm, "cortical_thickness_mm": thickness,
            "length_mm": bone.length_mm,
            "proximal_rc": [float(v) for v in proximal], "distal_rc": [float(v) for v in distal],
            "midshaft_center_rc": [float(v) for v in (proximal + distal) / 2],
        }
    return {"anatomy_id": anatomy.anatomy_id, "bones": bones}


def _shift(truth: dict[str, Any], r0: int, c0: int) -> None:
    for bone in truth["bones"].values():
        for key in ("proximal_rc", "distal_rc", "midshaft_center_rc"):
            bone[key] = [bone[key][0] - r0, bone[key][1] - c0]


def _border_toward(direction_rc: np.ndarray) -> int:
    """0 top, 1 bottom, 2 left, 3 right: the image border a direction points at."""
    dr, dc = direction_rc
    if abs(dr) >= abs(dc):
        return 0 if dr < 0 else 1
    return 2 if dc < 0 else 3


def _cut_at(box: tuple[int, int, int, int], border: int, point_rc: np.ndarray
            ) -> tuple[int, int, int, int]:
    r0, r1, c0, c1 = box
    r, c = int(round(point_rc[0])), int(round(point_rc[1]))
    if border == 0:
        r0 = max(r0, min(r, r1 - 50))
    elif border == 1:
        r1 = min(r1, max(r, r0 + 50))
    elif border == 2:
        c0 = max(c0, min(c, c1 - 50))
    else:
        c1 = min(c1, max(c, c0 + 50))
    return r0, r1, c0, c1


def _cut_fingers(truth: dict[str, Any], acquisition: Acquisition,
                 box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Wrist-centred film: the field ends 15-40 mm beyond the MC3 head."""
    mc3 = truth["bones"]["MC3"]
    distal = np.asarray(mc3["distal_rc"])
    direction = distal - np.asarray(mc3["proximal_rc"])
    direction /= np.linalg.norm(direction)
    beyond = (15 + (acquisition.noise_seed % 26)) / acquisition.pixel_spacing_mm
    border = _border_toward(direction)
    # Cut perpendicular to the nearest image axis, at the point beyond the head.
    return _cut_at(box, border, distal + beyond * direction)


def _cut_thumb(truth: dict[str, Any], acquisition: Acquisition,
               box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Thumb out of the field: the radial border runs one MC2 width outside MC2's axis
    (MC2 stays whole; the thumb is cut off or partly so)."""
    mc1, mc2 = truth["bones"]["MC1"], truth["bones"]["MC2"]
    border = _border_toward(np.subtract(mc1["midshaft_center_rc"], mc2["midshaft_center_rc"]))
    ends = np.array([mc2["proximal_rc"], mc2["distal_rc"]])
    margin = mc2["width_mm"] / acquisition.pixel_spacing_mm
    point = {0: (ends[:, 0].min() - margin, 0), 1: (ends[:, 0].max() + margin, 0),
             2: (0, ends[:, 1].min() - margin), 3: (0, ends[:, 1].max() + margin)}[border]
    return _cut_at(box, border, np.asarray(point, float))


def _add_ring(attenuation: np.ndarray, anatomy: HandAnatomy, placement: Placement, k: int,
              ray: int) -> None:
    """A metal band around the proximal phalanx of ``ray``, near its middle."""
    phalanx = anatomy.bone(f"P{ray}")
    proximal, distal = np.asarray(phalanx.proximal_xy), np.asarray(phalanx.distal_xy)
    direction = (distal - proximal) / np.linalg.norm(distal - proximal)
    centre = proximal + 0.45 * (distal - proximal)
    a, b = placement.grid_to_xy(k)
    half_width = anatomy.soft_tissue.finger_radius_mm + 1.0
    box = _bbox([centre], half_width + 3, a, b, _placement_step(placement, k),
                attenuation.shape)
    if box is None:
        return
    along, across = _local_coordinates(centre, direction, a, b, box)
    band = (np.abs(along) < 1.4) & (np.abs(across) < half_width)
    i0, i1, j0, j1 = box
    attenuation[i0:i1, j0:j1] += band.astype(np.float32) * _RING_PATH


def _placement_step(placement: Placement, k: int) -> float:
    """Supersampled grid step in mm."""
    return float(1.0 / np.linalg.norm(placement.linear[:, 0])) / k


def _add_ruler(attenuation: np.ndarray, acquisition: Acquisition, k: int) -> None:
    """A radiopaque ruler (15 mm strip, ticks every 1 mm, long ticks every 5 mm) along the
    left border of the field."""
    step = acquisition.pixel_spacing_mm / k
    rows = attenuation.shape[0]
    left, width = round(6 / step), round(15 / step)
    top, bottom = round(rows * 0.15), round(rows * 0.75)
    attenuation[top:bottom, left:left + width] += 0.35
    for index, row in enumerate(range(top, bottom, max(1, round(1 / step)))):
        length = width if index % 5 == 0 else width // 2
        attenuation[row:row + max(1, round(0.25 / step)), left:left + length] += 1.5


def _add_second_hand(attenuation: np.ndarray, hand: WideHand, anatomy: HandAnatomy,
                     acquisition: Acquisition, placement: Placement) -> None:
    """The other hand of the same patient beside this one, about half inside the field."""
    other = build_anatomy(replace(hand, seed=hand.seed + 99991, thumb_mode="abducted",
                                  thumb_angle_deg=130.0, crossing=0))
    acq2 = replace(acquisition, laterality="R" if acquisition.laterality == "L" else "L",
                   marker=False, rotation_deg=acquisition.rotation_deg + 8.0)
    second = Placement(other, acq2)
    # Shift it to the ULNAR side of this hand (where its little finger lies), so its thumb
    # side enters the field.
    mc2 = placement.rc(anatomy.bone("MC2").proximal_xy)
    mc5 = placement.rc(anatomy.bone("MC5").proximal_xy)
    ulnar = (mc5 - mc2) / max(np.linalg.norm(mc5 - mc2), 1e-6)
    second.offset = placement.offset + ulnar * 125.0 / acquisition.pixel_spacing_mm
    attenuation += line_integrals(other, acq2, second)


def _burn_in(pixels: np.ndarray, truth: dict[str, Any], acquisition: Acquisition) -> None:
    """Burned-in annotation: two lines of text in a corner and a rectangle drawn around the
    carpus (as the scaphoid series does), in white."""
    spacing = acquisition.pixel_spacing_mm
    mask = np.zeros(pixels.shape, np.uint8)  # OpenCV draws text on 8-bit images only
    scale = 4.0 / spacing / 22.0
    thickness = max(1, round(0.5 / spacing))
    for line, text in enumerate(("WIDE PHANTOM 2026-12-02", "HAND AP/PA  kV 50")):
        cv2.putText(mask, text, (round(10 / spacing), round((12 + 7 * line) / spacing)),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    base = np.asarray(truth["bones"]["MC3"]["proximal_rc"])
    head = np.asarray(truth["bones"]["MC3"]["distal_rc"])
    toward_wrist = (base - head) / np.linalg.norm(base - head)
    centre = base + toward_wrist * 18 / spacing
    half = 14 / spacing
    top_left = (round(centre[1] - half), round(centre[0] - half))
    bottom_right = (round(centre[1] + half), round(centre[0] + half))
    cv2.rectangle(mask, top_left, bottom_right, 255, max(2, round(0.8 / spacing)))
    pixels[mask > 127] = MAX_VALUE


# --- sets ---------------------------------------------------------------------------------

def scenario(index: int) -> frozenset[str]:
    """The variations of case ``index`` (see SCENARIOS)."""
    own = SCENARIOS[index % len(SCENARIOS)]
    if (index // len(SCENARIOS)) % 2 == 0:
        return frozenset({own})
    other = SCENARIOS[(index + 5) % len(SCENARIOS)]
    if own.startswith("thumb") and other.startswith("thumb") or {own, other} == {
            "spread", "together"}:
        other = "rotation"
    return frozenset({own, other})


def case_specs(seed: int, index: int, hard: bool = False) -> tuple[WideHand, WideSetup]:
    """Hand and setup of case ``index`` of the set ``seed`` (own seeded streams)."""
    features = scenario(index)
    hand = WideHand.random(np.random.default_rng([seed, index, 0, int(hard)]),
                           seed * 1000 + index, hard, features)
    setup = WideSetup.random(np.random.default_rng([seed, index, 1, int(hard)]), hand, hard,
                             features)
    return hand, setup


def wide_case(seed: int, index: int, hard: bool = False) -> WideCase:
    """Case ``index`` of the set ``seed``."""
    hand, setup = case_specs(seed, index, hard)
    return render_case(f"wide{'_hard' if hard else ''}_{seed}_{index:03d}", hand, setup)


def repositioned_cases(seed: int, hand_index: int, repeats: int) -> list[WideCase]:
    """One hand imaged ``repeats`` times: new rotation, position, exposure and noise, and
    the fingers spread a little differently each time (same bones)."""
    rng = np.random.default_rng([seed, hand_index, 5])
    hand = WideHand.random(np.random.default_rng([seed, hand_index, 0]),
                           seed * 1000 + hand_index)
    hand = replace(hand, thumb_mode="abducted", thumb_angle_deg=135.0, flexed=(0, 0, 0, 0),
                   crossing=0)
    base = WideSetup(rotation_deg=float(rng.uniform(-30, 30)), laterality="LR"[hand_index % 2],
                     pixel_spacing_mm=0.12, noise_seed=int(rng.integers(0, 2**31)))
    cases = []
    for repeat in range(repeats):
        moved = replace(hand, finger_spread_deg=float(np.clip(
            hand.finger_spread_deg + rng.normal(0, 3), 0, 30)))
        setup = replace(base, rotation_deg=base.rotation_deg + float(rng.normal(0, 5)),
                        offset_mm=(float(rng.normal(0, 5)), float(rng.normal(0, 5))),
                        counts_per_mm2=1e6 * float(np.exp(rng.normal(0, 0.2))),
                        noise_seed=int(rng.integers(0, 2**31)))
        cases.append(render_case(f"repos_{seed}_{hand_index}_{repeat}", moved, setup))
    return cases


def case_dataset(case: WideCase, patient_seed: int = 0) -> Any:
    """The case as a DX DICOM dataset (ImagerPixelSpacing = the true spacing)."""
    patient = Patient.random(np.random.default_rng([patient_seed, 3]))
    return to_dataset(case.pixels, case.acquisition, patient, case.name)
