"""Score rounding and band rules, and their consistency over many inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dxr_node.clinical import interpret, scores
from dxr_node.engine.result import Analysis


@pytest.mark.parametrize(("raw", "reported"), [
    (-2.45, -2.5), (-1.05, -1.1), (-1.0499999999999998, -1.1), (-1.04, -1.0),
    (-0.04, 0.0), (0.05, 0.1), (1.949, 1.9),
])
def test_round_score_halves_away_from_zero(raw, reported):
    assert scores.round_score(raw) == reported
    assert str(scores.round_score(-0.04)) == "0.0"  # never "-0.0" in the JSON


def test_band_functions_at_their_edges():
    assert [scores.category(t) for t in (-1.0, -1.1, -2.4, -2.5)] == [
        "normal", "low bone mass", "low bone mass", "osteoporosis range"]
    assert [scores.triage(t) for t in (-1.1, -1.2, -2.7, -2.8)] == [
        "osteoporosis unlikely", "refer to DXA", "refer to DXA", "osteoporosis likely"]


def _analysis(bmd: float) -> Analysis:
    return Analysis(source="h.dcm", status="ok", problems=(), laterality="L",
                    laterality_tag=None, pixel_spacing_mm=0.1, pixel_spacing_source="tag",
                    image_rows=10, image_cols=10, dxr_bmd_g_cm2=bmd)


@given(bmd=st.floats(0.2, 0.9), age=st.floats(50, 100), sex=st.sampled_from("FM"))
def test_bands_agree_with_reported_scores(bmd, age, sex):
    result = interpret(_analysis(bmd), None, sex=sex, age_years=age)
    t, z = result.t_score, result.z_score
    assert result.category == ("normal" if t >= -1.0 else
                               "osteoporosis range" if t <= -2.5 else "low bone mass")
    if sex == "F":
        assert result.triage == ("osteoporosis unlikely" if t > -1.2 else
                                 "osteoporosis likely" if t < -2.7 else "refer to DXA")
    # Below the age-matched mean the risk is above that of peers, and vice versa.
    assert (result.relative_risk > 1) == (z < 0) or abs(z) < 0.05
    assert result.billing_modifier == "53"  # no bones in this hand-made analysis


@given(low=st.floats(0.2, 0.8), step=st.floats(0.001, 0.1), age=st.floats(20, 100))
def test_scores_never_fall_when_bmd_rises(low, step, age):
    lower = interpret(_analysis(low), None, sex="F", age_years=age)
    higher = interpret(_analysis(low + step), None, sex="F", age_years=age)
    assert higher.t_score >= lower.t_score and higher.z_score >= lower.z_score
