"""Result types of the clinical wing (shared contract with reports, node and web)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReferenceInfo:
    name: str
    version: str
    young_adult_mean_g_cm2: float | None
    young_adult_sd_g_cm2: float | None
    age_matched_mean_g_cm2: float | None
    age_matched_sd_g_cm2: float | None
    # (age years, mean g/cm2, SD g/cm2) of the table actually used, for the patient's sex:
    # what the reference chart draws (empty when the sex is unknown or not in the table).
    age_matched_curve: tuple[tuple[float, float, float], ...] = ()


@dataclass(frozen=True)
class PriorResult:
    """One earlier DXR result of the same patient, as kept by the node's store."""

    sop_instance_uid: str
    study_date: str  # YYYYMMDD
    laterality: str | None
    dxr_bmd_g_cm2: float


@dataclass(frozen=True)
class PriorComparison:
    date: str  # YYYYMMDD of the prior exam compared against
    dxr_bmd_g_cm2: float
    change_g_cm2: float
    change_percent: float
    change_percent_per_year: float | None
    least_significant_change_percent: float
    significant: bool  # |change_percent| > least_significant_change_percent
    precision_cv_percent: float | None = None  # the CV the LSC was computed from (2.77 x CV)


@dataclass(frozen=True)
class Interpretation:
    """Clinical meaning of one Analysis; every null score has a reason in `reasons`."""

    age_years: float | None
    sex: str | None  # "F" | "M"
    t_score: float | None
    z_score: float | None
    category: str | None  # "normal" | "low bone mass" | "osteoporosis range" (DXR-derived)
    triage: str | None  # DXR triage band for DXA referral
    relative_risk: float | None  # hip-fracture risk relative to age-matched peers
    reference: ReferenceInfo | None
    prior: PriorComparison | None
    priors: tuple[PriorResult, ...] = ()
    billing_modifier: str | None = None  # "52" reduced, "53" discontinued, None full
    reasons: tuple[str, ...] = field(default_factory=tuple)
    caveats: tuple[str, ...] = ()  # limits of the interpretation a reader must see
    exam_laterality: str | None = None  # "L" | "R" by clinical.exam_laterality; None unknown

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        out["caveats"] = list(self.caveats)
        out["priors"] = [asdict(p) for p in self.priors]
        return out
