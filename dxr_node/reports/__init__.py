"""DICOM report objects of a DXR analysis: TID 1500 SR, secondary-capture overlay, GSPS and
Encapsulated PDF, all in the source image's study with deterministic UIDs.

Public surface: ``build_reports``, ``render_overlay``, ``write_objects``.
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom

from dxr_node.clinical.result import Interpretation
from dxr_node.engine.result import Analysis
from dxr_node.fileio import write_durably
from dxr_node.reports.overlay import render_overlay
from dxr_node.reports.review import ReplacedObject, SignOff

KINDS = ("SR", "SC", "GSPS", "PDF")
REQUIRED_SOURCE_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                              "SeriesInstanceUID", "Rows", "Columns")

__all__ = ["KINDS", "ReplacedObject", "SignOff", "build_reports", "render_overlay",
           "write_objects"]


def build_reports(source: pydicom.Dataset, analysis: Analysis,
                  interpretation: Interpretation | None, display: np.ndarray,
                  kinds: Collection[str] = KINDS,
                  signoff: SignOff | None = None,
                  replaces: Sequence[ReplacedObject] = ()) -> list[pydicom.Dataset]:
    """Build the requested report objects (in the order SR, SC, GSPS, PDF).

    `source` is the analysed image's header (PixelData not needed); `display` is its
    image as uint8, bone bright, in source pixel geometry (used by the SC overlay).
    `signoff` makes them the final, reader-verified (or rejected) versions. `replaces`:
    objects that may hold an earlier result of this image (a re-analysis): the SR names
    those of its own series as its predecessors. Instance UIDs hash the content
    (reports.uids): an identical re-run gives the same UIDs, a changed result new ones.
    """
    # Imported here so that `render_overlay` users (the console) skip highdicom and fpdf.
    from dxr_node.reports.gsps import build_gsps
    from dxr_node.reports.identity import DerivedIdentity
    from dxr_node.reports.pdf import build_encapsulated_pdf, render_pdf
    from dxr_node.reports.sc import build_sc
    from dxr_node.reports.sr import build_sr

    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown report kind(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(KINDS)}")
    missing = [k for k in REQUIRED_SOURCE_ATTRIBUTES if not source.get(k)]
    if missing:
        raise ValueError(f"source dataset lacks {', '.join(missing)}: cannot reference it")

    source = _normalised_source(source)
    objects: list[pydicom.Dataset] = []
    for kind in (k for k in KINDS if k in kinds):
        identity = DerivedIdentity.for_kind(kind, source, analysis, interpretation)
        if signoff is not None:
            identity = replace(identity, revision=signoff.revision)
        if kind == "SR":
            objects.append(build_sr(source, analysis, interpretation, identity, signoff,
                                    replaces))
        elif kind == "SC":
            overlay = render_overlay(display, analysis, interpretation, signoff)
            objects.append(build_sc(source, overlay, identity, signoff))
        elif kind == "GSPS":
            objects.append(build_gsps(source, analysis, interpretation, identity, signoff))
        else:
            pdf_bytes = render_pdf(source, analysis, interpretation, signoff)
            objects.append(build_encapsulated_pdf(source, pdf_bytes, identity))
    return objects


# Patient and General Study attributes of Type 2: a modality must send them, possibly
# empty, but some leave them out; highdicom (and the objects we write) need them present.
_TYPE2_SOURCE_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                            "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                            "AccessionNumber")


# Values a strict writer (highdicom) refuses but that real modalities send; the derived
# objects get the nearest legal value, never an invented one.
_DATE_TIME_PATTERNS = {
    "DA": re.compile(r"^\d{8}$"),
    "TM": re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$"),
    "AS": re.compile(r"^\d{3}[DWMY]$"),
}
_CHECKED_VALUES = {"StudyDate": "DA", "PatientBirthDate": "DA", "StudyTime": "TM",
                   "PatientAge": "AS"}
_CROSS_SECTIONAL = ("CT", "MR", "PT")
_MODALITY_BY_SOP_CLASS = {"1.2.840.10008.5.1.4.1.1.1": "CR",
                          "1.2.840.10008.5.1.4.1.1.1.1": "DX",
                          "1.2.840.10008.5.1.4.1.1.1.1.1": "DX"}


def _normalised_source(source: pydicom.Dataset) -> pydicom.Dataset:
    """A shallow copy of the source header that the report writers accept:

    - missing Type 2 patient/study attributes present, empty;
    - malformed dates, times and ages (e.g. markup in StudyDate), and a PatientSex
      other than M/F/O, empty (Type 2: "unknown");
    - a missing Modality, or a cross-sectional one (CT/MR/PT) on a CR/DX image, taken
      from the SOP class (DX/CR), else OT;
    - a single-valued PixelSpacing/ImagerPixelSpacing (VM 2) read as isotropic, as the
      engine reads it;
    - Window Center/Width together with a VOI LUT Sequence: the window is kept (the
      sequence is dropped), since highdicom copies only one of the two; a broken window
      (one without the other, unequal counts, width < 1) is dropped.
    """
    completed = pydicom.Dataset(source)
    completed.file_meta = getattr(source, "file_meta", pydicom.dataset.FileMetaDataset())
    for keyword in _TYPE2_SOURCE_ATTRIBUTES:
        if keyword not in completed:
            setattr(completed, keyword, "")
    for keyword, vr in _CHECKED_VALUES.items():
        value = str(completed.get(keyword, "") or "").strip()
        if value and not _legal(value, vr):
            del completed[keyword]
            setattr(completed, keyword, "")  # Type 2: present and empty
    if str(completed.get("PatientSex", "") or "").strip().upper() not in ("", "M", "F", "O"):
        completed.PatientSex = ""
    modality = str(completed.get("Modality", "") or "").strip()
    by_class = _MODALITY_BY_SOP_CLASS.get(str(completed.SOPClassUID))
    if not modality or (by_class and modality in _CROSS_SECTIONAL):
        # A CR/DX image calling itself CT would be described as a CT slice (which needs
        # slice geometry it has not got): its SOP class says what it is.
        completed.Modality = by_class or "OT"
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = completed.get(keyword)
        if value is not None and not isinstance(value, pydicom.multival.MultiValue) \
                and value != "":
            setattr(completed, keyword, [value, value])
    if not _usable_window(completed):
        for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
            if keyword in completed:
                delattr(completed, keyword)
    if "VOILUTSequence" in completed and ("WindowCenter" in completed
                                          or "WindowWidth" in completed):
        del completed.VOILUTSequence
    return completed


def _legal(value: str, vr: str) -> bool:
    if not _DATE_TIME_PATTERNS[vr].match(value):
        return False
    if vr == "DA":  # 20241399 has the shape of a date but is none
        try:
            datetime.datetime.strptime(value, "%Y%m%d")
        except ValueError:
            return False
    return True


def _usable_window(ds: pydicom.Dataset) -> bool:
    """Window Center/Width as the standard has them: both or neither, as many centres as
    widths, widths >= 1. A broken window is dropped (the viewer then chooses one)."""
    if "WindowCenter" not in ds and "WindowWidth" not in ds:
        return True
    try:
        centres = _as_numbers(ds.get("WindowCenter"))
        widths = _as_numbers(ds.get("WindowWidth"))
    except (TypeError, ValueError):
        return False
    return bool(widths) and len(centres) == len(widths) and all(w >= 1 for w in widths)


def _as_numbers(value: object) -> list[float]:
    if value is None or value == "":
        return []
    items = value if isinstance(value, pydicom.multival.MultiValue | list) else [value]
    numbers = [float(str(v)) for v in items]  # DS/IS strings, numbers or MultiValue items
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError("not finite")
    return numbers


def write_objects(datasets: Iterable[pydicom.Dataset], outdir: Path) -> list[Path]:
    """Write each dataset as a DICOM file ``<SOPInstanceUID>.dcm``; returns the paths.

    Files appear atomically and durably (temporary name, fsync, rename), so a watcher never
    reads a half-written object, a crash never leaves one, and rewriting the same result
    replaces the file.
    """
    outdir = Path(outdir)
    paths = []
    for dataset in datasets:
        path = outdir / f"{dataset.SOPInstanceUID}.dcm"
        partial = outdir / f".{dataset.SOPInstanceUID}.{os.getpid()}.part"
        write_durably(path, partial, functools.partial(_save, dataset))
        paths.append(path)
    return paths


def _save(dataset: pydicom.Dataset, handle: BinaryIO) -> None:
    dataset.save_as(handle, enforce_file_format=True)
