"""A source that leaves out Type 2 patient/study attributes still gets valid objects."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pydicom
import pytest

LEFT_OUT = ("PatientBirthDate", "PatientSex", "PatientAge", "PatientName", "PatientID",
            "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDate", "StudyTime")


@pytest.mark.slow
def test_objects_from_a_minimal_header_are_valid(tmp_path, phantom_set):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    folder, truth = phantom_set
    ds = pydicom.dcmread(folder / next(iter(truth)))
    for keyword in LEFT_OUT:
        if keyword in ds:
            delattr(ds, keyword)
    source = tmp_path / "minimal.dcm"
    ds.save_as(source)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "dxr_node.cli", "analyze", "--out", str(out),
                           str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    written = sorted(out.glob("*.dcm"))
    assert len(written) == 4  # SR, SC, GSPS, PDF
    for path in written:
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (check.stdout + check.stderr).splitlines()
                  if line.startswith("Error")]
        assert not errors, (path.name, errors)
        assert pydicom.dcmread(path).PatientID == ""  # present, empty: Type 2
