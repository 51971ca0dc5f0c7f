"""interpret(): scores the reference table implies, band edges, null scores with reasons."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal

import pytest

from dxr_node.clinical import billing_modifier, exam_laterality, interpret, load_reference
from dxr_node.clinical.reference import DEFAULT_REFERENCE_PATH
from dxr_node.engine.result import Problem, ProblemCode

TABLE = json.loads(DEFAULT_REFERENCE_PATH.read_text())


def table_values(sex: str, age: float) -> tuple[float, float, float, float]:
    """Young-adult and age-matched mean/SD read straight from the JSON file."""
    entry = TABLE["sexes"][sex]
    points = entry["age_matched"]
    for a, b in zip(points, points[1:], strict=False):
        if a["age_years"] <= age <= b["age_years"]:
            w = (age - a["age_years"]) / (b["age_years"] - a["age_years"])
            mean = a["mean_g_cm2"] + w * (b["mean_g_cm2"] - a["mean_g_cm2"])
            sd = a["sd_g_cm2"] + w * (b["sd_g_cm2"] - a["sd_g_cm2"])
            break
    else:
        raise AssertionError(f"age {age} not in table")
    young = entry["young_adult"]
    return young["mean_g_cm2"], young["sd_g_cm2"], mean, sd


def one_decimal(x: float) -> float:
    return float(Decimal(repr(round(x, 9))).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


@pytest.mark.parametrize(("sex", "age", "bmd"), [
    ("F", 67.0, 0.43), ("F", 52.5, 0.56), ("M", 73.0, 0.48), ("M", 35.0, 0.70),
    ("F", 20.0, 0.61), ("M", 100.0, 0.40),
])
def test_scores_are_those_the_table_implies(analysis_factory, header_factory, sex, age, bmd):
    ya_mean, ya_sd, am_mean, am_sd = table_values(sex, age)
    result = interpret(analysis_factory(bmd), header_factory(sex=sex), age_years=age)

    assert result.sex == sex and result.age_years == age
    assert result.t_score == one_decimal((bmd - ya_mean) / ya_sd)
    assert result.z_score == one_decimal((bmd - am_mean) / am_sd)
    assert result.reference.young_adult_mean_g_cm2 == ya_mean
    assert result.reference.young_adult_sd_g_cm2 == ya_sd
    assert result.reference.age_matched_mean_g_cm2 == pytest.approx(am_mean, abs=5e-5)
    assert result.reference.age_matched_sd_g_cm2 == pytest.approx(am_sd, abs=5e-5)
    hazard_ratio = TABLE["hip_fracture_hr_per_sd"][sex]
    expected_rr = hazard_ratio ** (-(bmd - am_mean) / am_sd)
    if age >= TABLE["hip_fracture_hr_per_sd"]["min_age_years"]:
        assert result.relative_risk == pytest.approx(expected_rr, abs=0.006)
    else:
        assert result.relative_risk is None
        assert any("relative risk" in r for r in result.reasons)


def test_default_table_matches_published_anchors():
    table = load_reference()
    women, men = table.sexes["F"], table.sexes["M"]
    assert (women.young_adult_mean_g_cm2, women.young_adult_sd_g_cm2) == (0.597, 0.050)
    # Men 12.8 % higher than women at every age (Bottcher et al. 2006).
    assert men.young_adult_mean_g_cm2 == pytest.approx(1.128 * 0.597, abs=1e-4)
    for age in range(20, 101, 5):
        assert men.at_age(age)[0] == pytest.approx(1.128 * women.at_age(age)[0], abs=2e-4)
    # Women lose 0.7-0.9 % a year after 45.
    yearly = (women.at_age(70)[0] / women.at_age(45)[0]) ** (1 / 25)
    assert 0.991 <= yearly <= 0.993
    assert table.hip_fracture_hr_per_sd == {"F": 2.52, "M": 2.08}


def bmd_for_t(sex: str, t: float) -> float:
    young = TABLE["sexes"][sex]["young_adult"]
    return young["mean_g_cm2"] + t * young["sd_g_cm2"]


@pytest.mark.parametrize(("t", "category"), [
    (-0.9, "normal"), (-1.0, "normal"), (-1.04, "normal"), (-1.05, "low bone mass"),
    (-1.1, "low bone mass"), (-2.4, "low bone mass"), (-2.44, "low bone mass"),
    (-2.45, "osteoporosis range"), (-2.5, "osteoporosis range"), (-2.6, "osteoporosis range"),
])
def test_category_exactly_at_band_edges(analysis_factory, header_factory, t, category):
    result = interpret(analysis_factory(bmd_for_t("F", t)), header_factory(age="065Y"))
    assert result.t_score == one_decimal(t)
    assert result.category == category
    assert any("DXR-derived" in c and "DXA" in c for c in result.caveats)


@pytest.mark.parametrize(("t", "triage"), [
    (-1.1, "osteoporosis unlikely"), (-1.2, "refer to DXA"), (-1.3, "refer to DXA"),
    (-2.6, "refer to DXA"), (-2.7, "refer to DXA"), (-2.8, "osteoporosis likely"),
])
def test_triage_exactly_at_band_edges(analysis_factory, header_factory, t, triage):
    result = interpret(analysis_factory(bmd_for_t("F", t)), header_factory(age="060Y"))
    assert result.t_score == t
    assert result.triage == triage


def test_men_and_women_under_50_get_no_triage_with_a_reason(analysis_factory, header_factory):
    man = interpret(analysis_factory(0.5), header_factory(sex="M", age="060Y"))
    assert man.t_score is not None and man.triage is None
    assert any("triage" in r and "women" in r for r in man.reasons)
    young_woman = interpret(analysis_factory(0.5), header_factory(age="045Y"))
    assert young_woman.triage is None
    assert any("triage" in r and "50" in r for r in young_woman.reasons)


def test_t_score_uses_the_young_adult_reference_of_the_patients_sex(analysis_factory,
                                                                   header_factory):
    woman = interpret(analysis_factory(0.55), header_factory(sex="F", age="060Y"))
    man = interpret(analysis_factory(0.55), header_factory(sex="M", age="060Y"))
    assert man.t_score < woman.t_score
    assert man.reference.young_adult_mean_g_cm2 > woman.reference.young_adult_mean_g_cm2


@pytest.mark.parametrize(("age", "override"), [("000Y", None), ("150Y", None), (None, 150.0)])
def test_implausible_age_gives_null_z_with_reason(analysis_factory, header_factory, age,
                                                  override):
    result = interpret(analysis_factory(0.5), header_factory(age=age), age_years=override)
    assert result.age_years is None and result.z_score is None
    assert result.relative_risk is None and result.triage is None
    assert any("implausible" in r for r in result.reasons)
    assert any("Z-score" in r and "age" in r for r in result.reasons)
    # The T-score needs only the sex; the caveat says adulthood was assumed.
    assert result.t_score is not None
    assert any("age unknown" in c for c in result.caveats)


def test_missing_age_gives_null_z_with_reason(analysis_factory, header_factory):
    result = interpret(analysis_factory(0.5), header_factory(age=None))
    assert result.z_score is None and result.age_years is None
    assert any(r.startswith("age unknown") for r in result.reasons)


@pytest.mark.parametrize("sex", ["O", "", None, "X"])
def test_unknown_sex_gives_null_scores_with_reason(analysis_factory, header_factory, sex):
    result = interpret(analysis_factory(0.5), header_factory(sex=sex, age="065Y"))
    assert result.sex is None
    assert (result.t_score, result.z_score, result.category, result.relative_risk) == (
        None, None, None, None)
    assert any("sex" in r for r in result.reasons)
    assert result.reference.young_adult_mean_g_cm2 is None
    assert result.age_years == 65.0


def test_sex_and_age_overrides_win_over_header(analysis_factory, header_factory):
    result = interpret(analysis_factory(0.5), header_factory(sex="O", age="030Y"),
                       sex="M", age_years=71.5)
    assert (result.sex, result.age_years) == ("M", 71.5)
    assert result.z_score is not None


def test_age_from_birth_date_and_study_date(analysis_factory, header_factory):
    header = header_factory(birth="19550301", study_date="20250301")
    result = interpret(analysis_factory(0.5), header)
    assert result.age_years == pytest.approx(70.0, abs=0.01)
    del header.StudyDate
    header.AcquisitionDate = "20150301"
    assert interpret(analysis_factory(0.5), header).age_years == pytest.approx(60.0, abs=0.01)


@pytest.mark.parametrize(("paediatric", "age"), [(True, "022Y"), (False, "015Y"),
                                                  (False, "006M"), (True, None)])
def test_children_get_no_adult_scores(analysis_factory, header_factory, paediatric, age):
    result = interpret(analysis_factory(0.45, paediatric=paediatric), header_factory(age=age))
    assert (result.t_score, result.z_score, result.category, result.triage,
            result.relative_risk) == (None, None, None, None, None)
    assert any("no adult scores" in r for r in result.reasons)


def test_a_mature_age_outranks_the_engines_growth_plate_flag(analysis_factory,
                                                             header_factory):
    """Open physes read on a 67-year-old's film are an image-reading error: the header's
    age decides, the T-score is given, and the report says why."""
    result = interpret(analysis_factory(0.45, paediatric=True), header_factory(age="067Y"))
    assert result.t_score is not None and result.category is not None
    assert not any("no adult scores" in r for r in result.reasons)
    assert any("read as adult" in c for c in result.caveats)


def test_age_beyond_table_gives_null_z_with_reason(analysis_factory, header_factory):
    result = interpret(analysis_factory(0.4), header_factory(age="105Y"))
    assert result.t_score is not None and result.z_score is None
    assert any("outside the reference table" in r for r in result.reasons)


@pytest.mark.parametrize("status", ["rejected", "error"])
def test_no_result_gives_no_scores_and_modifier_53(analysis_factory, header_factory, status):
    analysis = analysis_factory(None, status=status, bones=0, problems=(
        Problem.of(ProblemCode.NOT_A_HAND, "no hand found"),))
    result = interpret(analysis, header_factory(age="065Y"))
    assert result.billing_modifier == "53"
    assert result.t_score is None and result.category is None
    assert any(status in r and "no hand found" in r for r in result.reasons)


def test_full_service_has_no_billing_modifier(analysis_factory, header_factory):
    assert interpret(analysis_factory(0.5), header_factory(age="065Y")).billing_modifier is None


def test_ratio_measures_only_is_a_reduced_service(analysis_factory, header_factory):
    # What the engine returns without a usable pixel spacing: "ok", no mm, no DXR-BMD.
    ratio_only = replace(analysis_factory(None), pixel_spacing_mm=None,
                         pixel_spacing_source=None)
    result = interpret(ratio_only, header_factory(age="065Y"))
    assert ratio_only.ok and result.billing_modifier == "52"
    assert result.t_score is None


def test_engine_partial_result_is_a_reduced_service(engine_partial):
    radiograph, analysis = engine_partial
    # The engine's contract: rejected, but the two bones that passed QC are listed.
    assert analysis.status == "rejected" and set(analysis.bones) == {"MC2", "MC3"}
    assert analysis.mci is None and analysis.dxr_bmd_g_cm2 is None
    result = interpret(analysis, radiograph.dataset)
    assert billing_modifier(analysis) == result.billing_modifier == "52"
    assert result.t_score is None and result.z_score is None and result.category is None
    assert any("rejected" in r and "MC4" in r for r in result.reasons)
    assert result.exam_laterality == "L"


def test_relative_risk_follows_hazard_ratio_per_sd(analysis_factory, header_factory):
    ya_mean, ya_sd, am_mean, am_sd = table_values("F", 70.0)
    at_mean = interpret(analysis_factory(am_mean), header_factory(age="070Y"))
    one_sd_low = interpret(analysis_factory(am_mean - am_sd), header_factory(age="070Y"))
    assert at_mean.z_score == 0.0 and at_mean.relative_risk == 1.0
    assert one_sd_low.z_score == -1.0 and one_sd_low.relative_risk == 2.52


def test_right_hand_gets_a_caveat(analysis_factory, header_factory):
    result = interpret(analysis_factory(0.5, laterality="R"), header_factory(age="065Y"))
    assert any("right hand" in c for c in result.caveats)


def test_to_dict_has_the_json_fields_the_cli_prints(analysis_factory, header_factory):
    out = interpret(analysis_factory(0.5), header_factory(age="065Y")).to_dict()
    json.dumps(out)  # JSON-safe
    for key in ("t_score", "z_score", "category", "relative_risk", "age_years", "sex",
                "reference", "prior", "billing_modifier", "reasons", "exam_laterality"):
        assert key in out
    assert set(out["reference"]) == {
        "name", "version", "young_adult_mean_g_cm2", "young_adult_sd_g_cm2",
        "age_matched_mean_g_cm2", "age_matched_sd_g_cm2", "age_matched_curve"}
    assert out["reference"]["version"] == TABLE["version"]
    assert out["prior"] is None


def test_dummy_birth_date_falls_back_to_patient_age(analysis_factory, header_factory):
    header = header_factory(age="065Y", birth="18000101")
    assert interpret(analysis_factory(0.5), header).age_years == 65.0


def test_malformed_patient_age_is_a_reason(analysis_factory, header_factory):
    with pytest.warns(UserWarning, match="Invalid value for VR AS"):  # pydicom agrees
        header = header_factory(age="65")
    result = interpret(analysis_factory(0.5), header)
    assert result.age_years is None
    assert any("PatientAge '65' is not nnnD/W/M/Y" in r for r in result.reasons)


def test_header_read_back_from_a_dicom_file(tmp_path, analysis_factory, header_factory):
    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    header = header_factory(sex="M", birth="19500615", study_date="20250614")
    header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    header.file_meta = FileMetaDataset()
    header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header.file_meta.MediaStorageSOPClassUID = header.SOPClassUID
    header.file_meta.MediaStorageSOPInstanceUID = header.SOPInstanceUID
    path = tmp_path / "hand.dcm"
    header.save_as(path, enforce_file_format=True)

    result = interpret(analysis_factory(0.55), dcmread(path))
    assert result.sex == "M"
    assert result.age_years == 74.99  # one day short of 75: never printed as 75
    assert result.z_score is not None and result.triage is None


@pytest.mark.parametrize(("tag", "detected", "side"), [
    ("L", "L", "L"), ("R", None, "R"), (None, "L", "L"), ("L", "R", None), (None, None, None)])
def test_exam_laterality_is_one_rule_carried_in_the_interpretation(
        analysis_factory, header_factory, tag, detected, side):
    analysis = analysis_factory(0.5, laterality=detected, laterality_tag=tag)
    assert exam_laterality(analysis)[0] == side
    assert interpret(analysis, header_factory(age="065Y")).exam_laterality == side


def test_reference_info_carries_the_curve_of_the_table_used(analysis_factory, header_factory,
                                                            tmp_path):
    data = json.loads(DEFAULT_REFERENCE_PATH.read_text())
    data["name"] = "Site table"
    for point in data["sexes"]["F"]["age_matched"]:
        point["mean_g_cm2"] = round(point["mean_g_cm2"] - 0.05, 4)
    path = tmp_path / "site.json"
    path.write_text(json.dumps(data))
    site = load_reference(path)
    ref = interpret(analysis_factory(0.5), header_factory(age="065Y"), reference=site).reference
    assert ref.name == "Site table"
    assert ref.age_matched_curve == tuple((p.age_years, p.mean_g_cm2, p.sd_g_cm2)
                                          for p in site.sexes["F"].age_matched)
    no_sex = interpret(analysis_factory(0.5), header_factory(sex=None, age="065Y"))
    assert no_sex.reference.age_matched_curve == ()
