"""Result types of the engine: frozen dataclasses with units in the field names.

One JSON form (``Analysis.to_dict``) is used by the CLI, the node's store and the
console. Coordinates are image pixel coordinates ``[row, col]`` where integer values
are pixel centres, as in numpy indexing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

BONE_NAMES: tuple[str, ...] = ("MC2", "MC3", "MC4")

STATUS_OK = "ok"
STATUS_REJECTED = "rejected"
STATUS_ERROR = "error"

Point = tuple[float, float]  # (row, col)


def known_mm(value_mm: float | None) -> float:
    """A millimetre field of a bone measured with a known pixel spacing: always set then
    (None only without a spacing), so a None here is a bug, not an image problem."""
    if value_mm is None:
        raise ValueError("millimetre value missing although the pixel spacing is known")
    return value_mm


@dataclass(frozen=True)
class BoneMeasurement:
    """Mid-shaft measurement of one metacarpal.

    Pixel values are always present; millimetre values are ``None`` when the image has
    no usable pixel spacing (ratio measures such as ``mci`` stay valid).
    """

    name: str
    cortical_thickness_px: float
    width_px: float
    length_px: float
    cortical_thickness_mm: float | None
    width_mm: float | None
    medullary_width_mm: float | None
    length_mm: float | None
    mci: float
    vpa_mm: float | None  # pi*T*(1-T/W), cortical area per unit projected width
    center_rc: Point
    # Bone axis direction, proximal -> distal, in degrees counter-clockwise from the
    # image +column axis with rows pointing down (fingers up = 90).
    axis_angle_deg: float
    n_profiles: int
    n_rejected_profiles: int
    cortical_thickness_sd_mm: float | None  # spread over accepted profiles
    width_sd_mm: float | None
    # Region of interest (band of profiles) as a closed polygon of 4 corners.
    roi_rc: tuple[Point, Point, Point, Point]
    # Measured edge lines over the band, each a (start, end) segment parallel to the
    # axis: outer and inner edge on each side (side "a" = radial/thumb side).
    outer_edge_a_rc: tuple[Point, Point]
    inner_edge_a_rc: tuple[Point, Point]
    inner_edge_b_rc: tuple[Point, Point]
    outer_edge_b_rc: tuple[Point, Point]
    # Bone end points along the axis (proximal base, distal head) used for length.
    proximal_rc: Point
    distal_rc: Point
    blur_sigma_px: float  # system blur estimated by the profile fit
    # True when a reader placed the bone's ends (review step) instead of the locator.
    reader_positioned: bool = False

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


@dataclass(frozen=True)
class Analysis:
    """Everything the engine concludes about one radiograph."""

    source: str
    status: str  # "ok" | "rejected" | "error"
    reasons: tuple[str, ...]
    laterality: str | None  # "L" | "R" detected from the image (thumb side)
    laterality_tag: str | None  # from the DICOM header, if any
    pixel_spacing_mm: float | None
    pixel_spacing_source: str | None
    image_rows: int
    image_cols: int
    bones: dict[str, BoneMeasurement] = field(default_factory=dict)
    cortical_thickness_mm: float | None = None
    width_mm: float | None = None
    mci: float | None = None
    vpa_mm: float | None = None
    porosity: float = 0.0
    porosity_measured: bool = False
    dxr_bmd_g_cm2: float | None = None
    bhi: float | None = None
    paediatric: bool = False
    hand_rotation_deg: float | None = None  # fingers-up = 0, clockwise positive
    algorithm: dict[str, str] = field(default_factory=dict)
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def to_dict(self) -> dict[str, Any]:
        out = _clean(asdict(self))
        out["bones"] = {name: bone.to_dict() for name, bone in self.bones.items()}
        out["reasons"] = list(self.reasons)
        return out


def _clean(value: Any) -> Any:
    """Make a value JSON-safe: tuples to lists, NaN/inf to None, floats rounded."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return round(value, 6)
    return value
