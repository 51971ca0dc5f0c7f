"""Patient/study identity is copied, and UIDs are deterministic (re-analysis replaces)."""

from __future__ import annotations

from dataclasses import replace

import pydicom
import pytest
from conftest import make_analysis, make_interpretation, make_source

from dxr_node.engine.result import Problem, ProblemCode
from dxr_node.reports import KINDS, ReplacedObject, build_reports, write_objects


def _uids(objects) -> list[tuple[str, str]]:
    return [(str(o.SOPInstanceUID), str(o.SeriesInstanceUID)) for o in objects]


def test_two_builds_give_identical_uids(display):
    source, analysis, interpretation = make_source(), make_analysis(), make_interpretation()
    first = _uids(build_reports(source, analysis, interpretation, display))
    second = _uids(build_reports(source, analysis, interpretation, display))
    assert first == second
    assert len({uid for pair in first for uid in pair}) == 2 * len(KINDS)  # all distinct
    for sop_uid, series_uid in first:
        for uid in (sop_uid, series_uid):
            assert len(uid) <= 64 and pydicom.uid.UID(uid).is_valid


def test_new_algorithm_version_or_source_gives_new_uids(display):
    source, analysis = make_source(), make_analysis()
    base = _uids(build_reports(source, analysis, None, display, kinds=("SR", "GSPS")))
    newer = replace(analysis, algorithm={"name": "dxr-node", "version": "0.2.0"})
    other = make_source(laterality="R")
    assert _uids(build_reports(source, newer, None, display, kinds=("SR", "GSPS"))) != base
    assert _uids(build_reports(other, analysis, None, display, kinds=("SR", "GSPS"))) != base


def _sr(objects) -> pydicom.Dataset:
    [sr] = [o for o in objects if o.Modality == "SR"]
    return sr


def _predecessors(sr) -> list[str]:
    return [sop.ReferencedSOPInstanceUID for study in sr.get("PredecessorDocumentsSequence", [])
            for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence]


def _changed_contents():
    """Each a change of what the objects state, as a re-analysis could bring."""
    analysis, interpretation = make_analysis(), make_interpretation()
    bone = analysis.bones["MC3"]
    moved = replace(bone, cortical_thickness_mm=bone.cortical_thickness_mm + 0.01)
    other_table = replace(interpretation.reference, version="2")
    return {
        "a measurement": (replace(analysis, bones={**analysis.bones, "MC3": moved}),
                          interpretation),
        "a QC finding": (replace(analysis, problems=(
            Problem.of(ProblemCode.LATERALITY, "laterality disagreement: ..."),)),
            interpretation),
        "a reader's placement": (replace(analysis, bones={
            **analysis.bones, "MC3": replace(bone, reader_positioned=True)}), interpretation),
        "the reference table": (analysis, replace(interpretation, reference=other_table)),
        "a score from other priors": (analysis, replace(interpretation, prior=None)),
        "the algorithm version": (replace(analysis, algorithm={"name": "dxr-node",
                                                               "version": "0.2.0"}),
                                  interpretation),
    }


@pytest.mark.parametrize("change", list(_changed_contents()))
def test_changed_content_gets_new_instance_uids_and_the_sr_names_its_predecessor(display,
                                                                                  change):
    source = make_source()
    before = build_reports(source, make_analysis(), make_interpretation(), display)
    analysis, interpretation = _changed_contents()[change]
    replaces = [ReplacedObject(o.Modality if o.Modality == "SR" else "other",
                               str(o.SOPClassUID), str(o.SOPInstanceUID),
                               str(o.SeriesInstanceUID)) for o in before]
    after = build_reports(source, analysis, interpretation, display, replaces=replaces)
    assert not {o.SOPInstanceUID for o in before} & {o.SOPInstanceUID for o in after}
    if change != "the algorithm version":  # the same series: the versions of one result
        assert [o.SeriesInstanceUID for o in after] == [o.SeriesInstanceUID for o in before]
        assert _predecessors(_sr(after)) == [_sr(before).SOPInstanceUID]
        assert (_sr(after).PredecessorDocumentsSequence[0].StudyInstanceUID
                == source.StudyInstanceUID)
    else:  # a new algorithm starts a series of its own and replaces nothing in it
        assert _predecessors(_sr(after)) == []


def test_an_identical_rerun_keeps_its_uids_and_is_no_predecessor_of_itself(display):
    source = make_source()
    first = build_reports(source, make_analysis(), make_interpretation(), display)
    replaces = [ReplacedObject("SR", str(o.SOPClassUID), str(o.SOPInstanceUID),
                               str(o.SeriesInstanceUID)) for o in first if o.Modality == "SR"]
    # The run's own duration and file path are not content.
    again = replace(make_analysis(), elapsed_ms=1.0, source="elsewhere/test.dcm")
    second = build_reports(source, again, make_interpretation(), display, replaces=replaces)
    assert _uids(second) == _uids(first)
    assert "PredecessorDocumentsSequence" not in _sr(second)


def test_rewriting_replaces_the_files(tmp_path, display):
    source, analysis = make_source(), make_analysis()
    first = write_objects(build_reports(source, analysis, None, display), tmp_path)
    second = write_objects(build_reports(source, analysis, None, display), tmp_path)
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in first)
    assert all(p.name == f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in first)


@pytest.mark.parametrize(("name", "charset"), [("Müller^Jürgen", "ISO_IR 100"),
                                                ("山田^太郎", "ISO_IR 192"),
                                                ("Ηλίας^Σοφία", "ISO_IR 192")])
def test_patient_and_study_copied_with_utf8(tmp_path, display, name, charset):
    source = make_source(name=name, charset=charset)
    paths = write_objects(build_reports(source, make_analysis(), make_interpretation(),
                                       display), tmp_path)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert str(ds.PatientName) == name
        for keyword in ("PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                        "StudyInstanceUID", "AccessionNumber", "StudyDate", "StudyTime",
                        "StudyID", "StudyDescription", "ReferringPhysicianName"):
            assert ds.get(keyword) == source.get(keyword), (ds.Modality, keyword)
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SeriesDescription


def test_sc_and_gsps_copy_laterality_and_reference_the_source(tmp_path, display):
    source = make_source(laterality="R")
    objects = build_reports(source, make_analysis(laterality="R"), None, display,
                            kinds=("SC", "GSPS"))
    sc, gsps = objects
    assert sc.Laterality == gsps.Laterality == "R"
    assert list(sc.PatientOrientation) == list(source.PatientOrientation)
    assert sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    referenced = gsps.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert (referenced.ReferencedImageSequence[0].ReferencedSOPInstanceUID
            == source.SOPInstanceUID)


@pytest.mark.parametrize("with_interpretation", [False, True])
def test_header_image_laterality_conflict_leaves_every_object_unsided(display,
                                                                      with_interpretation):
    from dxr_node.clinical import interpret

    source = make_source(laterality="L")
    analysis = replace(make_analysis(), laterality="R")  # the image shows a right hand
    interpretation = interpret(analysis, source) if with_interpretation else None
    assert interpretation is None or interpretation.exam_laterality is None
    sr, sc, gsps, _ = build_reports(source, analysis, interpretation, display)
    assert sc.Laterality == gsps.Laterality == ""
    sites = [g.finding_sites[0] for g in sr.content.get_image_measurement_groups()]
    assert sites and all(site.laterality is None for site in sites)


def test_interpretation_laterality_is_what_every_object_names(display):
    # Header and image agree on a left hand here; the Interpretation is the one rule.
    source, analysis = make_source(laterality="L"), make_analysis(laterality="L")
    sr, sc, gsps, _ = build_reports(source, analysis, make_interpretation(laterality="L"),
                                    display)
    assert sc.Laterality == gsps.Laterality == "L"
    sites = [g.finding_sites[0] for g in sr.content.get_image_measurement_groups()]
    assert all(site.laterality.value == "7771000" for site in sites)


def test_monochrome1_gsps_inverts_the_presentation_lut(display):
    for photometric, shape in (("MONOCHROME1", "INVERSE"), ("MONOCHROME2", "IDENTITY")):
        source = make_source(photometric=photometric)
        [gsps] = build_reports(source, make_analysis(), None, display, kinds=("GSPS",))
        assert gsps.PresentationLUTShape == shape
        layers = {layer.GraphicLayer for layer in gsps.GraphicLayerSequence}
        assert {"DXR_ROI", "DXR_OUTER_EDGES", "DXR_INNER_EDGES"} <= layers


def test_bad_requests_get_clear_errors(display):
    with pytest.raises(ValueError, match="unknown report kind"):
        build_reports(make_source(), make_analysis(), None, display, kinds=("XLS",))
    source = make_source()
    del source.SOPInstanceUID
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        build_reports(source, make_analysis(), None, display)


def test_latin1_source_file_is_reencoded_as_utf8(tmp_path, display):
    source = make_source(name="Müller^Jürgen", charset="ISO_IR 100")
    source.PixelData = bytes(2 * source.Rows * source.Columns)
    source.save_as(tmp_path / "source.dcm", enforce_file_format=True)
    header = pydicom.dcmread(tmp_path / "source.dcm", stop_before_pixels=True)
    for path in write_objects(build_reports(header, make_analysis(), None, display),
                              tmp_path / "out"):
        name = pydicom.dcmread(path, stop_before_pixels=True).PatientName
        assert name.original_string == "Müller^Jürgen".encode()


def test_gsps_graphics_sit_on_the_measured_edges(display):
    analysis = make_analysis()
    [gsps] = build_reports(make_source(), analysis, None, display, kinds=("GSPS",))
    outer = [a for a in gsps.GraphicAnnotationSequence if a.GraphicLayer == "DXR_OUTER_EDGES"]
    drawn = [list(obj.GraphicData) for obj in outer[0].GraphicObjectSequence]
    expected = [[c + 0.5 for point in segment for c in (point[1], point[0])]
                for bone in analysis.bones.values()
                for segment in (bone.outer_edge_a_rc, bone.outer_edge_b_rc)]
    assert [[round(v, 3) for v in d] for d in drawn] == [
        [round(v, 3) for v in e] for e in expected]
    labels = [t.UnformattedTextValue for a in gsps.GraphicAnnotationSequence
              for t in a.get("TextObjectSequence", [])]
    assert {"MC2", "MC3", "MC4"} <= set(labels)
    assert any(label.startswith("DXR: DXR-BMD 0.469 g/cm2") for label in labels)
