"""The one-page PDF says what the issue asks for; previews rendered with pdftoppm."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from conftest import make_analysis, make_interpretation, make_rejected, make_source

from dxr_node.reports import build_reports

PREVIEWS = Path(__file__).resolve().parents[2] / "artifacts" / "reports"


def _pdf(source, analysis, interpretation, display) -> bytes:
    [doc] = build_reports(source, analysis, interpretation, display, kinds=("PDF",))
    assert doc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    data = bytes(doc.EncapsulatedDocument)[:doc.EncapsulatedDocumentLength]
    assert data.startswith(b"%PDF-") and data.rstrip(b"\n").endswith(b"%%EOF")
    return data


def _text(tmp_path, data: bytes, name: str) -> str:
    pdftotext, pdftoppm = shutil.which("pdftotext"), shutil.which("pdftoppm")
    if pdftotext is None or pdftoppm is None:
        pytest.skip("poppler-utils not installed")
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(data)
    PREVIEWS.mkdir(parents=True, exist_ok=True)
    subprocess.run([pdftoppm, "-r", "80", "-png", "-singlefile", str(path),
                    str(PREVIEWS / f"report_{name}")], check=True, timeout=60)
    info = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True)
    assert re.search(r"^Pages:\s+1$", info.stdout, re.MULTILINE)
    return subprocess.run([pdftotext, "-layout", str(path), "-"], capture_output=True,
                          text=True, check=True).stdout


def test_full_report_content(tmp_path, display):
    source = make_source()
    text = _text(tmp_path, _pdf(source, make_analysis(), make_interpretation(), display),
                 "full")
    for expected in ("Müller Jürgen", "DXR-0042", "0750T", "ICD-10 M81.0",
                     "Osteoporosis screening", "MC2", "MC3", "MC4", "0.469 g/cm²", "-1.6",
                     "+0.4", "low bone mass", "refer for DXA", "1.9×", "-2.3 % since 2024-01-10",
                     "For clinical review"):
        assert expected in text, expected
    assert "Modifier" not in text


def test_reduced_and_discontinued_services_are_documented(tmp_path, display, engine_partial):
    source, partial_display, analysis, interpretation = engine_partial
    reduced = _text(tmp_path, _pdf(source, analysis, interpretation, partial_display),
                    "engine_partial")
    assert "Modifier 52 (reduced service): 2 of 3 metacarpals measured" in reduced
    assert "partial result" in reduced and "MC4" in reduced and "not measured" in reduced
    assert f"{analysis.bones['MC2'].cortical_thickness_mm:.2f}" in reduced
    assert "g/cm²" not in reduced and "T-score" not in reduced
    ratio_only = _text(tmp_path, _pdf(make_source(spacing=False), make_analysis(spacing_mm=None),
                                      None, display), "ratio_only")
    assert "Modifier 52 (reduced service): ratio measures only" in ratio_only
    rejected = _text(tmp_path, _pdf(make_source(), make_rejected("image too dark"), None,
                                    display), "rejected")
    assert "Modifier 53 (discontinued service)" in rejected
    assert "DXR analysis not possible" in rejected and "image too dark" in rejected
    assert "g/cm²" not in rejected


def test_laterality_is_the_exam_laterality(tmp_path, display):
    agreed = _text(tmp_path, _pdf(make_source(laterality="L"), make_analysis(laterality="L"),
                                  None, display), "left")
    assert "left hand" in agreed
    # Header left, image right: unknown, as on every other object.
    conflict = _text(tmp_path, _pdf(make_source(laterality="L"),
                                    replace(make_analysis(), laterality="R"), None, display),
                     "laterality_conflict")
    assert "left hand" not in conflict and "right hand" not in conflict


def test_indication_from_request_and_diagnosis_codes(tmp_path, display):
    source = make_source()
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "Z13.820", "I10"
    item.CodeMeaning = "Encounter for screening for osteoporosis"
    source.AdmittingDiagnosesCodeSequence.append(item)
    text = _text(tmp_path, _pdf(source, make_analysis(), None, display), "indication")
    assert "ICD-10 Z13.820" in " ".join(text.split())


@pytest.mark.parametrize("name", ["山田^太郎", "محمد^علي", "כהן^דוד"])
def test_names_in_other_scripts_are_printed_and_kept_out_of_logs(tmp_path, caplog, display,
                                                                  name):
    caplog.set_level(logging.DEBUG)
    source = make_source(name=name, charset="ISO_IR 192")
    text = _text(tmp_path, _pdf(source, make_analysis(), None, display), "script")
    family = name.split("^")[0]
    assert family in text or family[::-1] in text  # right-to-left may extract reversed
    assert family not in caplog.text and "\\u" not in caplog.text


def test_many_remarks_stay_on_one_page_above_the_footer(tmp_path, display):
    many = tuple(f"remark number {k}: " + "long explanation " * 8 for k in range(40))
    interpretation = replace(make_interpretation(), reasons=many)
    text = _text(tmp_path, _pdf(make_source(), make_analysis(), interpretation, display),
                 "many_remarks")
    assert "further remarks: see the DXR structured report" in text
    assert text.rstrip().endswith("DXA and clinical judgement.")
