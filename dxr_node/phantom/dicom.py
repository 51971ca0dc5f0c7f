"""DICOM encoding of phantom images: DX (for presentation / processing) and CR objects.

Transfer syntaxes pydicom encodes itself (uncompressed, RLE, JPEG 2000 lossless) are done
here; JPEG lossless/baseline and JPEG-LS are made by shelling out to dcmtk when installed.
"""

from __future__ import annotations

import copy
import datetime as dt
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from dxr_node import __version__
from dxr_node.phantom.acquisition import Acquisition

DX_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")

# --transfer-syntax choices: name -> (UID, how it is made).
TRANSFER_SYNTAXES: dict[str, tuple[str, str]] = {
    "explicit": (ExplicitVRLittleEndian, "pydicom"),
    "rle": (RLELossless, "pydicom"),
    "j2k-lossless": (JPEG2000Lossless, "pydicom"),
    "jpeg-lossless-sv1": ("1.2.840.10008.1.2.4.70", "dcmcjpeg +e1"),
    "jpeg-lossless": ("1.2.840.10008.1.2.4.57", "dcmcjpeg +el"),
    "jpeg-baseline": ("1.2.840.10008.1.2.4.50", "dcmcjpeg +eb"),
    "jpeg-extended": ("1.2.840.10008.1.2.4.51", "dcmcjpeg +ee"),
    "jpeg-ls": ("1.2.840.10008.1.2.4.80", "dcmcjpls +el"),
}

# Synthetic patients; some names need UTF-8 (SpecificCharacterSet ISO_IR 192).
_FEMALE = ("Doe^Jane", "Müller^Anna", "Smith^Mary", "Østergaard^Kirsten", "García^Lucía",
           "Novak^Petra", "Jensen^Mette", "Łukasik^Zofia", "Brown^Emily", "Kowalski^Ewa")
_MALE = ("Doe^John", "Björk^Lars", "Rossi^Marco", "Dubois^Émile", "Tanaka^Hiroshi",
         "Nielsen^Jens", "Schäfer^Jürgen", "Smith^Peter")
_AGES = {"adult": (22, 88), "paediatric": (8, 14), "toddler": (1, 3), "non-hand": (25, 80)}


@dataclass(frozen=True)
class Patient:
    name: str
    patient_id: str
    sex: str  # "F" | "M"
    birth_date: dt.date
    study_date: dt.date

    @property
    def age_years(self) -> int:
        b, s = self.birth_date, self.study_date
        return s.year - b.year - ((s.month, s.day) < (b.month, b.day))

    @classmethod
    def random(cls, rng: np.random.Generator, variant: str = "adult") -> Patient:
        sex = "F" if rng.random() < 0.7 else "M"
        name = str(rng.choice(_FEMALE if sex == "F" else _MALE))
        low, high = _AGES[variant]
        study = dt.date(2026, 1, 5) + dt.timedelta(days=int(rng.integers(0, 320)))
        birth = study - dt.timedelta(days=int(rng.uniform(low, high + 1) * 365.25))
        return cls(name, f"PH{rng.integers(0, 10**7):07d}", sex, birth, study)


def to_dataset(pixels: np.ndarray, acquisition: Acquisition, patient: Patient,
               uid_seed: str, *, study_uid: str | None = None,
               variant: str = "adult") -> Dataset:
    """A DX or CR dataset (uncompressed) holding ``pixels`` as rendered by ``render``."""
    if pixels.dtype != np.uint16 or pixels.ndim != 2:
        raise ValueError("pixels must be a 2-D uint16 array")
    is_cr = acquisition.modality == "CR"
    for_processing = acquisition.for_processing  # DX only (Acquisition checks)
    sop_class = CR_IMAGE if is_cr else DX_PROCESSING if for_processing else DX_PRESENTATION
    when = dt.datetime.combine(patient.study_date, dt.time(8, 0)) + dt.timedelta(
        seconds=zlib.crc32(uid_seed.encode()) % 30000)  # some time in the working day
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")

    ds = Dataset()
    if not patient.name.isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "sop"])
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.AccessionNumber = generate_uid(entropy_srcs=[uid_seed, "accession"])[-8:]
    ds.Modality = acquisition.modality
    ds.Manufacturer = "dxr-node phantom"
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = "PHANTOM1"
    ds.StudyDescription = "XR HAND PA" if variant != "non-hand" else "XR CHEST PA"
    ds.SeriesDescription = ds.StudyDescription
    ds.ManufacturerModelName = "synthetic hand phantom"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age_years:03d}Y"
    ds.BodyPartExamined = "HAND" if variant != "non-hand" else "CHEST"
    ds.KVP = 50 if variant != "non-hand" else 120
    ds.SoftwareVersions = f"dxr-node {__version__}"
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [f"{acquisition.imager_pixel_spacing_mm:.10g}"] * 2
    ds.DistanceSourceToDetector = 1000
    ds.ExposureTime = 20
    ds.XRayTubeCurrent = 100
    ds.Exposure = 2
    if acquisition.calibrated:
        ds.PixelSpacing = [f"{acquisition.pixel_spacing_mm:.10g}"] * 2
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "synthetic: object-plane spacing"
    if acquisition.magnification:
        ds.EstimatedRadiographicMagnificationFactor = f"{acquisition.magnification:.10g}"
        ds.DistanceSourceToPatient = f"{1000 / acquisition.magnification:.1f}"
    ds.StudyInstanceUID = study_uid or generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = _patient_orientation(acquisition)
    laterality = acquisition.laterality if variant != "non-hand" else None
    if is_cr:
        ds.Laterality = laterality or ""
    else:
        ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
        ds.ImageLaterality = laterality or "U"
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = "COLUMN"
        ds.ViewCodeSequence = Sequence([_code("399348003", "SCT", "postero-anterior")])
        ds.AcquisitionContextSequence = Sequence()
        ds.AnatomicRegionSequence = Sequence([_code(*(
            ("85562004", "SCT", "Hand") if variant != "non-hand" else
            ("43799004", "SCT", "Chest")))])
        ds.BurnedInAnnotation = "YES" if acquisition.burned_in_text else "NO"
    ds.SamplesPerPixel = 1
    photometric = "MONOCHROME1" if for_processing else acquisition.photometric
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    if not is_cr:
        ds.PixelIntensityRelationship = "LIN" if for_processing else "LOG"
        # +1: lower values = less X-ray intensity. Log images here store attenuation
        # (MONOCHROME2: bright bone), so higher values mean less intensity (-1).
        inverted = photometric == "MONOCHROME1"
        ds.PixelIntensityRelationshipSign = 1 if (for_processing or inverted) else -1
        ds.PresentationLUTShape = "INVERSE" if inverted else "IDENTITY"
        ds.LossyImageCompression = "00"
    if not for_processing:
        center, width = _window(pixels)
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = pixels.tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _window(pixels: np.ndarray) -> tuple[int, int]:
    low, high = np.percentile(pixels[::4, ::4], [1, 99])
    return int((low + high) / 2), max(int(high - low), 2)


def _patient_orientation(acquisition: Acquisition) -> list[str]:
    """Row and column directions of a PA hand: image right is the patient's left, down is
    towards the wrist (H) when fingers point up; rounded to the nearest 90 degrees."""
    turns = round((acquisition.rotation_deg + (180 if acquisition.fingers == "down" else 0))
                  / 90) % 4
    right, down = [("L", "H"), ("F", "L"), ("R", "F"), ("H", "R")][turns]
    return [right, down]


def write_dataset(ds: Dataset, path: str | Path, transfer_syntax: str = "explicit") -> None:
    """Save ``ds`` to ``path`` in one of ``TRANSFER_SYNTAXES`` (dcmtk ones need dcmtk)."""
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; choose from "
                         f"{', '.join(TRANSFER_SYNTAXES)}")
    uid, tool = TRANSFER_SYNTAXES[transfer_syntax]
    path = Path(path)
    if tool == "pydicom":
        if uid != ExplicitVRLittleEndian:
            ds = copy.deepcopy(ds)  # compress() changes the dataset in place
            ds.compress(uid)
        ds.save_as(path, enforce_file_format=True)
        return
    program, option = tool.split()
    if shutil.which(program) is None:
        raise RuntimeError(f"{transfer_syntax} needs dcmtk's {program}, which is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.dcm"
        ds.save_as(plain, enforce_file_format=True)
        result = subprocess.run([program, option, str(plain), str(path)],
                                capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{program} failed: {result.stderr.strip()[:300]}")
