"""Phantom sets on disk: DICOM files plus ``truth.json`` (and optional PNG previews).

``truth.json`` maps each file name to a record with:

- ``pixel_spacing_mm`` (object plane: ImagerPixelSpacing / magnification), ``rows``,
  ``cols``, ``laterality`` ("L"/"R"), ``fingers`` ("up"/"down"), ``rotation_deg`` (extra
  counter-clockwise turn of the hand), ``blur_sigma_mm``, ``edge_enhancement``
  {sigma_mm, gain}, ``variant``, ``anatomy_id``, ``osteoporotic``, ``modality``,
  ``photometric``, ``transfer_syntax``, ``patient_sex``, ``patient_age_years`` and the full
  ``acquisition`` parameters;
- ``bones``: for MC2-MC5, ``outer_radius_mm``, ``inner_radius_mm``,
  ``cortical_thickness_mm``, ``width_mm``, ``medullary_width_mm``, ``length_mm``,
  ``midshaft_center_rc``, ``proximal_rc``, ``distal_rc`` (image [row, col], integer =
  pixel centre), ``axis_angle_deg`` (proximal -> distal, counter-clockwise from +column
  with rows pointing down; fingers up = 90) and ``shaft_fraction`` (the part of the length
  where the radii are constant).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset

from dxr_node.phantom.acquisition import Acquisition, repositioned
from dxr_node.phantom.anatomy import VARIANTS, HandAnatomy
from dxr_node.phantom.dicom import TRANSFER_SYNTAXES, Patient, to_dataset, write_dataset
from dxr_node.phantom.render import MAX_VALUE, render


def image_specs(seed: int, index: int, variant: str = "adult"
                ) -> tuple[HandAnatomy, Acquisition, Patient]:
    """Anatomy, acquisition and patient of image ``index`` in the set of ``seed``.

    Each comes from its own seeded stream, so changing how images are acquired never
    changes the anatomy drawn for the same seed and index.
    """
    anatomy = HandAnatomy.random(np.random.default_rng([seed, index, 0]), variant)
    acquisition = Acquisition.random(np.random.default_rng([seed, index, 1]), variant)
    patient = Patient.random(np.random.default_rng([seed, index, 2]), variant)
    return anatomy, acquisition, patient


def phantom_dataset(seed: int = 0, index: int = 0, variant: str = "adult",
                    **acquisition_changes: Any) -> Dataset:
    """One rendered phantom as an uncompressed DICOM dataset (e.g. for a quick test).

    ``acquisition_changes`` override fields of the seeded ``Acquisition``
    (``pixel_spacing_mm=0.1``, ``photometric="MONOCHROME1"``, ...).
    """
    anatomy, acquisition, patient = image_specs(seed, index, variant)
    acquisition = replace(acquisition, **acquisition_changes)
    pixels, _ = render(anatomy, acquisition)
    return to_dataset(pixels, acquisition, patient, f"{seed}-{index}-{variant}-single",
                      variant=variant)


def _mixed(acquisition: Acquisition, index: int) -> Acquisition:
    """Force the categorical mix so even a small set covers both hands, both finger
    directions, DX and CR, MONOCHROME1 and 2, with and without edge enhancement."""
    enhance = index % 3 != 1
    return replace(
        acquisition,
        laterality="LR"[index % 2],
        fingers="down" if index % 4 == 3 else "up",
        modality="CR" if index % 3 == 2 else "DX",
        photometric="MONOCHROME1" if (index // 2) % 2 else "MONOCHROME2",
        edge_sigma_mm=(acquisition.edge_sigma_mm or 2.5) if enhance else 0.0,
        edge_gain=(acquisition.edge_gain or 0.5) if enhance else 0.0,
    )


def write_phantom_set(outdir: str | Path, n: int = 10, seed: int = 0, *,
                      variant: str = "adult", transfer_syntax: str = "explicit",
                      for_processing: bool = False, previews: bool = False,
                      same_anatomy: bool = False) -> dict[str, dict[str, Any]]:
    """Render ``n`` phantoms into ``outdir`` with ``truth.json``; returns the truth mapping.

    ``same_anatomy`` images one hand (that of index 0) ``n`` times on the same device,
    repositioned and re-exposed each time, as in a short-term precision study.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if n < 1:
        raise ValueError("n must be at least 1")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; choose from "
                         f"{', '.join(TRANSFER_SYNTAXES)}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    truth: dict[str, dict[str, Any]] = {}
    first_anatomy, first_acquisition, first_patient = image_specs(seed, 0, variant)
    first_acquisition = _mixed(first_acquisition, 0)
    for index in range(n):
        anatomy, acquisition, patient = image_specs(seed, index, variant)
        acquisition = _mixed(acquisition, index)
        if same_anatomy and index > 0:
            anatomy, patient = first_anatomy, first_patient
            acquisition = repositioned(first_acquisition,
                                       np.random.default_rng([seed, index, 3]))
        if for_processing:
            acquisition = replace(acquisition, modality="DX", for_processing=True,
                                  edge_gain=0.0, burned_in_text=False)
        pixels, record = render(anatomy, acquisition)
        name = f"phantom_{index:04d}.dcm"
        ds = to_dataset(pixels, acquisition, patient, f"{seed}-{index}-{variant}",
                        variant=variant)
        write_dataset(ds, outdir / name, transfer_syntax)
        record.update(file=name, sop_instance_uid=str(ds.SOPInstanceUID),
                      modality=ds.Modality, photometric=ds.PhotometricInterpretation,
                      transfer_syntax=transfer_syntax, patient_sex=patient.sex,
                      patient_age_years=patient.age_years)
        truth[name] = record
        if previews:
            preview_dir = outdir / "previews"
            preview_dir.mkdir(exist_ok=True)
            cv2.imwrite(str(preview_dir / name.replace(".dcm", ".png")),
                        preview(pixels, ds.PhotometricInterpretation))
    (outdir / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def preview(pixels: np.ndarray, photometric: str, max_side: int = 1000) -> np.ndarray:
    """An 8-bit display version (bone bright), reduced to ``max_side`` pixels."""
    values = pixels.astype(np.float32)
    if photometric == "MONOCHROME1":
        values = MAX_VALUE - values
    low, high = np.percentile(values[::2, ::2], [0.5, 99.8])
    image = np.clip((values - low) / max(high - low, 1) * 255, 0, 255).astype(np.uint8)
    factor = max_side / max(image.shape)
    if factor < 1:
        image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return image
