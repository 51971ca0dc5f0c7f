"""Hand-built inputs for the report tests: a synthetic hand radiograph (DX/CR dataset plus
its display image) and Analysis/Interpretation objects whose geometry matches it."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dxr_node.clinical.reference import load_reference
from dxr_node.clinical.result import Interpretation, PriorComparison, ReferenceInfo
from dxr_node.engine.result import Analysis, BoneMeasurement, Problem, ProblemCode

SPACING_MM = 0.1
ROWS, COLS = 2000, 1600
# name: centre (row, col), axis angle (deg, fingers up = 90), outer width px, cortex px,
# length px. Left hand, PA, fingers up: the thumb (and MC2) is on the image's right.
BONES = {
    "MC2": ((1180.0, 1010.0), 84.0, 84.0, 27.0, 680.0),
    "MC3": ((1150.0, 850.0), 89.0, 86.0, 26.0, 650.0),
    "MC4": ((1190.0, 700.0), 97.0, 72.0, 21.0, 580.0),
}
BAND_HALF_PX = 100.0  # half length of the measured mid-shaft band along the axis

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"


def _frame(angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (row, col) along the axis (proximal -> distal) and across it."""
    theta = math.radians(angle_deg)
    along = np.array([-math.sin(theta), math.cos(theta)])
    across = np.array([math.cos(theta), math.sin(theta)])
    return along, across


def make_display(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """A bone-bright uint8 radiograph: soft-tissue palm and fingers, three metacarpal
    tubes with a medullary canal, blurred a little and with mild noise."""
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float32)
    image = np.full((rows, cols), 18.0, np.float32)
    palm = ((rr - 1250) / 560) ** 2 + ((cc - 830) / 470) ** 2 < 1
    image[palm] += 55
    for (r0, c0), angle, width, _, length in BONES.values():
        along, across = _frame(angle)
        u = (rr - r0) * along[0] + (cc - c0) * along[1]
        d = np.abs((rr - r0) * across[0] + (cc - c0) * across[1])
        finger = (u > length / 2) & (u < length / 2 + 900) & (d < width * 0.9)
        image[finger & ~palm] += 55
        phalanx = (u > length / 2 + 40) & (u < length / 2 + 560) & (d < width * 0.4)
        image[phalanx] += 60
    for (r0, c0), angle, width, cortex, length in BONES.values():
        along, across = _frame(angle)
        u = (rr - r0) * along[0] + (cc - c0) * along[1]
        d = np.abs((rr - r0) * across[0] + (cc - c0) * across[1])
        outer, inner = width / 2, width / 2 - cortex
        path = 2 * np.sqrt(np.clip(outer**2 - d**2, 0, None))
        path -= 2 * np.sqrt(np.clip(inner**2 - d**2, 0, None)) * 0.75
        inside = np.abs(u) < length / 2
        image += np.where(inside, path * 1.3, 0)
    image = np.clip(image + np.random.default_rng(1).normal(0, 2.5, image.shape), 0, 255)
    return image.astype(np.uint8)


def make_source(modality: str = "DX", photometric: str = "MONOCHROME2",
                laterality: str = "L", name: str = "Müller^Jürgen",
                charset: str = "ISO_IR 100", spacing: bool = True) -> pydicom.Dataset:
    """A DX (For Presentation) or CR header as the loader hands it over: no PixelData."""
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = DX_FOR_PRESENTATION if modality == "DX" else CR_IMAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["test-source", modality, photometric,
                                                   laterality, name])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["test-study", name])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["test-series", ds.SOPInstanceUID])
    ds.Modality = modality
    ds.PatientName = name
    ds.PatientID = "DXR-0042"
    ds.PatientBirthDate = "19580312"
    ds.PatientSex = "F"
    ds.PatientAge = "067Y"
    ds.StudyDate = "20260115"
    ds.StudyTime = "093000"
    ds.SeriesDate = "20260115"
    ds.SeriesTime = "093100"
    ds.AccessionNumber = "ACC12345"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StudyID = "S1"
    ds.StudyDescription = "XR hand PA"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Test Modality Inc"
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = laterality
    ds.Laterality = laterality
    ds.PatientOrientation = ["R", "F"] if laterality == "L" else ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    if spacing:
        ds.ImagerPixelSpacing = [SPACING_MM, SPACING_MM]
        ds.PixelSpacing = [SPACING_MM, SPACING_MM]
    request = pydicom.Dataset()
    request.RequestedProcedureID = "RP1"
    request.ReasonForTheRequestedProcedure = "Osteoporosis screening, postmenopausal"
    ds.RequestAttributesSequence = [request]
    diagnosis = pydicom.Dataset()
    diagnosis.CodeValue, diagnosis.CodingSchemeDesignator = "M81.0", "I10"
    diagnosis.CodeMeaning = "Age-related osteoporosis without current pathological fracture"
    ds.AdmittingDiagnosesCodeSequence = [diagnosis]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def make_bone(name: str, spacing_mm: float | None = SPACING_MM) -> BoneMeasurement:
    (r0, c0), angle, width, cortex, length = BONES[name]
    along, across = _frame(angle)
    centre = np.array([r0, c0])

    def at(u: float, d: float) -> tuple[float, float]:
        point = centre + u * along + d * across
        return (round(float(point[0]), 3), round(float(point[1]), 3))

    def edge(d: float) -> tuple[tuple[float, float], tuple[float, float]]:
        return (at(-BAND_HALF_PX, d), at(BAND_HALF_PX, d))

    half, margin = width / 2, 18.0

    def mm(px: float) -> float | None:
        return None if spacing_mm is None else px * spacing_mm

    t_mm, w_mm = mm(cortex), mm(width)
    return BoneMeasurement(
        name=name,
        cortical_thickness_px=cortex,
        width_px=width,
        length_px=length,
        cortical_thickness_mm=t_mm,
        width_mm=w_mm,
        medullary_width_mm=mm(width - 2 * cortex),
        length_mm=mm(length),
        mci=2 * cortex / width,
        vpa_mm=None if t_mm is None else math.pi * t_mm * (1 - t_mm / w_mm),
        center_rc=(r0, c0),
        axis_angle_deg=angle,
        n_profiles=200,
        n_rejected_profiles=7,
        cortical_thickness_sd_mm=mm(0.4),
        width_sd_mm=mm(0.5),
        roi_rc=(at(-BAND_HALF_PX, half + margin), at(BAND_HALF_PX, half + margin),
                at(BAND_HALF_PX, -half - margin), at(-BAND_HALF_PX, -half - margin)),
        outer_edge_a_rc=edge(half),
        inner_edge_a_rc=edge(half - cortex),
        inner_edge_b_rc=edge(-half + cortex),
        outer_edge_b_rc=edge(-half),
        proximal_rc=at(-length / 2, 0),
        distal_rc=at(length / 2, 0),
        blur_sigma_px=1.2,
    )


def make_analysis(bone_names: tuple[str, ...] = ("MC2", "MC3", "MC4"),
                  spacing_mm: float | None = SPACING_MM, laterality: str = "L") -> Analysis:
    bones = {name: make_bone(name, spacing_mm) for name in bone_names}
    mci = sum(b.mci for b in bones.values()) / len(bones)
    common = dict(source="test.dcm", status="ok", problems=(), laterality=laterality,
                  laterality_tag=laterality, pixel_spacing_source="ImagerPixelSpacing",
                  image_rows=ROWS, image_cols=COLS, bones=bones, mci=mci,
                  algorithm={"name": "dxr-node", "version": "0.1.0"}, elapsed_ms=812.0)
    if spacing_mm is None:
        return Analysis(pixel_spacing_mm=None, **{**common, "pixel_spacing_source": None})
    t = sum(b.cortical_thickness_mm for b in bones.values()) / len(bones)
    w = sum(b.width_mm for b in bones.values()) / len(bones)
    length = sum(b.length_mm for b in bones.values()) / len(bones)
    vpa = math.pi * t * (1 - t / w)
    return Analysis(pixel_spacing_mm=spacing_mm, cortical_thickness_mm=t, width_mm=w,
                    vpa_mm=vpa, dxr_bmd_g_cm2=0.0871 * vpa, bhi=vpa / (length * w) ** 0.33,
                    **common)


def make_rejected(reason: str = "hand not found: image is mostly empty",
                  code: ProblemCode = ProblemCode.NOT_A_HAND) -> Analysis:
    return Analysis(source="test.dcm", status="rejected", problems=(Problem.of(code, reason),),
                    laterality=None, laterality_tag="L", pixel_spacing_mm=SPACING_MM,
                    pixel_spacing_source="ImagerPixelSpacing", image_rows=ROWS,
                    image_cols=COLS, algorithm={"name": "dxr-node", "version": "0.1.0"})


def make_interpretation(with_prior: bool = True, modifier: str | None = None,
                        laterality: str | None = "L") -> Interpretation:
    table = load_reference()
    reference = ReferenceInfo(name=table.name, version="1.0.0",
                              young_adult_mean_g_cm2=0.598, young_adult_sd_g_cm2=0.034,
                              age_matched_mean_g_cm2=0.52, age_matched_sd_g_cm2=0.05,
                              age_matched_curve=tuple(
                                  (p.age_years, p.mean_g_cm2, p.sd_g_cm2)
                                  for p in table.sexes["F"].age_matched))
    prior = PriorComparison(date="20240110", dxr_bmd_g_cm2=0.561, change_g_cm2=-0.013,
                            change_percent=-2.317, change_percent_per_year=-1.15,
                            least_significant_change_percent=1.8, significant=True,
                            precision_cv_percent=0.65)
    return Interpretation(age_years=67.8, sex="F", t_score=-1.63, z_score=0.41,
                          category="low bone mass", triage="refer for DXA (T < -1.2)",
                          relative_risk=1.9, reference=reference,
                          prior=prior if with_prior else None, billing_modifier=modifier,
                          exam_laterality=laterality)


@pytest.fixture(scope="session")
def display() -> np.ndarray:
    return make_display()


@pytest.fixture
def analysis() -> Analysis:
    return make_analysis()


@pytest.fixture
def interpretation() -> Interpretation:
    return make_interpretation()


@pytest.fixture(scope="session")
def engine_partial(tmp_path_factory):
    """What the engine really returns when MC4 cannot be measured: (source header, display,
    Analysis rejected with MC2 and MC3, Interpretation)."""
    from partial_hand import partial_hand

    from dxr_node.clinical import interpret
    from dxr_node.engine.image import to_display_uint8

    radiograph, analysis = partial_hand(tmp_path_factory.mktemp("partial-hand"))
    return (radiograph.dataset, to_display_uint8(radiograph.pixels), analysis,
            interpret(analysis, radiograph.dataset))
