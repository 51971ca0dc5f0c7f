"""A phantom whose MC4 the engine cannot measure: real engine output of a reduced service.

Shared by the clinical and report tests, so that they document what the engine really
returns (status "rejected", MC2 and MC3 listed, no whole-hand index) rather than an
Analysis built by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom

from dxr_node.engine.analyze import analyze_path
from dxr_node.engine.image import Radiograph
from dxr_node.engine.result import Analysis
from dxr_node.phantom.generate import write_phantom_set

BAR_HALF_LENGTH_MM = 12.0  # along the bone: covers the whole measured mid-shaft band


def partial_hand(outdir: Path, seed: int = 3) -> tuple[Radiograph, Analysis]:
    """Write a left-hand phantom with a saturated bar painted across MC4's mid-shaft (as a
    metal splint would appear) and analyse it; returns the loaded image and the result."""
    truth = write_phantom_set(outdir, n=1, seed=seed)["phantom_0000.dcm"]
    path = outdir / "phantom_0000.dcm"
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.copy()
    bone, spacing = truth["bones"]["MC4"], truth["pixel_spacing_mm"]
    r0, c0 = bone["midshaft_center_rc"]
    theta = math.radians(bone["axis_angle_deg"])
    rows, cols = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
    along = (rows - r0) * -math.sin(theta) + (cols - c0) * math.cos(theta)
    across = (rows - r0) * math.cos(theta) + (cols - c0) * math.sin(theta)
    bar = (np.abs(along) < BAR_HALF_LENGTH_MM / spacing) & (
        np.abs(across) < bone["width_mm"] / spacing)
    bright = ds.PhotometricInterpretation == "MONOCHROME2"
    pixels[bar] = pixels.max() if bright else pixels.min()
    ds.PixelData = pixels.tobytes()
    barred = outdir / "mc4_barred.dcm"
    ds.save_as(barred)
    (outdir / "truth.json").write_text(json.dumps({barred.name: truth}))
    analysis, radiograph = analyze_path(barred)
    assert radiograph is not None, analysis.reasons
    return radiograph, analysis
