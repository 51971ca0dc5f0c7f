"""interpret(): the clinical meaning of one engine Analysis."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from dxr_node.clinical import scores
from dxr_node.clinical.followup import PRECISION_CV_PERCENT, compare_with_priors
from dxr_node.clinical.patient import find_age, find_exam_date, find_sex
from dxr_node.clinical.reference import ReferenceTable, load_reference
from dxr_node.clinical.result import Interpretation, PriorResult, ReferenceInfo
from dxr_node.engine.result import BONE_NAMES, STATUS_ERROR, Analysis

if TYPE_CHECKING:
    import pydicom

BILLING_DISCONTINUED = "53"  # no result at all
BILLING_REDUCED = "52"  # fewer than three metacarpals measured, or ratio measures only


def billing_modifier(analysis: Analysis) -> str | None:
    """CPT-style modifier of the service actually given.

    '53' (discontinued) when the analysis failed or no metacarpal was measured; '52'
    (reduced) when only one or two metacarpals passed QC (the engine then rejects the hand
    but still lists them) or when the result has ratio measures only (no usable pixel
    spacing, so no DXR-BMD); None for the full service.
    """
    measured = sum(1 for name in BONE_NAMES if name in analysis.bones)
    if analysis.status == STATUS_ERROR or measured == 0:
        return BILLING_DISCONTINUED
    if not analysis.ok or measured < len(BONE_NAMES) or _usable_bmd(analysis) is None:
        return BILLING_REDUCED
    return None


def interpret(
    analysis: Analysis,
    header: pydicom.Dataset | None,
    *,
    sex: str | None = None,
    age_years: float | None = None,
    priors: Sequence[PriorResult] = (),
    reference: ReferenceTable | None = None,
    precision_cv_percent: float = PRECISION_CV_PERCENT,
) -> Interpretation:
    """Scores, category, triage, risk and follow-up for one Analysis.

    ``sex`` and ``age_years`` override the header (CLI options). Every score left null
    gets a reason in ``Interpretation.reasons``; nothing is defaulted silently.
    """
    table = reference if reference is not None else _default_reference()
    reasons: list[str] = []
    caveats: list[str] = []

    age = find_age(header, age_years)
    patient_sex = find_sex(header, sex)
    for finding in (age, patient_sex):
        if finding.reason:
            reasons.append(finding.reason)
    age_value: float | None = age.value
    sex_value: str | None = patient_sex.value

    sex_ref = table.sexes.get(sex_value) if sex_value else None
    if sex_value and sex_ref is None:
        reasons.append(f"reference table has no data for sex {sex_value!r}")
    age_matched = None
    if sex_ref is not None and age_value is not None:
        age_matched = sex_ref.at_age(age_value)
    reference_info = ReferenceInfo(
        name=table.name,
        version=table.version,
        young_adult_mean_g_cm2=sex_ref.young_adult_mean_g_cm2 if sex_ref else None,
        young_adult_sd_g_cm2=sex_ref.young_adult_sd_g_cm2 if sex_ref else None,
        age_matched_mean_g_cm2=round(age_matched[0], 4) if age_matched else None,
        age_matched_sd_g_cm2=round(age_matched[1], 4) if age_matched else None,
        age_matched_curve=tuple((p.age_years, p.mean_g_cm2, p.sd_g_cm2)
                                for p in sex_ref.age_matched) if sex_ref else (),
    )

    bmd = _usable_bmd(analysis)
    adult = _adult_scores(analysis, bmd, sex_value, age_value, table, age_matched,
                          reasons, caveats)

    side, side_problem = exam_laterality(analysis)
    if side == "R":
        caveats.append("right hand: reference data come from left or non-dominant hands, and "
                       "right hands measure higher")

    prior = None
    eligible: tuple[PriorResult, ...] = ()
    if priors and bmd is None:
        reasons.append("priors not compared: this exam has no DXR-BMD")
    elif priors and bmd is not None:
        uid = str(header.get("SOPInstanceUID") or "") if header is not None else ""
        follow = compare_with_priors(bmd, find_exam_date(header).value, uid or None,
                                     side, priors, precision_cv_percent)
        prior, eligible = follow.comparison, follow.eligible
        if side_problem:
            reasons.append(side_problem)
        reasons.extend(follow.reasons)

    return Interpretation(
        age_years=None if age_value is None else _floor_2_decimals(age_value),
        sex=sex_value,
        t_score=adult.t_score,
        z_score=adult.z_score,
        category=adult.category,
        triage=adult.triage,
        relative_risk=adult.relative_risk,
        reference=reference_info,
        prior=prior,
        priors=eligible,
        billing_modifier=billing_modifier(analysis),
        reasons=tuple(reasons),
        caveats=tuple(caveats),
        exam_laterality=side,
    )


@dataclass(frozen=True)
class _AdultScores:
    t_score: float | None = None
    z_score: float | None = None
    category: str | None = None
    triage: str | None = None
    relative_risk: float | None = None


def _adult_scores(analysis: Analysis, bmd: float | None, sex: str | None, age: float | None,
                  table: ReferenceTable, age_matched: tuple[float, float] | None,
                  reasons: list[str], caveats: list[str]) -> _AdultScores:
    """T, Z, category, triage and risk, each null with a reason when it cannot be given."""
    sex_ref = table.sexes.get(sex) if sex else None
    if bmd is None:
        detail = "; ".join(analysis.reasons) or "no DXR-BMD"
        reasons.append(f"no scores: analysis {analysis.status} ({detail})")
        return _AdultScores()
    # The patient's age, when known, outranks the engine's growth-plate flag once the
    # skeleton is surely mature: the flag is an image reading and is wrong on some adult
    # films (docs/method.md), and a wrong one would withhold a 70-year-old's T-score.
    mature_by_age = age is not None and age >= scores.SKELETAL_MATURITY_AGE_YEARS
    if (analysis.paediatric and not mature_by_age) or (
            age is not None and age < scores.ADULT_MIN_AGE_YEARS):
        why = ("the engine flagged the image as paediatric" if analysis.paediatric
               else f"age {age:.1f} is under {scores.ADULT_MIN_AGE_YEARS:g}")
        reasons.append(f"no adult scores (T, Z, category, triage, risk): {why}")
        return _AdultScores()
    if analysis.paediatric:
        caveats.append(f"the engine flagged open growth plates, but the patient is "
                       f"{age:.0f} years old: read as adult")
    if sex is None or sex_ref is None:  # (no sex, no reference)
        reasons.append("T-score, Z-score, category, triage and relative risk not computed: "
                       "they need the patient's sex ('F' or 'M')")
        return _AdultScores()

    t_score = scores.round_score(scores.standard_score(
        bmd, sex_ref.young_adult_mean_g_cm2, sex_ref.young_adult_sd_g_cm2))
    caveats.append(scores.CATEGORY_CAVEAT)
    raw_z = None
    if age is None:
        reasons.append("Z-score, triage and relative risk not computed: they need the "
                       "patient's age")
        caveats.append("age unknown: the T-score assumes an adult because the engine "
                       "did not flag the image as paediatric")
    elif age_matched is None:
        low, high = sex_ref.age_range
        reasons.append(f"Z-score and relative risk not computed: age {age:.1f} is "
                       f"outside the reference table's range {low:g}-{high:g} years")
    else:
        raw_z = scores.standard_score(bmd, *age_matched)
    if age is not None and age < scores.TRIAGE_MIN_AGE_YEARS:
        caveats.append("under 50 the Z-score, not the T-score category, is the usual "
                       "basis of interpretation (ISCD)")
    return _AdultScores(
        t_score=t_score,
        z_score=None if raw_z is None else scores.round_score(raw_z),
        category=scores.category(t_score),
        triage=_triage(t_score, sex, age, reasons),
        relative_risk=_relative_risk(raw_z, sex, age, table, reasons),
    )


@lru_cache(maxsize=1)
def _default_reference() -> ReferenceTable:
    """The packaged table, read once per process (a node interprets many images)."""
    return load_reference()


def _floor_2_decimals(age_years: float) -> float:
    """Truncate so a printed age never reaches a birthday (or a threshold) not yet reached."""
    return math.floor(round(age_years * 100, 6)) / 100


def _usable_bmd(analysis: Analysis) -> float | None:
    value = analysis.dxr_bmd_g_cm2
    if not analysis.ok or value is None or not math.isfinite(value) or value <= 0:
        return None
    return value


def exam_laterality(analysis: Analysis) -> tuple[str | None, str | None]:
    """The hand measured ('L'/'R') and, when it is unknown, why.

    The one rule for every consumer (follow-up, SR, SC, GSPS, PDF, overlay, the node's
    store): the header's tag and the hand detected in the image must agree when both are
    present. A conflict means unknown, because we cannot tell which one is wrong; with only
    one of them, that one is used.
    """
    tag, detected = (_normalised_side(analysis.laterality_tag),
                     _normalised_side(analysis.laterality))
    if tag and detected and tag != detected:
        return None, (f"laterality conflict: header says {tag}, image shows {detected}")
    side = tag or detected
    return side, None if side else "laterality unknown (no header tag, not detected)"


def _normalised_side(value: str | None) -> str | None:
    text = (value or "").strip().upper()
    return text if text in ("L", "R") else None


def _triage(t_score: float, sex: str, age: float | None, reasons: list[str]) -> str | None:
    if sex != "F":
        reasons.append("triage not given: the DXR triage bands were derived in women only")
        return None
    if age is None:
        return None  # the missing age is already a reason
    if age < scores.TRIAGE_MIN_AGE_YEARS:
        reasons.append("triage not given: the DXR triage bands were derived in women aged "
                       "50 and over")
        return None
    return scores.triage(t_score)


def _relative_risk(raw_z: float | None, sex: str, age: float | None, table: ReferenceTable,
                   reasons: list[str]) -> float | None:
    if raw_z is None:
        return None  # the missing Z-score is already a reason
    hazard_ratio = table.hip_fracture_hr_per_sd.get(sex)
    if hazard_ratio is None:
        reasons.append(f"relative risk not computed: the reference table has no hip-fracture "
                       f"hazard ratio for sex {sex!r}")
        return None
    min_age = table.hip_fracture_min_age_years
    if min_age is not None and age is not None and age < min_age:
        reasons.append(f"relative risk not computed: the hazard ratio per SD was estimated "
                       f"at ages {min_age:g} and over")
        return None
    return round(scores.relative_risk(raw_z, hazard_ratio), 2)
