"""Follow-up: change of DXR-BMD against the most recent earlier exam of the same hand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from dxr_node.clinical.patient import DAYS_PER_YEAR, parse_dicom_date
from dxr_node.clinical.result import PriorComparison, PriorResult

# Short-term precision of DXR-BMD as a coefficient of variation (%), for the least
# significant change. dxr-node's own measured figure (scripts/bench_engine: RMS CV over
# phantoms re-imaged 5 times) is about 0.1 %, but phantoms lack the repositioning and
# anatomical effects of real hands, so it would understate the in-vivo CV and call noise
# a change. The published in-vivo figure, 0.61-0.68 % (Jorgensen et al. 2000, Clin
# Physiol 20:330), bounds it from below until an in-vivo precision study of dxr-node.
MEASURED_PHANTOM_CV_PERCENT = 0.10
PUBLISHED_IN_VIVO_CV_PERCENT = 0.65
PRECISION_CV_PERCENT: float = max(MEASURED_PHANTOM_CV_PERCENT, PUBLISHED_IN_VIVO_CV_PERCENT)

# Least significant change at 95 % confidence for two measurements: 1.96 * sqrt(2) = 2.77.
LSC_FACTOR = 2.77

# Two results of the same date closer than this (the store keeps 6 decimals) are one exam.
_SAME_VALUE_TOLERANCE_G_CM2 = 5e-7


@dataclass(frozen=True)
class FollowUp:
    comparison: PriorComparison | None
    eligible: tuple[PriorResult, ...]  # same hand, earlier, not this exam; oldest first
    reasons: tuple[str, ...]


def least_significant_change_percent(precision_cv_percent: float) -> float:
    return LSC_FACTOR * precision_cv_percent


def compare_with_priors(
    dxr_bmd_g_cm2: float,
    exam_date: date | None,
    sop_instance_uid: str | None,
    laterality: str | None,
    priors: Sequence[PriorResult],
    precision_cv_percent: float = PRECISION_CV_PERCENT,
) -> FollowUp:
    """Compare the current result with the most recent eligible prior of the same hand."""
    if not priors:
        return FollowUp(None, (), ())
    if laterality not in ("L", "R"):
        return FollowUp(None, (), ("priors not compared: laterality of this exam unknown, "
                                   "so the same hand cannot be ensured",))

    reasons = []
    eligible: list[tuple[date, PriorResult]] = []
    other_hand = later = invalid = 0
    for prior in priors:
        prior_date = parse_dicom_date(prior.study_date)
        if prior_date is None or not prior.dxr_bmd_g_cm2 > 0:
            invalid += 1
        elif sop_instance_uid and prior.sop_instance_uid == sop_instance_uid:
            continue  # this very exam, already stored
        elif prior_date == exam_date and (abs(prior.dxr_bmd_g_cm2 - dxr_bmd_g_cm2)
                                          < _SAME_VALUE_TOLERANCE_G_CM2):
            continue  # the same exam sent again under another UID
        elif (prior.laterality or "").upper() != laterality:
            other_hand += 1
        elif exam_date is not None and prior_date > exam_date:
            later += 1
        else:
            eligible.append((prior_date, prior))
    if invalid:
        reasons.append(f"{invalid} prior(s) ignored: invalid study date or DXR-BMD")
    if other_hand:
        reasons.append(f"{other_hand} prior(s) of the other or an unknown hand not compared")
    if later:
        reasons.append(f"{later} result(s) dated after this exam not used as priors")
    if not eligible:
        return FollowUp(None, (), tuple(reasons))

    eligible.sort(key=lambda item: item[0])  # stable: equal dates keep their given order
    prior_date, prior = eligible[-1]
    change = dxr_bmd_g_cm2 - prior.dxr_bmd_g_cm2
    change_percent = 100.0 * change / prior.dxr_bmd_g_cm2
    per_year = None
    if exam_date is None:
        reasons.append("change per year not computed: exam date unknown")
    elif exam_date == prior_date:
        reasons.append("change per year not computed: prior is from the same day")
    else:
        per_year = change_percent / ((exam_date - prior_date).days / DAYS_PER_YEAR)
    lsc = least_significant_change_percent(precision_cv_percent)
    comparison = PriorComparison(
        date=prior.study_date,
        dxr_bmd_g_cm2=prior.dxr_bmd_g_cm2,
        change_g_cm2=round(change, 6),
        change_percent=round(change_percent, 2),
        change_percent_per_year=None if per_year is None else round(per_year, 2),
        least_significant_change_percent=round(lsc, 2),
        significant=abs(change_percent) > lsc,
        precision_cv_percent=precision_cv_percent,
    )
    return FollowUp(comparison, tuple(p for _, p in eligible), tuple(reasons))
