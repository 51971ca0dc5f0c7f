"""`dxr-node analyze` as a user runs it: exit codes, JSON Lines, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

REQUIRED_KEYS = {
    "source", "status", "reasons", "problems", "laterality", "pixel_spacing_mm",
    "pixel_spacing_source", "bones", "cortical_thickness_mm", "width_mm", "mci",
    "dxr_bmd_g_cm2", "bhi", "algorithm",
    "elapsed_ms", "t_score", "z_score", "category", "relative_risk", "age_years", "sex",
    "reference", "prior",
}
BONE_KEYS = {"cortical_thickness_mm", "width_mm", "medullary_width_mm", "length_mm",
             "center_rc", "axis_angle_deg", "n_profiles"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dxr_node.cli", *args],
                          capture_output=True, text=True, timeout=300)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_analyze_phantoms_json_lines(phantom_set):
    folder, truth = phantom_set
    paths = [str(folder / name) for name in list(truth)[:3]]
    proc = run_cli("analyze", "--json", *paths)
    records = json_lines(proc.stdout)
    assert [r["source"] for r in records] == paths  # one line per input, in order
    for record in records:
        assert REQUIRED_KEYS <= record.keys()
        assert record["algorithm"]["name"] and record["algorithm"]["version"]
    ok = [r for r in records if r["status"] == "ok"]
    assert ok, [r["reasons"] for r in records]
    for record in ok:
        assert set(record["bones"]) == {"MC2", "MC3", "MC4"}
        for bone in record["bones"].values():
            assert BONE_KEYS <= bone.keys()
            assert bone["n_profiles"] > 10
        assert 0.2 < record["dxr_bmd_g_cm2"] < 1.0
    expected_exit = 0 if len(ok) == len(records) else 1
    assert proc.returncode == expected_exit, proc.stderr


def test_human_table(phantom_set):
    folder, truth = phantom_set
    proc = run_cli("analyze", str(folder / next(iter(truth))))
    assert "MC2" in proc.stdout and "DXR-BMD" in proc.stdout, proc.stdout


def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.dcm"
    proc = run_cli("analyze", "--json", str(missing))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(missing) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (record,) = json_lines(proc.stdout)
    assert record["status"] == "error" and record["reasons"]


def test_text_file_is_not_an_image(tmp_path):
    bogus = tmp_path / "notes.dcm"
    bogus.write_text("this is not DICOM\n")
    proc = run_cli("analyze", "--json", str(bogus))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert json_lines(proc.stdout)[0]["status"] == "error"


def test_usage_errors_exit_2():
    assert run_cli("analyze").returncode == 2
    proc = run_cli("analyze", "--pixel-spacing", "-1", "x.png")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_png_without_spacing_reports_ratios_only(tmp_path, phantom_set):
    folder, truth = phantom_set
    name = next(n for n, t in truth.items() if t["pixel_spacing_mm"] <= 0.13)
    ds = pydicom.dcmread(folder / name)
    from dxr_node.engine.image import load_radiograph, to_display_uint8

    png = tmp_path / "hand.png"
    cv2.imwrite(str(png), to_display_uint8(load_radiograph(folder / name).pixels))
    (record,) = json_lines(run_cli("analyze", "--json", str(png)).stdout)
    assert record["pixel_spacing_mm"] is None
    assert any("spacing" in reason for reason in record["reasons"])
    assert record["dxr_bmd_g_cm2"] is None and record["width_mm"] is None
    if record["status"] == "ok":
        assert 0.2 < record["mci"] < 0.9
        assert all(b["width_mm"] is None for b in record["bones"].values())
    # With the spacing given on the command line the mm values come back.
    spacing = float(ds.ImagerPixelSpacing[0])
    (with_mm,) = json_lines(run_cli("analyze", "--json", "--pixel-spacing", str(spacing),
                                    str(png)).stdout)
    assert with_mm["pixel_spacing_source"] == "command line"
    if with_mm["status"] == "ok":
        assert with_mm["width_mm"] is not None


@pytest.mark.slow
def test_a_rerun_keeps_its_uids_and_a_changed_result_names_the_one_it_replaces(tmp_path,
                                                                            phantom_set):
    folder, truth = phantom_set
    image, out = str(folder / next(iter(truth))), tmp_path / "out"

    def sr_of(*options: str) -> pydicom.Dataset:
        (record,) = json_lines(run_cli("analyze", "--json", "--out", str(out), *options,
                                       image).stdout)
        [sr] = [d for d in map(pydicom.dcmread, record["objects"]) if d.Modality == "SR"]
        return sr

    first = sr_of("--sex", "F", "--age", "60")
    files = sorted(out.iterdir())
    again = sr_of("--sex", "F", "--age", "60")
    assert again.SOPInstanceUID == first.SOPInstanceUID and sorted(out.iterdir()) == files
    assert "PredecessorDocumentsSequence" not in again
    older = sr_of("--sex", "F", "--age", "75")  # other Z-score: other content
    assert older.SOPInstanceUID != first.SOPInstanceUID
    assert older.SeriesInstanceUID == first.SeriesInstanceUID
    [study] = older.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    assert [s.ReferencedSOPInstanceUID for s in series.ReferencedSOPSequence] == [
        first.SOPInstanceUID]


@pytest.mark.slow
def test_out_dir_writes_objects(tmp_path, phantom_set):
    folder, truth = phantom_set
    out = tmp_path / "out"
    proc = run_cli("analyze", "--json", "--out", str(out), str(folder / next(iter(truth))))
    (record,) = json_lines(proc.stdout)
    written = [Path(p) for p in record["objects"]]
    assert written and all(p.is_file() and p.parent == out for p in written)
    modalities = {pydicom.dcmread(p).Modality for p in written}
    assert {"SR", "PR"} <= modalities


@pytest.mark.parametrize("shape", [(4, 4), (64, 48), (600, 500)])
def test_tiny_or_blank_pngs_are_rejected_not_crashed(tmp_path, shape):
    png = tmp_path / "blank.png"
    cv2.imwrite(str(png), np.full(shape, 128, np.uint8))
    proc = run_cli("analyze", "--json", "--pixel-spacing", "0.1", str(png))
    (record,) = json_lines(proc.stdout)
    assert record["status"] in {"rejected", "error"} and record["reasons"]
    assert "Traceback" not in proc.stderr


def test_unusable_out_dir_is_one_clear_line(tmp_path, phantom_set):
    folder, truth = phantom_set
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = run_cli("analyze", "--out", str(blocker / "sub"), str(folder / next(iter(truth))))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_objects_that_cannot_be_built_keep_the_measurement(tmp_path, phantom_set):
    folder, truth = phantom_set
    ds = pydicom.dcmread(folder / next(iter(truth)))
    del ds.StudyInstanceUID  # the objects could not reference their study
    source = tmp_path / "nostudy.dcm"
    ds.save_as(source)
    (record,) = json_lines(run_cli("analyze", "--json", "--out", str(tmp_path / "out"),
                                   str(source)).stdout)
    assert record["status"] in {"ok", "rejected"} and record["objects"] == []
    assert any(r.startswith("report objects not built") for r in record["reasons"])
