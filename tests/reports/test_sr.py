"""The SR read back with highdicom's SR API carries exactly the Analysis/Interpretation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import pytest
from conftest import make_analysis, make_interpretation, make_rejected, make_source

from dxr_node.engine.result import Problem, ProblemCode
from dxr_node.reports import build_reports, write_objects

BONE_FIELDS = {  # SR concept meaning -> BoneMeasurement field
    "Cortical thickness": "cortical_thickness_mm",
    "Width": "width_mm",
    "Medullary width": "medullary_width_mm",
    "Length": "length_mm",
    "Metacarpal index": "mci",
}


def _read_sr(tmp_path: Path, source, analysis, interpretation, display) -> hd.sr.ComprehensiveSR:
    objects = build_reports(source, analysis, interpretation, display, kinds=("SR",))
    [path] = write_objects(objects, tmp_path)
    return hd.sr.srread(path)


def _groups(sr) -> dict[str, hd.sr.MeasurementsAndQualitativeEvaluations]:
    return {g.tracking_identifier.split()[0]: g
            for g in sr.content.get_image_measurement_groups()}


def _text_items(item) -> dict[str, str]:
    return {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue
            for i in item.ContentSequence if i.ValueType == "TEXT"}


def test_every_number_equals_the_analysis(tmp_path, display):
    source, analysis, interpretation = make_source(), make_analysis(), make_interpretation()
    groups = _groups(_read_sr(tmp_path, source, analysis, interpretation, display))
    assert set(groups) == {"MC2", "MC3", "MC4", "DXR"}

    for name, bone in analysis.bones.items():
        measurements = {m.name.meaning: m for m in groups[name].get_measurements()}
        assert set(measurements) == set(BONE_FIELDS)
        for meaning, field in BONE_FIELDS.items():
            assert measurements[meaning].value == pytest.approx(getattr(bone, field), rel=1e-12)
        assert measurements["Cortical thickness"].unit.value == "mm"
        assert measurements["Metacarpal index"].unit.value == "{ratio}"
        # Coordinates: four edge lines on T, two on W, the axis on the length.
        assert len(measurements["Cortical thickness"].referenced_coordinates) == 4
        assert len(measurements["Width"].referenced_coordinates) == 2
        axis = measurements["Length"].referenced_coordinates[0].value
        (r0, c0), (r1, c1) = bone.proximal_rc, bone.distal_rc
        # (column, row) with 0.5 offset to pixel centres; GraphicData is float32.
        assert axis.ravel().tolist() == pytest.approx([c0 + 0.5, r0 + 0.5, c1 + 0.5, r1 + 0.5],
                                                      abs=1e-3)
        for measurement in measurements.values():
            assert _text_items(measurement[0]) == {"Algorithm Name": "dxr-node",
                                                   "Algorithm Version": "0.1.0"}
        site = groups[name].finding_sites[0]
        assert site.value.value == "36455000"
        assert site.laterality.value == "7771000"  # left

    hand = {m.name.meaning: m.value for m in groups["DXR"].get_measurements()}
    expected = {
        "Cortical thickness": analysis.cortical_thickness_mm,
        "Width": analysis.width_mm,
        "Metacarpal index": analysis.mci,
        "Cortical volume per area": analysis.vpa_mm,
        "DXR bone mineral density": analysis.dxr_bmd_g_cm2,
        "Bone Health Index": analysis.bhi,
        "T-score": interpretation.t_score,
        "Z-score": interpretation.z_score,
        "Hip fracture relative risk": interpretation.relative_risk,
        "Prior DXR bone mineral density": interpretation.prior.dxr_bmd_g_cm2,
        "DXR-BMD absolute change since prior": interpretation.prior.change_g_cm2,
        "DXR-BMD change since prior": interpretation.prior.change_percent,
        "DXR-BMD annualised change since prior":
            interpretation.prior.change_percent_per_year,
        "DXR-BMD least significant change":
            interpretation.prior.least_significant_change_percent,
        "DXR-BMD precision coefficient of variation":
            interpretation.prior.precision_cv_percent,
    }
    assert hand == pytest.approx(expected, rel=1e-12)
    evaluations = {q.name.meaning: q.value.meaning
                   for q in groups["DXR"].get_qualitative_evaluations()}
    assert evaluations == {"DXR analysis status": "Analysis completed",
                           "DXR-BMD category": "Low bone mass",
                           "Significance of DXR-BMD change since prior":
                               "Change exceeds the least significant change"}


def test_z_score_uses_dcm_113071_and_procedure_comes_from_cid_100(tmp_path, display):
    sr = _read_sr(tmp_path, make_source(), make_analysis(), make_interpretation(), display)
    z = [m for m in _groups(sr)["DXR"].get_measurements() if m.name.meaning == "Z-score"]
    assert (z[0].name.value, z[0].name.scheme_designator) == ("113071", "DCM")
    procedure = [i for i in sr.ContentSequence
                 if i.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"]
    code = procedure[0].ConceptCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("43468-8", "LN")
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert "99DXR" in schemes
    assert sr.SeriesDescription and sr.CompletionFlag == "COMPLETE"


def test_right_hand_laterality(tmp_path, display):
    source = make_source(laterality="R")
    sr = _read_sr(tmp_path, source, make_analysis(laterality="R"), None, display)
    site = _groups(sr)["MC3"].finding_sites[0]
    assert site.laterality.value == "24028007"


def test_without_pixel_spacing_only_ratios(tmp_path, display):
    sr = _read_sr(tmp_path, make_source(spacing=False), make_analysis(spacing_mm=None),
                  None, display)
    units = {m.unit.value for g in _groups(sr).values() for m in g.get_measurements()}
    assert units == {"{ratio}"}


def test_engine_partial_result_documents_the_measured_bones_only(tmp_path, engine_partial):
    source, display, analysis, interpretation = engine_partial
    sr = _read_sr(tmp_path, source, analysis, interpretation, display)
    groups = _groups(sr)
    assert set(groups) == {"MC2", "MC3", "DXR"}
    for name in ("MC2", "MC3"):
        assert "partial result" in groups[name].tracking_identifier
        measured = {m.name.meaning: m.value for m in groups[name].get_measurements()}
        assert measured["Cortical thickness"] == pytest.approx(
            analysis.bones[name].cortical_thickness_mm, rel=1e-12)
    assert groups["DXR"].get_measurements() == []  # no whole-hand index, no scores
    evaluations = {q.name.meaning: q.value.meaning
                   for q in groups["DXR"].get_qualitative_evaluations()}
    assert evaluations == {"DXR analysis status": "Analysis not possible"}
    assert set(analysis.reasons) <= set(_qc_texts(sr))
    assert any("MC4" in text for text in _qc_texts(sr))


def test_change_since_prior_is_coded_with_lsc_cv_and_significance(tmp_path, display):
    interpretation = make_interpretation()
    prior = interpretation.prior
    groups = _groups(_read_sr(tmp_path, make_source(), make_analysis(), interpretation,
                              display))
    numbers = {m.name.value: (m.value, m.unit.value) for m in groups["DXR"].get_measurements()}
    assert numbers["PRIORBMD"] == (pytest.approx(prior.dxr_bmd_g_cm2), "g/cm2")
    assert numbers["CHGABS"] == (pytest.approx(prior.change_g_cm2), "g/cm2")
    assert numbers["CHG"] == (pytest.approx(prior.change_percent), "%")
    assert numbers["CHGYR"] == (pytest.approx(prior.change_percent_per_year), "%/a")
    assert numbers["LSC"] == (pytest.approx(prior.least_significant_change_percent), "%")
    assert numbers["CV"] == (pytest.approx(prior.precision_cv_percent), "%")
    evaluations = {q.name.value: q.value.value
                   for q in groups["DXR"].get_qualitative_evaluations()}
    assert evaluations["CHGSIG"] == "SIG"
    within = replace(interpretation, prior=replace(prior, significant=False,
                                                   change_percent_per_year=None))
    groups = _groups(_read_sr(tmp_path / "within", make_source(), make_analysis(), within,
                              display))
    assert "CHGYR" not in {m.name.value for m in groups["DXR"].get_measurements()}
    assert {q.name.value: q.value.value
            for q in groups["DXR"].get_qualitative_evaluations()}["CHGSIG"] == "NOTSIG"


def _qc_findings(sr) -> list[tuple[str, str, str, str]]:
    """(finding name, code value, scheme, text) of each coded QC finding."""
    [container] = [i for i in sr.ContentSequence
                   if i.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    out = []
    for item in container.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue in ("QCREJ", "QCNOTE"):
            [text] = item.ContentSequence
            assert text.RelationshipType == "HAS PROPERTIES"
            assert text.ConceptNameCodeSequence[0].CodeValue == "REASON"
            code = item.ConceptCodeSequence[0]
            out.append((item.ConceptNameCodeSequence[0].CodeValue, code.CodeValue,
                        code.CodingSchemeDesignator, text.TextValue))
    return out


def _qc_texts(sr) -> list[str]:
    return [text for *_, text in _qc_findings(sr)]


def test_each_finding_is_coded_in_the_declared_qc_scheme(tmp_path, display):
    analysis = replace(make_rejected(), problems=(
        Problem.of(ProblemCode.BONE_CUT, "MC4 shaft cut by the field edge", "MC4"),
        Problem.of(ProblemCode.PAEDIATRIC, "paediatric")))
    sr = _read_sr(tmp_path, make_source(), analysis, None, display)
    assert _qc_findings(sr) == [
        ("QCREJ", "bone_cut", "99DXRQC", "MC4 shaft cut by the field edge"),
        ("QCNOTE", "paediatric", "99DXRQC", "paediatric")]
    schemes = {item.CodingSchemeDesignator: item.CodingSchemeName
               for item in sr.CodingSchemeIdentificationSequence}
    assert schemes["99DXRQC"] == "dxr-node quality control findings (rejections and notes)"


def _all_value_types(items) -> set[str]:
    types = set()
    for item in items:
        types.add(item.ValueType)
        types |= _all_value_types(item.get("ContentSequence", []))
    return types


def test_rejected_states_status_and_reasons_without_numbers(tmp_path, display):
    rejected = make_rejected("hand not found: image is mostly empty")
    sr = _read_sr(tmp_path, make_source(), rejected, None, display)
    [measurements] = [i for i in sr.ContentSequence
                      if i.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements"]
    assert "NUM" not in _all_value_types([measurements])  # (the image library has sizes)
    assert "SCOORD" not in _all_value_types(sr.ContentSequence)
    evaluations = {q.name.meaning: q.value.meaning
                   for q in _groups(sr)["DXR"].get_qualitative_evaluations()}
    assert evaluations == {"DXR analysis status": "Analysis not possible"}
    assert _qc_texts(sr) == ["hand not found: image is mostly empty"]


def test_triage_and_interpretation_remarks_are_text(tmp_path, display):
    interpretation = replace(make_interpretation(),
                             reasons=("relative risk not computed: no hazard ratio",))
    sr = _read_sr(tmp_path, make_source(), make_analysis(), interpretation, display)
    [container] = [i for i in sr.ContentSequence
                   if i.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    texts = {(i.ConceptNameCodeSequence[0].CodeValue, i.TextValue)
             for i in container.ContentSequence if i.ValueType == "TEXT"}
    assert texts == {("TRIAGE", "refer for DXA (T < -1.2)"),
                     ("REMARK", "relative risk not computed: no hazard ratio")}


def test_non_finite_values_are_left_out(tmp_path, display):
    analysis = make_analysis()
    bones = dict(analysis.bones, MC3=replace(analysis.bones["MC3"], length_mm=float("nan")))
    analysis = replace(analysis, bones=bones, bhi=float("inf"))
    groups = _groups(_read_sr(tmp_path, make_source(), analysis, None, display))
    assert "Length" not in {m.name.meaning for m in groups["MC3"].get_measurements()}
    assert "Bone Health Index" not in {m.name.meaning for m in groups["DXR"].get_measurements()}


def test_returned_object_exposes_the_tree_through_highdicom(display):
    [sr] = build_reports(make_source(), make_analysis(), None, display, kinds=("SR",))
    groups = sr.content.get_image_measurement_groups()
    assert [g.tracking_identifier.split()[0] for g in groups] == ["MC2", "MC3", "MC4", "DXR"]
