"""Bad input never crashes the engine: a clear "rejected" or "error", never an exception."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dxr_node.engine.analyze import analyze, analyze_path
from dxr_node.engine.image import Radiograph


def radiograph(pixels: np.ndarray, spacing: float | None = 0.1) -> Radiograph:
    return Radiograph(pixels=pixels.astype(np.float32), pixel_spacing_mm=spacing,
                      pixel_spacing_source="test" if spacing else None,
                      spacing_problem=None if spacing else "no pixel spacing",
                      laterality_tag=None, source="synthetic", dataset=None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(np.float32, st.tuples(st.integers(2, 160), st.integers(2, 160)),
              elements=st.floats(-1e4, 1e4, width=32)),
       st.sampled_from([None, 0.1, 0.3]))
def test_arbitrary_pixels_are_rejected_cleanly(pixels, spacing):
    result = analyze(radiograph(pixels, spacing))
    assert result.status == "rejected" and result.reasons
    assert result.dxr_bmd_g_cm2 is None


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_textures_at_radiograph_size(seed):
    rng = np.random.default_rng(seed)
    pixels = rng.normal(1000, 200, (700, 600))
    pixels[rng.integers(0, 700, 40), :] += 3000  # streaks, like plate edges or text
    result = analyze(radiograph(pixels))
    assert result.status == "rejected" and result.reasons


def _phantom_file(phantom_set) -> tuple[pydicom.Dataset, str]:
    folder, truth = phantom_set
    name = next(iter(truth))
    return pydicom.dcmread(folder / name), name


def test_truncated_pixel_data_is_an_error(tmp_path, phantom_set):
    ds, _ = _phantom_file(phantom_set)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    path = tmp_path / "truncated.dcm"
    ds.save_as(path)
    result, _ = analyze_path(path)
    assert result.status == "error" and result.reasons


def test_truncated_file_is_an_error(tmp_path, phantom_set):
    folder, truth = phantom_set
    data = (folder / next(iter(truth))).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) // 2])
    result, _ = analyze_path(path)
    assert result.status in {"error", "rejected"} and result.reasons


def test_wrong_bit_depth_is_an_error(tmp_path, phantom_set):
    ds, _ = _phantom_file(phantom_set)
    ds.BitsAllocated = 32  # pixel data no longer matches the declared size
    path = tmp_path / "bits.dcm"
    ds.save_as(path)
    result, _ = analyze_path(path)
    assert result.status == "error" and result.reasons


def test_missing_spacing_gives_ratios_only(tmp_path, phantom_set):
    ds, _ = _phantom_file(phantom_set)
    for keyword in ("ImagerPixelSpacing", "PixelSpacing",
                    "EstimatedRadiographicMagnificationFactor"):
        if keyword in ds:
            delattr(ds, keyword)
    path = tmp_path / "nospacing.dcm"
    ds.save_as(path)
    result, _ = analyze_path(path)
    assert result.pixel_spacing_mm is None and result.dxr_bmd_g_cm2 is None
    assert any("spacing" in r for r in result.reasons)
    assert all(b.width_mm is None for b in result.bones.values())


def test_coarse_resolution_is_rejected(tmp_path, phantom_set):
    ds, _ = _phantom_file(phantom_set)
    ds.ImagerPixelSpacing = [0.3, 0.3]
    if "PixelSpacing" in ds:
        del ds.PixelSpacing
    path = tmp_path / "coarse.dcm"
    ds.save_as(path)
    result, _ = analyze_path(path)
    assert result.status == "rejected"
    assert any("too coarse" in r for r in result.reasons)


@pytest.mark.parametrize("variant", ["non-hand", "toddler"])
def test_non_hand_and_toddler_are_rejected(tmp_path, variant):
    from dxr_node.phantom.generate import write_phantom_set

    truth = write_phantom_set(tmp_path, n=1, seed=7, variant=variant)
    result, _ = analyze_path(tmp_path / next(iter(truth)))
    assert result.status == "rejected" and result.reasons
    assert not result.bones or result.dxr_bmd_g_cm2 is None


def test_spacing_implausible_for_the_hand_gives_ratios_only(tmp_path, phantom_set):
    """An export analysed with a wrong --pixel-spacing: ratios only, and the reason why."""
    import cv2

    from dxr_node.engine.image import load_radiograph, to_display_uint8

    folder, truth = phantom_set
    png = tmp_path / "export.png"
    cv2.imwrite(str(png), to_display_uint8(load_radiograph(folder / next(iter(truth))).pixels))
    result, _ = analyze_path(png, pixel_spacing_mm=0.03)  # an 8 mm bone would read ~2 mm
    assert any("implausible for this hand" in r for r in result.reasons), result.reasons
    assert result.pixel_spacing_mm is None and result.dxr_bmd_g_cm2 is None
    assert result.bones and all(b.width_mm is None and 0.2 < b.mci < 0.85
                                for b in result.bones.values())
