"""Legal or near-legal headers that real modalities send must still give a measured result
WITH its report objects (issue 14: each turned a measurable image into a failed job)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dxr_node.pipeline import process_file


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from dxr_node.phantom.generate import write_phantom_set

    folder = tmp_path_factory.mktemp("near-legal")
    write_phantom_set(folder, n=1, seed=11)
    return folder / "phantom_0000.dcm"


def _single_imager_spacing(ds: Dataset) -> None:
    spacing = float(ds.PixelSpacing[0])
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = spacing  # VM 1 where the standard says 2


def _voi_lut_and_window(ds: Dataset) -> None:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", list(range(0, 65536, 16)))
    ds.VOILUTSequence = Sequence([item])
    ds.WindowCenter, ds.WindowWidth = 2048, 4096


EDITS = {
    "single-valued ImagerPixelSpacing": (_single_imager_spacing, {}),
    "missing Modality": (lambda ds: delattr(ds, "Modality"), {}),
    # Found by scripts/fuzz --scp: highdicom then wants CT slice geometry (AttributeError).
    "Modality CT on a DX image": (lambda ds: setattr(ds, "Modality", "CT"), {}),
    "VOI LUT Sequence with Window Center/Width": (_voi_lut_and_window, {}),
    "PatientSex X1": (lambda ds: setattr(ds, "PatientSex", "X1"), {"PatientSex"}),
    "StudyDate with markup": (lambda ds: setattr(ds, "StudyDate", "<b>2024</b>"),
                              {"StudyDate"}),
    # Found by scripts/fuzz --out: each stopped the report objects.
    "StudyDate month 13": (lambda ds: setattr(ds, "StudyDate", "20241399"), {"StudyDate"}),
    "PatientBirthDate 19000000": (lambda ds: setattr(ds, "PatientBirthDate", "19000000"),
                                  {"PatientBirthDate"}),
    "Window Width 0": (lambda ds: setattr(ds, "WindowWidth", 0), {"WindowWidth"}),
    "Window Center without a width": (lambda ds: delattr(ds, "WindowWidth"),
                                      {"WindowCenter"}),
    "three centres, one width": (lambda ds: setattr(ds, "WindowCenter", [1, 2, 3]),
                                 {"WindowCenter"}),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_near_legal_header_is_measured_and_reported(phantom, tmp_path, edit):
    change, emptied = EDITS[edit]
    ds = pydicom.dcmread(phantom)
    change(ds)
    path = tmp_path / "edited.dcm"
    ds.save_as(path)
    result = process_file(path, kinds=("SR", "SC", "GSPS"))
    assert result.report_problem is None
    assert result.analysis.ok, result.analysis.reasons
    assert np.isfinite(result.analysis.dxr_bmd_g_cm2)
    assert [str(o.SOPClassUID) for o in result.objects] == [
        "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.11.1"]
    for obj in result.objects:  # the malformed value is emptied or dropped, not copied
        for keyword in emptied:
            assert not obj.get(keyword)
