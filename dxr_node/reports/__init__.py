"""DICOM report objects of a DXR analysis: TID 1500 SR, secondary-capture overlay, GSPS and
Encapsulated PDF, all in the source image's study with deterministic UIDs.

Public surface: ``build_reports``, ``render_overlay``, ``write_objects``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Iterable
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom

from dxr_node.clinical.result import Interpretation
from dxr_node.engine.result import Analysis
from dxr_node.fileio import write_durably
from dxr_node.reports.overlay import render_overlay
from dxr_node.reports.review import SignOff

KINDS = ("SR", "SC", "GSPS", "PDF")
REQUIRED_SOURCE_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                              "SeriesInstanceUID", "Rows", "Columns")

__all__ = ["KINDS", "SignOff", "build_reports", "render_overlay", "write_objects"]


def build_reports(source: pydicom.Dataset, analysis: Analysis,
                  interpretation: Interpretation | None, display: np.ndarray,
                  kinds: Collection[str] = KINDS,
                  signoff: SignOff | None = None) -> list[pydicom.Dataset]:
    """Build the requested report objects (in the order SR, SC, GSPS, PDF).

    `source` is the analysed image's header (PixelData not needed); `display` is its
    image as uint8, bone bright, in source pixel geometry (used by the SC overlay).
    `signoff` makes them the final, reader-verified (or rejected) versions.
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

    source = _with_type2_attributes(source)
    objects: list[pydicom.Dataset] = []
    for kind in (k for k in KINDS if k in kinds):
        identity = DerivedIdentity.for_kind(kind, source, analysis, interpretation)
        if signoff is not None:
            identity = replace(identity, revision=signoff.revision)
        if kind == "SR":
            objects.append(build_sr(source, analysis, interpretation, identity, signoff))
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


def _with_type2_attributes(source: pydicom.Dataset) -> pydicom.Dataset:
    """A shallow copy of the source header with missing Type 2 attributes present, empty."""
    missing = [k for k in _TYPE2_SOURCE_ATTRIBUTES if k not in source]
    if not missing:
        return source
    completed = pydicom.Dataset(source)
    completed.file_meta = getattr(source, "file_meta", pydicom.dataset.FileMetaDataset())
    for keyword in missing:
        setattr(completed, keyword, "")
    return completed


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
