"""Reader-verified final objects: dciodvfy finds no error in any of the four, dsrdump shows
the verification (VERIFIED, the verifying observer, FINAL, the predecessor), every object
has a new SOP Instance UID, and a reader-positioned bone is marked in SR, GSPS and PDF."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from dataclasses import replace

import pydicom
import pytest
from conftest import make_analysis, make_interpretation, make_source

from dxr_node.engine.result import Problem, ProblemCode
from dxr_node.reports import SignOff, build_reports, write_objects
from dxr_node.reports.review import ReplacedObject

AT = datetime.datetime(2026, 3, 21, 9, 30, tzinfo=datetime.UTC)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@pytest.fixture(params=["approved", "rejected"])
def final(request, tmp_path, display):
    source = make_source()
    analysis = make_analysis()
    analysis = replace(analysis, bones={**analysis.bones, "MC3": replace(
        analysis.bones["MC3"], reader_positioned=True)})
    interpretation = make_interpretation()
    preliminary = {ds.Modality: ds for ds in build_reports(source, analysis, interpretation,
                                                           display)}
    replaces = tuple(ReplacedObject(kind, str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                    str(ds.SeriesInstanceUID))
                     for kind, ds in zip(("SR", "SC", "GSPS", "PDF"),
                                         (preliminary[m] for m in ("SR", "OT", "PR", "DOC")),
                                         strict=True))
    signoff = SignOff("Reader^Ann", "Test Hospital", AT, "rev1", replaces,
                      rejection=None if request.param == "approved"
                      else "hand positioning unsuitable for DXR")
    if request.param == "rejected":
        analysis = replace(analysis, status="rejected", bones={}, dxr_bmd_g_cm2=None,
                           mci=None, bhi=None, vpa_mm=None, cortical_thickness_mm=None,
                           width_mm=None, problems=(Problem.of(
                               ProblemCode.READER_REJECTED, "rejected by the reader"),))
    objects = build_reports(source, analysis, interpretation, display, signoff=signoff)
    paths = write_objects(objects, tmp_path)
    written = {pydicom.dcmread(p, stop_before_pixels=True).Modality: p for p in paths}
    return request.param, written, preliminary


def test_dciodvfy_reports_no_errors_on_final_objects(final):
    dciodvfy = _tool("dciodvfy")
    _, written, _ = final
    for path in written.values():
        result = _run(dciodvfy, str(path))
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


def test_dsrdump_shows_the_verification_and_the_predecessor(final):
    outcome, written, preliminary = final
    result = _run(_tool("dsrdump"), "+Pt", str(written["SR"]))
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())  # dsrdump aligns its header with spaces
    assert "Verification Flag : VERIFIED" in out
    assert "Verifying Observers : 2026-03-21 09:30:00, Reader^Ann, Test Hospital" in out
    assert "Preliminary Flag : FINAL" in out and "Completion Flag : COMPLETE" in out
    assert "Predecessor Docs : 1" in out
    assert '"Person Observer Name")="Reader^Ann"' in out
    sr = pydicom.dcmread(written["SR"])
    reference = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        preliminary["SR"].SOPInstanceUID
    if outcome == "approved":
        assert "Positioned by the reader" in out  # MC3's coded note
        assert "Positioned by the algorithm" in out
        assert "Result verified by the reader" in out
    else:
        assert "No result issued (rejected by the reader)" in out
        assert "Modifier 53" in out


def test_every_final_object_has_a_new_uid(final):
    _, written, preliminary = final
    old = {ds.SOPInstanceUID for ds in preliminary.values()}
    for modality, path in written.items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID not in old, modality
        assert ds.SeriesInstanceUID == preliminary[modality].SeriesInstanceUID


def test_reader_positioned_bone_is_labelled_on_the_gsps(final):
    outcome, written, _ = final
    if outcome != "approved":
        pytest.skip("a rejection has no bones")
    gsps = pydicom.dcmread(written["PR"])
    texts = [t.UnformattedTextValue for a in gsps.GraphicAnnotationSequence
             for t in a.get("TextObjectSequence", [])]
    assert "MC3 (reader)" in texts and "MC2" in texts
    assert any("Verified by Reader^Ann" in t for t in texts)


def test_dcmpschk_accepts_the_final_gsps(final):
    _, written, _ = final
    if "PR" not in written:
        pytest.skip("no GSPS")
    result = _run(_tool("dcmpschk"), str(written["PR"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Test passed" in result.stdout + result.stderr
