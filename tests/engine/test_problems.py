"""Typed problems: codes, severities, the JSON form and the reading of older stored JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dxr_node.engine.analyze import analyze, error_analysis
from dxr_node.engine.image import Radiograph
from dxr_node.engine.remeasure import analysis_from_dict
from dxr_node.engine.result import Problem, ProblemCode, Severity, legacy_problem

NOTES = {ProblemCode.PAEDIATRIC, ProblemCode.CENTRAL_BAND, ProblemCode.NO_SPACING,
         ProblemCode.SPACING_MISMATCH, ProblemCode.RATIO_ONLY}


def test_codes_are_short_unique_identifiers():
    values = [code.value for code in ProblemCode]
    assert len(set(values)) == len(values)
    # a DICOM code value (SH) holds 16 characters
    assert all(len(v) <= 16 and v.isascii() and v == v.lower() for v in values), values


def test_notes_and_rejections_are_told_apart():
    assert {c for c in ProblemCode if c.severity is Severity.NOTE} == NOTES
    assert Problem.of(ProblemCode.BONE_CUT, "MC4 shaft cut by the field edge", "MC4").rejection
    assert not Problem.of(ProblemCode.PAEDIATRIC, "paediatric").rejection


def _blank(spacing: float | None) -> Radiograph:
    pixels = np.full((300, 240), 100.0, np.float32)
    problem = None if spacing else "no pixel spacing in the header"
    return Radiograph(pixels, spacing, "PixelSpacing" if spacing else None, problem, None,
                      "blank.dcm", None)


def test_a_blank_image_is_rejected_with_a_code_and_its_notes_kept_apart():
    analysis = analyze(_blank(None))
    assert analysis.status == "rejected"
    codes = [p.code for p in analysis.problems]
    assert codes[:2] == [ProblemCode.NO_SPACING, ProblemCode.RATIO_ONLY]
    assert [p.code for p in analysis.rejections] == codes[2:]
    assert analysis.rejections and analysis.rejections[0].code in (
        ProblemCode.NOT_A_HAND, ProblemCode.FINGER_RAYS)
    assert analysis.reasons == tuple(p.text for p in analysis.problems)


def test_too_coarse_a_spacing_is_its_own_cause():
    analysis = analyze(_blank(0.5))
    assert analysis.rejections[0] == Problem(
        ProblemCode.COARSE_SPACING, None, Severity.REJECTION,
        "resolution too coarse: pixel spacing 0.500 mm > 0.2 mm")


def test_the_json_keeps_reasons_and_adds_the_typed_problems():
    analysis = analyze(_blank(None))
    data = json.loads(json.dumps(analysis.to_dict()))
    keys = list(data)
    assert keys.index("reasons") == keys.index("status") + 1  # where it always was
    assert data["reasons"] == list(analysis.reasons)
    assert data["problems"][0] == {"code": "no_spacing", "bone": None, "severity": "note",
                                   "text": analysis.reasons[0]}
    assert analysis_from_dict(data).problems == analysis.problems


def test_an_unreadable_file_is_an_error_with_its_code():
    analysis = error_analysis("x.dcm", "x.dcm: not a DICOM file")
    assert analysis.to_dict()["problems"] == [
        {"code": "unreadable", "bone": None, "severity": "rejection",
         "text": "x.dcm: not a DICOM file"}]


@pytest.mark.parametrize(("text", "code", "bone"), [
    ("no hand found: not a hand radiograph", ProblemCode.NOT_A_HAND, None),
    ("not a hand radiograph: expected a 2-D greyscale image of at least 64x64, got (3,)",
     ProblemCode.NOT_A_HAND, None),
    ("not a hand radiograph: 3 finger rays found, need 5", ProblemCode.FINGER_RAYS, None),
    ("not a hand radiograph: the rays are not arranged like fingers",
     ProblemCode.FINGER_RAYS, None),
    ("not a hand radiograph or bone identity uncertain: four finger rays and no row of "
     "metacarpals beside them (MC3 not found)", ProblemCode.FINGER_RAYS, None),
    ("bone identity uncertain: two labels on one shaft", ProblemCode.IDENTITY_UNCERTAIN, None),
    ("bones too small to measure (toddler)", ProblemCode.TODDLER, None),
    ("resolution too coarse: pixel spacing 0.300 mm > 0.2 mm", ProblemCode.COARSE_SPACING,
     None),
    ("measurements internally inconsistent: length differs too much between bones (...)",
     ProblemCode.INCONSISTENT, None),
    ("rejected by the reader: hand positioning unsuitable", ProblemCode.READER_REJECTED,
     None),
    ("MC4 shaft cut by the field edge", ProblemCode.BONE_CUT, "MC4"),
    ("MC2 not found (out of line with the other metacarpals)", ProblemCode.BONE_NOT_FOUND,
     "MC2"),
    ("MC3: excluded by the reader: not measurable", ProblemCode.READER_EXCLUDED, "MC3"),
    ("MC3: implausible metacarpal index 0.91", ProblemCode.IMPLAUSIBLE_MCI, "MC3"),
    ("MC2: implausible outer width 15.10 mm", ProblemCode.IMPLAUSIBLE_SIZE, "MC2"),
    ("MC4: measured over the central 10% of its length (outer width changes)",
     ProblemCode.CENTRAL_BAND, "MC4"),
    ("MC4: cortex not resolved (fit gives 1.0 px at a blur of 2.0 px)",
     ProblemCode.SHAFT_UNMEASURED, "MC4"),
    ("paediatric", ProblemCode.PAEDIATRIC, None),
    ("laterality disagreement: image shows L, header says R", ProblemCode.LATERALITY, None),
    ("millimetre values not reported: ratio measures only", ProblemCode.RATIO_ONLY, None),
    ("pixel spacing 0.300 mm (PixelSpacing) is implausible for this hand: outer widths",
     ProblemCode.SPACING_MISMATCH, None),
    ("implausible PixelSpacing 0.9 mm (expected 0.02-0.5 mm)", ProblemCode.NO_SPACING, None),
])
def test_results_stored_before_problems_were_typed_read_back_with_their_codes(text, code,
                                                                              bone):
    assert legacy_problem(text) == Problem.of(code, text, bone)


def test_a_stored_error_reads_back_as_unreadable():
    stored = error_analysis("x.dcm", "internal error: boom").to_dict()
    del stored["problems"]
    assert analysis_from_dict(stored).problems[0].code is ProblemCode.UNREADABLE


METHOD = Path(__file__).resolve().parents[2] / "docs" / "method.md"


def _qc_table() -> dict[str, str]:
    """code -> severity, from the rows of method.md's QC table."""
    text = METHOD.read_text(encoding="utf-8")
    table = text[text.index("<!-- QC codes:"):].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[3:]:  # the marker, the heading, the rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3 and cells[0].startswith("`"), line
        code = cells[0].strip("`")
        assert code not in rows, f"{code} listed twice"
        rows[code] = cells[1]
    return rows


def test_method_md_lists_every_problem_code_with_its_severity():
    table = _qc_table()
    codes = {code.value: code.severity.value for code in ProblemCode}
    assert sorted(set(codes) - set(table)) == [], "codes missing from docs/method.md"
    assert sorted(set(table) - set(codes)) == [], "docs/method.md names codes that do not exist"
    assert table == codes
