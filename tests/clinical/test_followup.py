"""Follow-up against priors: change, change per year, significance, exclusions."""

from __future__ import annotations

import pytest

from dxr_node.clinical import PRECISION_CV_PERCENT, PriorResult, interpret

UID_NOW = "1.2.826.0.1.3680043.8.498.100"


def prior(date: str, bmd: float, laterality: str | None = "L", uid: str = "1.2.3.4") -> PriorResult:
    return PriorResult(sop_instance_uid=uid, study_date=date, laterality=laterality,
                       dxr_bmd_g_cm2=bmd)


def run(analysis_factory, header_factory, bmd, priors, laterality="L", study_date="20250301"):
    return interpret(analysis_factory(bmd, laterality=laterality),
                     header_factory(age="068Y", study_date=study_date, uid=UID_NOW),
                     priors=priors)


def test_a_year_apart_reports_change_rate_and_significance(analysis_factory, header_factory):
    # 2024-03-01 -> 2025-03-01 is 365 days; the rate is per year of 365.25 days.
    result = run(analysis_factory, header_factory, 0.480, [prior("20240301", 0.500)])
    comparison = result.prior
    lsc = 2.77 * PRECISION_CV_PERCENT
    assert comparison.date == "20240301" and comparison.dxr_bmd_g_cm2 == 0.500
    assert comparison.change_g_cm2 == pytest.approx(-0.020)
    assert comparison.change_percent == pytest.approx(-4.0)
    assert comparison.change_percent_per_year == pytest.approx(-4.0 * 365.25 / 365, abs=0.005)
    assert comparison.least_significant_change_percent == pytest.approx(lsc, abs=0.005)
    assert comparison.precision_cv_percent == PRECISION_CV_PERCENT
    assert comparison.significant is True
    out = result.to_dict()["prior"]
    for key in ("date", "dxr_bmd_g_cm2", "change_percent", "change_percent_per_year",
                "significant"):
        assert key in out


def test_change_below_lsc_is_not_significant(analysis_factory, header_factory):
    result = run(analysis_factory, header_factory, 0.495, [prior("20240301", 0.500)])
    assert result.prior.change_percent == pytest.approx(-1.0)
    assert abs(result.prior.change_percent) < result.prior.least_significant_change_percent
    assert result.prior.significant is False


def test_two_years_apart_halves_the_yearly_rate(analysis_factory, header_factory):
    result = run(analysis_factory, header_factory, 0.520, [prior("20230301", 0.500)])
    assert result.prior.change_percent == pytest.approx(4.0)
    assert result.prior.change_percent_per_year == pytest.approx(
        4.0 / (731 / 365.25), abs=0.005)
    assert result.prior.significant is True


def test_most_recent_same_hand_prior_is_used(analysis_factory, header_factory):
    priors = [prior("20220301", 0.540, uid="1.1"), prior("20240301", 0.500, uid="1.2"),
              prior("20240901", 0.470, "R", uid="1.3"), prior("20230301", 0.520, uid="1.4")]
    result = run(analysis_factory, header_factory, 0.490, priors)
    assert result.prior.date == "20240301"
    assert [p.study_date for p in result.priors] == ["20220301", "20230301", "20240301"]


def test_same_exam_sent_twice_is_not_its_own_prior(analysis_factory, header_factory):
    same_uid = prior("20250301", 0.480, uid=UID_NOW)
    result = run(analysis_factory, header_factory, 0.480, [same_uid])
    assert result.prior is None and result.priors == ()

    # Resent under a new UID: same study date and same value.
    resent = prior("20250301", 0.480, uid="9.9.9")
    result = run(analysis_factory, header_factory, 0.480, [resent, prior("20240301", 0.500)])
    assert result.prior.date == "20240301"


def test_other_hand_is_not_compared(analysis_factory, header_factory):
    result = run(analysis_factory, header_factory, 0.480, [prior("20240301", 0.530, "R")])
    assert result.prior is None
    assert any("other or an unknown hand" in r for r in result.reasons)
    right = run(analysis_factory, header_factory, 0.480, [prior("20240301", 0.530, "R")],
                laterality="R")
    assert right.prior.change_percent == pytest.approx(100 * (0.480 - 0.530) / 0.530, abs=0.01)


def test_unknown_laterality_is_not_compared(analysis_factory, header_factory):
    result = run(analysis_factory, header_factory, 0.480, [prior("20240301", 0.500, None)])
    assert result.prior is None
    result = run(analysis_factory, header_factory, 0.480, [prior("20240301", 0.500)],
                 laterality=None)
    assert result.prior is None
    assert any("laterality" in r for r in result.reasons)


def test_later_results_are_not_priors(analysis_factory, header_factory):
    result = run(analysis_factory, header_factory, 0.480, [prior("20260301", 0.450)])
    assert result.prior is None
    assert any("after this exam" in r for r in result.reasons)


def test_same_day_repeat_has_change_but_no_rate(analysis_factory, header_factory):
    result = run(analysis_factory, header_factory, 0.483, [prior("20250301", 0.480)])
    assert result.prior.change_percent == pytest.approx(0.63, abs=0.01)
    assert result.prior.change_percent_per_year is None
    assert any("same day" in r for r in result.reasons)


def test_invalid_prior_is_ignored_with_reason(analysis_factory, header_factory):
    result = run(analysis_factory, header_factory, 0.480,
                 [prior("2024-03-01", 0.500), prior("20240301", 0.0)])
    assert result.prior is None
    assert any("invalid" in r for r in result.reasons)


def test_no_result_means_no_comparison(analysis_factory, header_factory):
    result = interpret(analysis_factory(None, status="rejected", bones=0),
                       header_factory(age="068Y"), priors=[prior("20240301", 0.5)])
    assert result.prior is None
    assert any("priors not compared" in r for r in result.reasons)


def test_header_laterality_counts_and_conflicts_block_comparison(analysis_factory,
                                                                 header_factory):
    header = header_factory(age="068Y", uid=UID_NOW)
    priors = [prior("20240301", 0.500, "R")]
    tag_only = interpret(analysis_factory(0.48, laterality=None, laterality_tag="R"), header,
                         priors=priors)
    assert tag_only.prior is not None
    conflict = interpret(analysis_factory(0.48, laterality="L", laterality_tag="R"), header,
                         priors=priors)
    assert conflict.prior is None
    assert any("laterality conflict" in r for r in conflict.reasons)
