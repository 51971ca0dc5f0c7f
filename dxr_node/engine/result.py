"""Result types of the engine: frozen dataclasses with units in the field names.

One JSON form (``Analysis.to_dict``) is used by the CLI, the node's store and the
console. Coordinates are image pixel coordinates ``[row, col]`` where integer values
are pixel centres, as in numpy indexing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

BONE_NAMES: tuple[str, ...] = ("MC2", "MC3", "MC4")

STATUS_OK = "ok"
STATUS_REJECTED = "rejected"
STATUS_ERROR = "error"

Point = tuple[float, float]  # (row, col)
# A reader's exclusion of a bone (review), as its problem's text says it.
EXCLUDED_NOTE = "excluded by the reader: not measurable"


class Severity(StrEnum):
    """A rejection keeps the hand (or the bone it names) from being measured; a note
    accompanies a result and changes nothing about it."""

    REJECTION = "rejection"
    NOTE = "note"


class ProblemCode(StrEnum):
    """Why a radiograph (or one bone of it) was rejected, or what a result comes with.

    The values are stable identifiers (the JSON, the console, ``/metrics`` and the SR's
    coded QC items use them; 16 characters at most, a DICOM code value). The table in
    docs/method.md ("Quality control") lists every code and is tested against this enum.
    """

    # rejections of the whole image
    UNREADABLE = "unreadable"  # the file could not be read or analysed (status "error")
    NOT_A_HAND = "not_a_hand"
    FINGER_RAYS = "finger_rays"  # rays found, but not five arranged like a hand's
    IDENTITY_UNCERTAIN = "bone_identity"  # "bone identity uncertain: ..."
    TODDLER = "toddler"
    COARSE_SPACING = "coarse_spacing"
    INCONSISTENT = "inconsistent"  # the bones disagree: one was mislocated
    READER_REJECTED = "reader_rejected"
    LATERALITY = "laterality"  # image and header disagree: bones named for the other hand
    # rejections of one bone (the hand is then incomplete)
    BONE_NOT_FOUND = "bone_not_found"
    BONE_CUT = "bone_cut"  # shaft cut by the field edge
    SHAFT_UNMEASURED = "shaft_unmeasured"  # the shaft fit's own problem
    IMPLAUSIBLE_MCI = "implausible_mci"
    IMPLAUSIBLE_SIZE = "implausible_size"  # outer width or cortical thickness in mm
    READER_EXCLUDED = "reader_excluded"
    # notes
    PAEDIATRIC = "paediatric"
    CENTRAL_BAND = "central_band"  # measured over the central 10 % of the bone
    NO_SPACING = "no_spacing"  # no usable pixel spacing (or one given was ignored)
    SPACING_MISMATCH = "spacing_mismatch"  # spacing implausible for this hand
    RATIO_ONLY = "ratio_only"  # millimetre values not reported

    @property
    def severity(self) -> Severity:
        return Severity.NOTE if self in _NOTE_CODES else Severity.REJECTION

    @property
    def meaning(self) -> str:
        """A short description (the SR's code meaning, at most 64 characters)."""
        return _MEANINGS[self]


_NOTE_CODES = frozenset({ProblemCode.PAEDIATRIC, ProblemCode.CENTRAL_BAND,
                         ProblemCode.NO_SPACING, ProblemCode.SPACING_MISMATCH,
                         ProblemCode.RATIO_ONLY})
_MEANINGS = {
    ProblemCode.UNREADABLE: "Image unreadable or analysis failed",
    ProblemCode.NOT_A_HAND: "Not a hand radiograph",
    ProblemCode.FINGER_RAYS: "Finger rays not arranged like a hand",
    ProblemCode.IDENTITY_UNCERTAIN: "Bone identity uncertain",
    ProblemCode.TODDLER: "Bones too small to measure (toddler)",
    ProblemCode.COARSE_SPACING: "Resolution too coarse",
    ProblemCode.INCONSISTENT: "Measurements inconsistent between bones",
    ProblemCode.READER_REJECTED: "Rejected by the reader",
    ProblemCode.BONE_NOT_FOUND: "Metacarpal not found",
    ProblemCode.BONE_CUT: "Metacarpal shaft cut by the field edge",
    ProblemCode.SHAFT_UNMEASURED: "Metacarpal shaft not measurable",
    ProblemCode.IMPLAUSIBLE_MCI: "Implausible metacarpal index",
    ProblemCode.IMPLAUSIBLE_SIZE: "Implausible outer width or cortical thickness",
    ProblemCode.READER_EXCLUDED: "Metacarpal excluded by the reader",
    ProblemCode.PAEDIATRIC: "Open growth plates (paediatric)",
    ProblemCode.LATERALITY: "Image and header laterality disagree",
    ProblemCode.CENTRAL_BAND: "Measured over the central 10 % of the bone",
    ProblemCode.NO_SPACING: "No usable pixel spacing",
    ProblemCode.SPACING_MISMATCH: "Pixel spacing implausible for this hand",
    ProblemCode.RATIO_ONLY: "Millimetre values not reported",
}


@dataclass(frozen=True)
class Problem:
    """One QC finding: a typed ``code`` for counting and coding, the ``bone`` it concerns
    (None: the whole image) and the human ``text`` shown to readers."""

    code: ProblemCode
    bone: str | None
    severity: Severity
    text: str

    @classmethod
    def of(cls, code: ProblemCode, text: str, bone: str | None = None) -> Problem:
        return cls(code, bone, code.severity, text)

    @property
    def rejection(self) -> bool:
        return self.severity is Severity.REJECTION

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "bone": self.bone, "severity": self.severity.value,
                "text": self.text}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Problem:
        code = ProblemCode(data["code"])
        return cls(code, data.get("bone"), Severity(data.get("severity") or code.severity),
                   str(data["text"]))


def known_mm(value_mm: float | None) -> float:
    """A millimetre field of a bone measured with a known pixel spacing: always set then
    (None only without a spacing), so a None here is a bug, not an image problem."""
    if value_mm is None:
        raise ValueError("millimetre value missing although the pixel spacing is known")
    return value_mm


# Results stored before problems were typed have only their texts: each wording below is
# the one the engine produced for that code (first match wins). Used for that JSON only.
_LEGACY_PREFIXES: tuple[tuple[str, ProblemCode], ...] = (
    ("no hand found", ProblemCode.NOT_A_HAND),
    ("not a hand radiograph or bone identity uncertain", ProblemCode.FINGER_RAYS),
    ("not a hand radiograph: the rays", ProblemCode.FINGER_RAYS),
    ("not a hand radiograph", ProblemCode.NOT_A_HAND),
    ("bone identity uncertain", ProblemCode.IDENTITY_UNCERTAIN),
    ("bones too small to measure", ProblemCode.TODDLER),
    ("resolution too coarse", ProblemCode.COARSE_SPACING),
    ("measurements internally inconsistent", ProblemCode.INCONSISTENT),
    ("rejected by the reader", ProblemCode.READER_REJECTED),
    ("paediatric", ProblemCode.PAEDIATRIC),
    ("laterality disagreement", ProblemCode.LATERALITY),
    ("millimetre values not reported", ProblemCode.RATIO_ONLY),
    ("pixel spacing ", ProblemCode.SPACING_MISMATCH),
)
_LEGACY_BONE_PREFIXES: tuple[tuple[str, ProblemCode], ...] = (
    (" shaft cut by the field edge", ProblemCode.BONE_CUT),
    (" not found", ProblemCode.BONE_NOT_FOUND),
    (f": {EXCLUDED_NOTE}", ProblemCode.READER_EXCLUDED),
    (": implausible metacarpal index", ProblemCode.IMPLAUSIBLE_MCI),
    (": implausible", ProblemCode.IMPLAUSIBLE_SIZE),
    (": measured over the central", ProblemCode.CENTRAL_BAND),
    (":", ProblemCode.SHAFT_UNMEASURED),
)


def legacy_problem(text: str, error: bool = False) -> Problem:
    """The typed problem of a reason text stored without its code."""
    if error:
        return Problem.of(ProblemCode.UNREADABLE, text)
    for name in BONE_NAMES:
        for suffix, code in _LEGACY_BONE_PREFIXES:
            if text.startswith(name + suffix):
                return Problem.of(code, text, name)
    if text.startswith("not a hand radiograph: ") and " finger rays found" in text:
        return Problem.of(ProblemCode.FINGER_RAYS, text)
    for prefix, code in _LEGACY_PREFIXES:
        if text.startswith(prefix):
            return Problem.of(code, text)
    return Problem.of(ProblemCode.NO_SPACING, text)  # the loader's wordings of a spacing problem


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
    problems: tuple[Problem, ...]  # rejections and notes, in the order found
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

    @property
    def reasons(self) -> tuple[str, ...]:
        """The problems' texts (the JSON's ``reasons``, as before problems were typed)."""
        return tuple(problem.text for problem in self.problems)

    @property
    def rejections(self) -> tuple[Problem, ...]:
        return tuple(problem for problem in self.problems if problem.rejection)

    def has(self, code: ProblemCode, bone: str | None = None) -> bool:
        """Whether a problem with this code (about this bone, if given) was found."""
        return any(p.code is code and (bone is None or p.bone == bone) for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in _clean(asdict(self)).items():
            if key == "problems":  # "reasons" where it always was, then the typed form
                out["reasons"] = list(self.reasons)
                value = [problem.to_dict() for problem in self.problems]
            out[key] = value
        out["bones"] = {name: bone.to_dict() for name, bone in self.bones.items()}
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
