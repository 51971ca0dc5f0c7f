"""Anatomy of a synthetic hand: bone geometry in millimetres, independent of how it is imaged.

The canonical frame is a RIGHT hand seen in PA view with fingers up: x points to the image
right (ulnar side, towards the little finger), y points up (distal). The origin is the base
of the third metacarpal. The acquisition mirrors this for a left hand and rotates it.

Long bones are bodies of revolution around a straight axis (an outer radius profile and an
inner one), so their projection is exact: at axial position t and distance d from the axis,
the path through the outer surface is 2*sqrt(R(t)^2 - d^2). Metacarpal shafts keep R and r
constant over the central 40 % of their length so the truth at mid-shaft is unambiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

VARIANTS = ("adult", "paediatric", "toddler", "non-hand")
METACARPALS = ("MC2", "MC3", "MC4", "MC5")

# Linear attenuation coefficients in 1/mm for a ~50 kVp hand exposure (effective ~35 keV).
MU_SOFT = 0.030
MU_CORTEX = 0.180
MU_MARROW = 0.027
MU_TRABECULAR = 0.065


def pair(values) -> tuple[float, float]:
    """Two numbers (an array, a sequence) as the typed (x, y) the dataclasses hold."""
    x, y = values
    return float(x), float(y)


def triple(values) -> tuple[float, float, float]:
    a, b, c = values
    return float(a), float(b), float(c)


def quad(values) -> tuple[float, float, float, float]:
    a, b, c, d = values
    return float(a), float(b), float(c), float(d)


@dataclass(frozen=True)
class LongBone:
    """A tubular bone from its proximal end to its distal end (canonical frame, mm)."""

    name: str
    proximal_xy: tuple[float, float]
    distal_xy: tuple[float, float]
    outer_radius_mm: float  # at mid-shaft
    inner_radius_mm: float  # medullary canal at mid-shaft
    base_flare: float = 1.45  # outer radius at the base / mid-shaft radius
    head_flare: float = 1.30
    base_cap_mm: float = 3.0  # length of the elliptical rounding of each end
    head_cap_mm: float = 5.0
    shaft_start: float = 0.30  # fraction of length where the constant shaft begins/ends
    shaft_end: float = 0.70
    end_shell_mm: float = 0.5  # cortex thickness at the ends (trabecular interior)
    physis: str | None = None  # "proximal"/"distal": open growth plate (children)
    physis_gap_mm: float = 0.0
    # Cross-section depth / width: 1 = circular (metacarpals, so the truth is exact);
    # flatter for phalanges and the distal radius.
    depth_ratio: float = 1.0

    @property
    def length_mm(self) -> float:
        return math.dist(self.proximal_xy, self.distal_xy)

    @property
    def cortical_thickness_mm(self) -> float:
        return self.outer_radius_mm - self.inner_radius_mm

    @property
    def midshaft_xy(self) -> tuple[float, float]:
        (x0, y0), (x1, y1) = self.proximal_xy, self.distal_xy
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    def profiles(self, samples: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Outer radius, inner radius and interior attenuation at ``samples`` points s in [0, 1]."""
        s = np.linspace(0.0, 1.0, samples)
        length = self.length_mm
        r_mid, t_mid = self.outer_radius_mm, self.cortical_thickness_mm
        r_base, r_head = r_mid * self.base_flare, r_mid * self.head_flare
        s_base = min(self.base_cap_mm / length, self.shaft_start * 0.5)
        s_head = 1.0 - min(self.head_cap_mm / length, (1.0 - self.shaft_end) * 0.5)

        outer = np.full_like(s, r_mid)
        below = s < self.shaft_start
        outer[below] = r_mid + (r_base - r_mid) * _smoothstep(
            (self.shaft_start - s[below]) / (self.shaft_start - s_base))
        above = s > self.shaft_end
        outer[above] = r_mid + (r_head - r_mid) * _smoothstep(
            (s[above] - self.shaft_end) / (s_head - self.shaft_end))
        cap = s < s_base
        outer[cap] = r_base * np.sqrt(np.clip(1 - ((s_base - s[cap]) / s_base) ** 2, 0, 1))
        cap = s > s_head
        outer[cap] = r_head * np.sqrt(
            np.clip(1 - ((s[cap] - s_head) / (1 - s_head)) ** 2, 0, 1))

        # Cortex thins from its mid-shaft value to a shell towards both ends; the interior
        # turns from marrow (shaft) to trabecular bone (ends).
        toward_end = np.maximum(
            _smoothstep((self.shaft_start - s) / self.shaft_start),
            _smoothstep((s - self.shaft_end) / (1 - self.shaft_end)))
        thickness = t_mid + (self.end_shell_mm - t_mid) * toward_end
        inner = np.clip(outer - thickness, 0, None)
        interior_mu = MU_MARROW + (MU_TRABECULAR - MU_MARROW) * toward_end
        return outer, inner, interior_mu

    def physis_position(self) -> float | None:
        """Axial distance (mm from the proximal end) of the open growth plate, if any."""
        if self.physis is None:
            return None
        cap = self.base_cap_mm if self.physis == "proximal" else self.head_cap_mm
        offset = 1.6 * cap
        return offset if self.physis == "proximal" else self.length_mm - offset


@dataclass(frozen=True)
class Blob:
    """A carpal (or sesamoid) bone: an ellipsoid with a thin cortex and trabecular interior."""

    name: str
    center_xy: tuple[float, float]
    semi_axes_mm: tuple[float, float, float]  # in-plane a (along angle), b, depth c
    angle_deg: float
    shell_mm: float = 0.5
    squareness: float = 2.0  # in-plane superellipse exponent: 2 = ellipse, larger = boxier


@dataclass(frozen=True)
class SoftTissue:
    finger_radius_mm: float = 8.5
    palm_half_thickness_mm: float = 14.0
    wrist_half_thickness_mm: float = 19.0
    wrist_half_width_mm: float = 29.0


@dataclass(frozen=True)
class HandAnatomy:
    anatomy_id: str
    variant: str
    long_bones: tuple[LongBone, ...]
    blobs: tuple[Blob, ...]
    fingers: tuple[tuple[str, ...], ...]  # bone names per ray, proximal -> distal
    soft_tissue: SoftTissue = field(default_factory=SoftTissue)
    osteoporotic: bool = False  # cortices thinned to 1.0-1.6 mm (metacarpals II-IV)

    def bone(self, name: str) -> LongBone:
        for bone in self.long_bones:
            if bone.name == name:
                return bone
        raise KeyError(name)

    @classmethod
    def random(cls, rng: np.random.Generator, variant: str = "adult",
               osteoporotic: bool | None = None) -> HandAnatomy:
        """A plausible hand; adults are ~25 % osteoporotic unless ``osteoporotic`` is given."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        anatomy_id = f"{variant}-{rng.integers(0, 2**32):08x}"
        if variant == "non-hand":
            return cls(anatomy_id, variant, (), (), ())
        if osteoporotic is None:
            osteoporotic = variant == "adult" and rng.random() < 0.25
        return _build_hand(rng, anatomy_id, variant, bool(osteoporotic))


# Typical young adult woman: (outer width mm, cortical thickness mm, length mm).
_METACARPAL_TYPICAL = {
    "MC2": (8.5, 2.3, 68.0), "MC3": (8.2, 2.2, 65.0),
    "MC4": (7.0, 1.9, 58.0), "MC5": (7.4, 1.9, 54.0),
}
# Phalanx (width mm, length mm) proximal, middle, distal per finger.
_PHALANGES = {
    2: ((7.4, 40.0), (6.4, 23.0), (5.4, 17.0)),
    3: ((7.6, 44.0), (6.8, 28.0), (5.6, 19.0)),
    4: ((7.0, 41.0), (6.4, 26.0), (5.2, 18.0)),
    5: ((6.2, 32.0), (5.4, 18.0), (4.8, 16.0)),
}
# Carpals in the canonical frame: centre (x, y mm), semi-axes (a along the angle, b across,
# c depth) and angle, packed with ~1.5 mm joint spaces between them.
_CARPALS = (
    ("trapezium", (-20.5, -10.0), (7.0, 5.5, 6.5), 45.0),
    ("trapezoid", (-10.5, -6.8), (5.2, 4.8, 6.0), 80.0),
    ("capitate", (-0.8, -12.5), (10.5, 6.3, 8.5), 90.0),
    ("hamate", (11.2, -11.5), (8.8, 6.6, 8.0), 100.0),
    ("scaphoid", (-12.5, -24.0), (11.5, 5.5, 6.5), 122.0),
    ("lunate", (0.5, -29.0), (7.2, 6.3, 8.0), 5.0),
    ("triquetrum", (12.3, -25.0), (6.3, 5.2, 6.5), 25.0),
    ("pisiform", (14.5, -21.5), (4.5, 4.3, 4.5), 60.0),
)


def _build_hand(rng: np.random.Generator, anatomy_id: str, variant: str,
                osteoporotic: bool) -> HandAnatomy:
    scale = {"adult": 1.0, "paediatric": 0.72, "toddler": 0.45}[variant]
    scale *= float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12))
    child = variant != "adult"
    cortical_factor = float(rng.uniform(0.50, 0.70)) if osteoporotic else 1.0
    bones = _metacarpals(rng, scale, cortical_factor, osteoporotic and variant == "adult", child)
    gap = 1.8 * scale if not child else 2.6 * scale  # joint spaces (wider with cartilage)
    fingers = _finger_rays(rng, bones, scale, gap, child)
    fingers.insert(0, _thumb(rng, bones, scale, gap, cortical_factor, child))
    bones += _forearm(rng, scale, cortical_factor, child)

    blobs = _carpals(rng, scale, variant)
    blobs.append(Blob("sesamoid", _thumb_sesamoid(bones),
                      (2.2 * scale, 1.8 * scale, 2.0 * scale), 0.0, 0.35 * scale))
    if variant == "toddler":
        blobs = blobs[:2]  # only capitate and hamate have ossified at about two years
    soft = SoftTissue(
        finger_radius_mm=8.5 * scale * (1 + rng.normal(0.0, 0.05)),
        palm_half_thickness_mm=14.0 * scale * (1 + rng.normal(0.0, 0.08)),
        wrist_half_thickness_mm=17.0 * scale * (1 + rng.normal(0.0, 0.06)),
        wrist_half_width_mm=29.0 * scale * (1 + rng.normal(0.0, 0.04)),
    )
    return HandAnatomy(anatomy_id, variant, tuple(bones), tuple(blobs), tuple(fingers), soft,
                       osteoporotic)


def _metacarpals(rng: np.random.Generator, scale: float, cortical_factor: float,
                 clip_osteoporotic: bool, child: bool) -> list[LongBone]:
    """MC2-MC5: mid-shaft centres 15-18 mm apart (soft tissue in between), axes converging
    towards the carpus."""
    angles = {"MC2": 97.0, "MC3": 90.0, "MC4": 83.5, "MC5": 77.0}
    base_y = {"MC2": 1.5, "MC3": 0.0, "MC4": -1.5, "MC5": -4.0}
    mid_x = {"MC3": 0.0}
    for name, direction in (("MC2", -1), ("MC4", 1), ("MC5", 1)):
        previous = "MC3" if name != "MC5" else "MC4"
        mid_x[name] = mid_x[previous] + direction * float(rng.uniform(14.8, 16.6)) * scale
    bones = []
    for name in METACARPALS:
        width, thickness, length = _METACARPAL_TYPICAL[name]
        width *= scale * (1 + rng.normal(0.0, 0.04))
        length *= scale * (1 + rng.normal(0.0, 0.03))
        thickness *= scale * (1 + rng.normal(0.0, 0.07)) * cortical_factor
        if clip_osteoporotic:
            thickness = float(np.clip(thickness, 1.0, 1.6))
        thickness = min(thickness, 0.5 * width - 0.8 * scale)
        angle = math.radians(angles[name] + rng.normal(0.0, 1.5))
        half = 0.5 * length * np.array([math.cos(angle), math.sin(angle)])
        mid = np.array([mid_x[name], base_y[name] * scale + half[1]])
        bones.append(LongBone(
            name=name, proximal_xy=tuple(mid - half), distal_xy=tuple(mid + half),
            outer_radius_mm=width / 2, inner_radius_mm=width / 2 - thickness,
            base_flare=float(rng.uniform(1.35, 1.55)), head_flare=float(rng.uniform(1.22, 1.38)),
            base_cap_mm=2.5 * scale, head_cap_mm=0.55 * width * 1.3,
            end_shell_mm=0.45 * scale,
            physis="distal" if child else None, physis_gap_mm=1.6 * scale if child else 0.0,
        ))
    return bones


def _finger_rays(rng: np.random.Generator, bones: list[LongBone], scale: float, gap: float,
                 child: bool) -> list[tuple[str, ...]]:
    """Three phalanges on each of MC2-MC5 (appended to ``bones``); returns the rays."""
    # Fingers fan out a little more than their metacarpals, enough that neighbours never
    # touch (bounded jitter).
    spread = {2: 3.0, 3: 0.0, 4: -3.0, 5: -7.0}
    fingers = []
    for ray in (2, 3, 4, 5):
        metacarpal = bones[ray - 2]
        chain = [metacarpal.name]
        start = np.asarray(metacarpal.distal_xy)
        axis = start - np.asarray(metacarpal.proximal_xy)
        angle = (math.degrees(math.atan2(axis[1], axis[0])) + spread[ray]
                 + float(np.clip(rng.normal(0.0, 1.5), -2.5, 2.5)))
        for level, (width, length) in zip(("P", "M", "D"), _PHALANGES[ray], strict=True):
            angle += float(np.clip(rng.normal(0.0, 1.0), -2.0, 2.0))
            width *= scale * (1 + rng.normal(0.0, 0.04))
            length *= scale * (1 + rng.normal(0.0, 0.04))
            name = f"{level}{ray}"
            bones.append(_phalanx(name, start + gap * _unit(angle), angle, width, length,
                                  distal=level == "D", scale=scale, child=child))
            start = np.asarray(bones[-1].distal_xy)
            chain.append(name)
        fingers.append(tuple(chain))
    return fingers


def _thumb(rng: np.random.Generator, bones: list[LongBone], scale: float, gap: float,
           cortical_factor: float, child: bool) -> tuple[str, ...]:
    """First metacarpal from the trapezium, abducted, and two phalanges (appended)."""
    thumb_angle = 124.0 + float(np.clip(rng.normal(0.0, 3.0), -6.0, 6.0))
    base = np.array([-22.0 * scale, -2.0 * scale])
    mc1_len = 44.0 * scale * (1 + rng.normal(0.0, 0.03))
    mc1_width = 8.6 * scale * (1 + rng.normal(0.0, 0.04))
    mc1_thickness = min(2.0 * scale * cortical_factor, 0.5 * mc1_width - 0.8 * scale)
    bones.append(LongBone(
        "MC1", tuple(base), tuple(base + mc1_len * _unit(thumb_angle)),
        mc1_width / 2, mc1_width / 2 - mc1_thickness,
        base_flare=1.45, head_flare=1.25, base_cap_mm=2.5 * scale, head_cap_mm=5.0 * scale,
        end_shell_mm=0.45 * scale, physis="proximal" if child else None,
        physis_gap_mm=1.6 * scale if child else 0.0))
    start = np.asarray(bones[-1].distal_xy)
    angle = thumb_angle - 8.0 + rng.normal(0.0, 4.0)
    for name, width, length in (("P1", 8.0, 31.0), ("D1", 6.4, 23.0)):
        width *= scale * (1 + rng.normal(0.0, 0.04))
        length *= scale * (1 + rng.normal(0.0, 0.04))
        bones.append(_phalanx(name, start + gap * _unit(angle), angle, width, length,
                              distal=name == "D1", scale=scale, child=child))
        start = np.asarray(bones[-1].distal_xy)
        angle += rng.normal(0.0, 3.0)
    return ("MC1", "P1", "D1")


def _forearm(rng: np.random.Generator, scale: float, cortical_factor: float,
             child: bool) -> list[LongBone]:
    """Distal radius and ulna: long shafts from below the image with flared distal ends."""
    bones = []
    for name, end_at, width, flare, depth, physis_gap in (
        ("radius", (-8.5, -38.5), 16.0, 1.75, 0.62, 2.2),
        ("ulna", (15.5, -42.0), 11.0, 1.2, 0.85, 2.0),
    ):
        end = np.array(end_at) * scale
        width *= scale * (1 + rng.normal(0.0, 0.04))
        angle = 92.0 + rng.normal(0.0, 1.5)
        bones.append(LongBone(
            name, pair(end - 230.0 * _unit(angle)), pair(end), width / 2,
            width / 2 - 2.0 * scale * cortical_factor,
            base_flare=1.0, head_flare=flare, base_cap_mm=1.0, head_cap_mm=3.0 * scale,
            shaft_start=0.05, shaft_end=0.78, end_shell_mm=0.5 * scale,
            physis="distal" if child else None, physis_gap_mm=physis_gap * scale if child else 0,
            depth_ratio=depth))
    return bones


def _phalanx(name: str, proximal: np.ndarray, angle_deg: float, width: float, length: float,
             *, distal: bool, scale: float, child: bool) -> LongBone:
    end = proximal + length * _unit(angle_deg)
    return LongBone(
        name, (float(proximal[0]), float(proximal[1])), (float(end[0]), float(end[1])),
        width / 2, width / 2 - min(1.4 * scale, 0.3 * width),
        base_flare=1.40, head_flare=0.95 if distal else 1.15,
        base_cap_mm=2.0 * scale, head_cap_mm=(2.0 if distal else 3.0) * scale,
        shaft_start=0.25, shaft_end=0.60 if distal else 0.75, end_shell_mm=0.4 * scale,
        physis="proximal" if child else None, physis_gap_mm=1.4 * scale if child else 0.0,
        depth_ratio=0.8,
    )


def _carpals(rng: np.random.Generator, scale: float, variant: str) -> list[Blob]:
    order = ("capitate", "hamate", "triquetrum", "lunate", "trapezium", "trapezoid",
             "scaphoid", "pisiform")
    size = 0.75 if variant == "paediatric" else 0.45 if variant == "toddler" else 1.0
    blobs = []
    for name in order:
        _, (cx, cy), axes, angle = next(c for c in _CARPALS if c[0] == name)
        blobs.append(Blob(
            name,
            ((cx + rng.normal(0, 0.6)) * scale, (cy + rng.normal(0, 0.6)) * scale),
            triple(a * scale * size * float(rng.uniform(0.93, 1.07)) for a in axes),
            angle + float(rng.normal(0, 5)), 0.6 * scale, float(rng.uniform(2.4, 3.0))))
    return blobs


def _thumb_sesamoid(bones: list[LongBone]) -> tuple[float, float]:
    mc1 = next(b for b in bones if b.name == "MC1")
    x0, y0 = mc1.proximal_xy
    x1, y1 = mc1.distal_xy
    length = mc1.length_mm
    # Beside the first metacarpal head, on its ulnar side.
    nx, ny = (y1 - y0) / length, -(x1 - x0) / length
    return (x1 + 3.5 * nx - 2.0 * (x1 - x0) / length, y1 + 3.5 * ny - 2.0 * (y1 - y0) / length)


def _unit(angle_deg: float) -> np.ndarray:
    angle = math.radians(angle_deg)
    return np.array([math.cos(angle), math.sin(angle)])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def with_cortical_thickness(anatomy: HandAnatomy, factor: float) -> HandAnatomy:
    """The same hand with every cortex scaled (e.g. a follow-up after bone loss)."""
    bones = tuple(
        replace(b, inner_radius_mm=b.outer_radius_mm - b.cortical_thickness_mm * factor)
        for b in anatomy.long_bones)
    return replace(anatomy, long_bones=bones)
