"""T- and Z-scores, DXR-derived categories, DXA triage bands and relative hip-fracture risk.

Band edges are exact: scores are first rounded to one decimal (as reported, ISCD
convention), then compared, so the printed score and its band always agree.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

# WHO categories (defined for DXA; applied here to the DXR T-score, hence "DXR-derived").
NORMAL_MIN_T = -1.0  # T >= -1.0: normal
OSTEOPOROSIS_MAX_T = -2.5  # T <= -2.5: osteoporosis range; between: low bone mass
CATEGORY_NORMAL = "normal"
CATEGORY_LOW = "low bone mass"
CATEGORY_OSTEOPOROSIS = "osteoporosis range"
CATEGORY_CAVEAT = ("category is DXR-derived: the WHO T-score thresholds (-1.0, -2.5) were "
                   "defined for DXA, not for DXR")

# DXR triage for DXA referral (J Clin Densitom 2010;13(4):418-425): bands chosen for 90 %
# sensitivity / 90 % specificity for femoral-neck DXA T <= -2.5 in women aged 50 and over.
TRIAGE_UNLIKELY_ABOVE_T = -1.2  # T > -1.2
TRIAGE_LIKELY_BELOW_T = -2.7  # T < -2.7; from -2.7 to -1.2 inclusive: refer
TRIAGE_MIN_AGE_YEARS = 50.0
TRIAGE_UNLIKELY = "osteoporosis unlikely"
TRIAGE_REFER = "refer to DXA"
TRIAGE_LIKELY = "osteoporosis likely"

ADULT_MIN_AGE_YEARS = 20.0
# From this age the metacarpal growth plates are closed in practice: the header's age
# then outranks an image reading of open physes.
SKELETAL_MATURITY_AGE_YEARS = 25.0


def standard_score(value: float, mean: float, sd: float) -> float:
    """(value - mean) / sd, unrounded."""
    return (value - mean) / sd


def round_score(score: float) -> float:
    """Round a T- or Z-score to one decimal, halves away from zero (-2.45 -> -2.5).

    Rounding to 9 decimals first removes binary noise, so a score that is -1.05 on paper
    but -1.0499999999 in floating point still rounds to -1.1.
    """
    text = repr(round(score, 9))
    rounded = float(Decimal(text).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))
    return rounded + 0.0  # turns -0.0 into 0.0


def category(t_score: float) -> str:
    """WHO-style category of a (rounded) T-score."""
    if t_score >= NORMAL_MIN_T:
        return CATEGORY_NORMAL
    if t_score <= OSTEOPOROSIS_MAX_T:
        return CATEGORY_OSTEOPOROSIS
    return CATEGORY_LOW


def triage(t_score: float) -> str:
    """DXA-referral band of a (rounded) T-score."""
    if t_score > TRIAGE_UNLIKELY_ABOVE_T:
        return TRIAGE_UNLIKELY
    if t_score < TRIAGE_LIKELY_BELOW_T:
        return TRIAGE_LIKELY
    return TRIAGE_REFER


def relative_risk(z_score: float, hazard_ratio_per_sd: float) -> float:
    """Hip-fracture risk relative to age-matched peers: HR ** (-Z)."""
    return hazard_ratio_per_sd ** (-z_score)
