"""The written objects pass the standard validators: dciodvfy (all four), dsrdump (SR)
and dcmpschk (GSPS), for DX and CR sources, MONOCHROME1 and 2, left and right hands."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace

import pydicom
import pytest
from conftest import make_analysis, make_interpretation, make_rejected, make_source

from dxr_node.engine.result import ProblemCode
from dxr_node.reports import build_reports, write_objects

SOURCES = [
    ("DX", "MONOCHROME2", "L"),
    ("DX", "MONOCHROME1", "R"),
    ("CR", "MONOCHROME1", "L"),
    ("CR", "MONOCHROME2", "R"),
]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _write(tmp_path, source, analysis, interpretation, display):
    paths = write_objects(build_reports(source, analysis, interpretation, display), tmp_path)
    return {pydicom.dcmread(p, stop_before_pixels=True).Modality: p for p in paths}


def _bare_source():
    """No laterality, orientation, window or pixel spacing in the header."""
    source = make_source(spacing=False)
    for keyword in ("Laterality", "ImageLaterality", "PatientOrientation", "WindowCenter",
                    "WindowWidth"):
        delattr(source, keyword)
    return source


def _ordered_source():
    """A header completed by the node's matched HL7 order (indication, order numbers)."""
    from dxr_node.integration.outbound import WorkerHooks
    from dxr_node.node.integration_store import Order

    source = make_source()
    hooks = WorkerHooks(config=None, job_id=1, order=Order(
        placer_order_number="PL123", filler_order_number="FI456", reason="screening",
        diagnoses=(("Z13.820", "Encounter for screening for osteoporosis", "I10"),)))
    hooks.amend_header(source)
    return source


@pytest.fixture(params=[*SOURCES, "rejected", "bare", "error", "engine-partial",
                        "laterality-conflict", "ordered"],
                ids=lambda p: "-".join(p) if isinstance(p, tuple) else p)
def written(request, tmp_path, display):
    if request.param == "rejected":
        return _write(tmp_path, make_source(), make_rejected(), None, display)
    if request.param == "bare":
        analysis = replace(make_analysis(spacing_mm=None), laterality=None, laterality_tag=None)
        return _write(tmp_path, _bare_source(), analysis, make_interpretation(laterality=None),
                      display)
    if request.param == "engine-partial":
        source, partial_display, analysis, interpretation = request.getfixturevalue(
            "engine_partial")
        # dcmpschk checks PN byte by byte and takes the UTF-8 continuation bytes 0x80-0x9F
        # (e.g. of the phantom's "Ø") for control characters: use a name it can read.
        source = source.copy()
        source.PatientName = "Phantom^Partial"
        return _write(tmp_path, source, analysis, interpretation, partial_display)
    if request.param == "ordered":
        return _write(tmp_path, _ordered_source(), make_analysis(), make_interpretation(),
                      display)
    if request.param == "laterality-conflict":  # header L, image R: laterality unknown
        analysis = replace(make_analysis(), laterality="R")
        return _write(tmp_path, make_source(), analysis, None, display)
    if request.param == "error":
        failed = replace(make_rejected("internal error: decoder failed",
                                       ProblemCode.UNREADABLE), status="error",
                         laterality_tag=None)
        return _write(tmp_path, _bare_source(), failed, None, display)
    modality, photometric, side = request.param
    source = make_source(modality=modality, photometric=photometric, laterality=side)
    return _write(tmp_path, source, make_analysis(laterality=side),
                  make_interpretation(laterality=side), display)


def test_dciodvfy_reports_no_errors(written):
    dciodvfy = _tool("dciodvfy")
    assert set(written) == {"SR", "OT", "PR", "DOC"}
    for path in written.values():
        result = _run(dciodvfy, str(path))
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


def test_dsrdump_prints_the_whole_tree(written):
    result = _run(_tool("dsrdump"), "+Pt", str(written["SR"]))
    assert result.returncode == 0, result.stderr
    assert "Imaging Measurement Report" in result.stdout
    assert "Qualitative Evaluations" in result.stdout


def test_dcmpschk_accepts_the_gsps(written):
    result = _run(_tool("dcmpschk"), str(written["PR"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Test passed" in result.stdout + result.stderr
