"""Builders for hand-made engine results and DICOM headers used by the clinical tests."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from dxr_node.engine.result import BONE_NAMES, Analysis, BoneMeasurement, Problem


def make_bone(name: str) -> BoneMeasurement:
    segment = ((100.0, 50.0), (200.0, 50.0))
    return BoneMeasurement(
        name=name, cortical_thickness_px=15.0, width_px=80.0, length_px=600.0,
        cortical_thickness_mm=1.5, width_mm=8.0, medullary_width_mm=5.0, length_mm=60.0,
        mci=0.375, vpa_mm=3.83, center_rc=(150.0, 50.0), axis_angle_deg=90.0,
        n_profiles=100, n_rejected_profiles=2, cortical_thickness_sd_mm=0.02,
        width_sd_mm=0.03, roi_rc=((100.0, 10.0), (100.0, 90.0), (200.0, 90.0), (200.0, 10.0)),
        outer_edge_a_rc=segment, inner_edge_a_rc=segment, inner_edge_b_rc=segment,
        outer_edge_b_rc=segment, proximal_rc=(400.0, 50.0), distal_rc=(-200.0, 50.0),
        blur_sigma_px=1.0,
    )


def make_analysis(bmd: float | None = 0.5, *, status: str = "ok", bones: int = 3,
                  laterality: str | None = "L", laterality_tag: str | None = None,
                  paediatric: bool = False,
                  problems: tuple[Problem, ...] = ()) -> Analysis:
    return Analysis(
        source="test.dcm", status=status, problems=problems, laterality=laterality,
        laterality_tag=laterality_tag, pixel_spacing_mm=0.1, pixel_spacing_source="PixelSpacing",
        image_rows=2000, image_cols=1600,
        bones={name: make_bone(name) for name in BONE_NAMES[:bones]},
        dxr_bmd_g_cm2=bmd, paediatric=paediatric,
    )


def make_header(*, sex: str | None = "F", age: str | None = None, birth: str | None = None,
                study_date: str | None = "20250301",
                uid: str = "1.2.826.0.1.3680043.8.498.1") -> Dataset:
    header = Dataset()
    header.SOPInstanceUID = uid
    if sex is not None:
        header.PatientSex = sex
    if age is not None:
        header.PatientAge = age
    if birth is not None:
        header.PatientBirthDate = birth
    if study_date is not None:
        header.StudyDate = study_date
    return header


@pytest.fixture
def analysis_factory():
    return make_analysis


@pytest.fixture
def header_factory():
    return make_header


@pytest.fixture(scope="session")
def engine_partial(tmp_path_factory):
    """(Radiograph, Analysis) of a real engine run whose MC4 could not be measured."""
    from partial_hand import partial_hand

    return partial_hand(tmp_path_factory.mktemp("partial-hand"))
