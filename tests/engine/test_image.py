"""The loader on real files: phantoms in every transfer syntax, rasters, broken inputs."""

from __future__ import annotations

import copy
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dxr_node.engine.image import (
    ImageLoadError,
    load_radiograph,
    radiograph_from_dataset,
    to_display_uint8,
)
from dxr_node.phantom.acquisition import Acquisition
from dxr_node.phantom.anatomy import HandAnatomy
from dxr_node.phantom.dicom import Patient, to_dataset, write_dataset
from dxr_node.phantom.render import MAX_VALUE, render

# A small, fast phantom: coarse pixels.
SMALL = Acquisition(pixel_spacing_mm=0.175, field_mm=(240.0, 190.0), marker=False,
                    noise_seed=3, photometric="MONOCHROME2")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """(folder, stored pixels, truth, dataset) of one uncompressed MONOCHROME2 DX phantom."""
    folder = tmp_path_factory.mktemp("loader")
    anatomy = HandAnatomy.random(np.random.default_rng(8))
    pixels, truth = render(anatomy, SMALL)
    patient = Patient.random(np.random.default_rng(8))
    ds = to_dataset(pixels, SMALL, patient, "loader-test")
    write_dataset(ds, folder / "plain.dcm")
    return folder, pixels, truth, ds


def _bone_and_background(radiograph, truth) -> tuple[float, float]:
    row, col = np.round(truth["bones"]["MC3"]["midshaft_center_rc"]).astype(int)
    left, right = truth["bones"]["MC2"]["midshaft_center_rc"], truth["bones"]["MC3"][
        "midshaft_center_rc"]
    between = np.round((np.array(left) + np.array(right)) / 2).astype(int)
    bone = float(np.median(radiograph.pixels[row - 2:row + 3, col - 12:col + 13].max(axis=1)))
    soft = float(radiograph.pixels[between[0], between[1]])
    return bone, soft


def test_uncompressed_dx_keeps_values_spacing_and_laterality(phantom):
    folder, pixels, truth, _ = phantom
    radiograph = load_radiograph(folder / "plain.dcm")
    assert radiograph.pixels.dtype == np.float32
    np.testing.assert_array_equal(radiograph.pixels, pixels.astype(np.float32))
    assert radiograph.pixel_spacing_mm == pytest.approx(0.175)
    assert radiograph.pixel_spacing_source == "ImagerPixelSpacing"
    assert radiograph.spacing_problem is None
    assert radiograph.laterality_tag == truth["laterality"]
    assert radiograph.source == str(folder / "plain.dcm")
    assert "PixelData" not in radiograph.dataset
    assert radiograph.dataset.PatientID
    bone, soft = _bone_and_background(radiograph, truth)
    assert bone > soft + 200


def test_monochrome1_is_inverted_to_bone_bright(phantom, tmp_path):
    folder, pixels, truth, ds = phantom
    inverted = copy.deepcopy(ds)
    inverted.PhotometricInterpretation = "MONOCHROME1"
    inverted.PixelData = (MAX_VALUE - pixels).astype(np.uint16).tobytes()
    write_dataset(inverted, tmp_path / "mono1.dcm")
    radiograph = load_radiograph(tmp_path / "mono1.dcm")
    np.testing.assert_array_equal(radiograph.pixels, pixels.astype(np.float32))


def test_modality_lut_is_applied(phantom, tmp_path):
    _, pixels, _, ds = phantom
    rescaled = copy.deepcopy(ds)
    rescaled.RescaleSlope, rescaled.RescaleIntercept = 2, -100
    write_dataset(rescaled, tmp_path / "rescaled.dcm")
    radiograph = load_radiograph(tmp_path / "rescaled.dcm")
    np.testing.assert_allclose(radiograph.pixels, pixels * 2.0 - 100)


def test_for_processing_linear_data_is_log_transformed(tmp_path):
    anatomy = HandAnatomy.random(np.random.default_rng(8))
    acquisition = replace(SMALL, for_processing=True, noise=False)
    raw, truth = render(anatomy, acquisition)
    ds = to_dataset(raw, acquisition, Patient.random(np.random.default_rng(1)), "lin")
    assert ds.PixelIntensityRelationship == "LIN"
    write_dataset(ds, tmp_path / "raw.dcm")
    radiograph = load_radiograph(tmp_path / "raw.dcm")
    np.testing.assert_allclose(radiograph.pixels, -np.log(np.maximum(raw, 1.0)), rtol=1e-5)
    bone, soft = _bone_and_background(radiograph, truth)
    assert bone > soft + 0.3  # log attenuation units


LOSSLESS_PYDICOM = ["rle", "j2k-lossless"]
LOSSLESS_DCMTK = [("jpeg-lossless-sv1", "dcmcjpeg"), ("jpeg-lossless", "dcmcjpeg"),
                  ("jpeg-ls", "dcmcjpls")]


@pytest.mark.parametrize("syntax", LOSSLESS_PYDICOM)
def test_pydicom_encoded_lossless_syntaxes_decode_exactly(phantom, tmp_path, syntax):
    _, pixels, _, ds = phantom
    write_dataset(ds, tmp_path / "image.dcm", syntax)
    assert pydicom.dcmread(tmp_path / "image.dcm").file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(load_radiograph(tmp_path / "image.dcm").pixels, pixels)


@pytest.mark.parametrize(("syntax", "tool"), LOSSLESS_DCMTK)
def test_dcmtk_encoded_lossless_syntaxes_decode_exactly(phantom, tmp_path, syntax, tool):
    if shutil.which(tool) is None:
        pytest.skip(f"dcmtk {tool} not installed")
    _, pixels, _, ds = phantom
    write_dataset(ds, tmp_path / "image.dcm", syntax)
    radiograph = load_radiograph(tmp_path / "image.dcm")
    np.testing.assert_array_equal(radiograph.pixels, pixels)
    assert radiograph.pixel_spacing_mm == pytest.approx(0.175)


def test_dcmcrle_output_decodes_exactly(phantom, tmp_path):
    if shutil.which("dcmcrle") is None:
        pytest.skip("dcmtk dcmcrle not installed")
    folder, pixels, _, _ = phantom
    subprocess.run(["dcmcrle", str(folder / "plain.dcm"), str(tmp_path / "rle.dcm")],
                   check=True, capture_output=True)
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == (
        "1.2.840.10008.1.2.5")
    np.testing.assert_array_equal(load_radiograph(tmp_path / "rle.dcm").pixels, pixels)


@pytest.mark.parametrize("syntax", ["jpeg-extended", "jpeg-baseline"])
def test_lossy_jpeg_decodes_close_to_original(phantom, tmp_path, syntax):
    if shutil.which("dcmcjpeg") is None:
        pytest.skip("dcmtk dcmcjpeg not installed")
    _, pixels, truth, ds = phantom
    write_dataset(ds, tmp_path / "image.dcm", syntax)
    radiograph = load_radiograph(tmp_path / "image.dcm")
    assert radiograph.pixels.shape == pixels.shape
    # Baseline JPEG holds 8 bits: compare after normalising both images.
    a, b = radiograph.pixels.ravel(), pixels.astype(np.float32).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.99
    bone, soft = _bone_and_background(radiograph, truth)
    assert bone > soft


def test_multiframe_returns_first_frame(phantom, tmp_path):
    _, pixels, _, ds = phantom
    frames = copy.deepcopy(ds)
    frames.NumberOfFrames = 2
    frames.PixelData = pixels.tobytes() + (MAX_VALUE - pixels).tobytes()
    radiograph = radiograph_from_dataset(frames, "frames.dcm")
    np.testing.assert_array_equal(radiograph.pixels, pixels)


@pytest.mark.parametrize(("changes", "spacing", "source", "problem"), [
    ({"PixelSpacing": [0.16, 0.16]}, 0.16, "PixelSpacing", None),
    ({"EstimatedRadiographicMagnificationFactor": 1.25}, 0.14,
     "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor", None),
    ({"ImagerPixelSpacing": [0.15, 0.18]}, None, None, "anisotropic"),
    ({"ImagerPixelSpacing": [5.0, 5.0]}, None, None, "implausible"),
    ({"ImagerPixelSpacing": [0.01, 0.01]}, None, None, "implausible"),
    ({"ImagerPixelSpacing": None}, None, None, "no pixel spacing"),
    ({"PixelSpacing": [0, 0]}, 0.175, "ImagerPixelSpacing", None),  # unusable: next one
    ({"PixelSpacing": [0, 0], "ImagerPixelSpacing": None}, None, None, "implausible"),
    ({"PixelSpacing": [0.1, 0.1], "EstimatedRadiographicMagnificationFactor": 1.25}, 0.1,
     "PixelSpacing", None),
])
def test_spacing_precedence_and_problems(phantom, changes, spacing, source, problem):
    _, _, _, ds = phantom
    changed = copy.deepcopy(ds)
    for keyword, value in changes.items():
        if value is None:
            delattr(changed, keyword)
        else:
            setattr(changed, keyword, value)
    radiograph = radiograph_from_dataset(changed, "x.dcm")
    assert radiograph.pixel_spacing_mm == (pytest.approx(spacing) if spacing else None)
    assert radiograph.pixel_spacing_source == source
    if problem:
        assert problem in radiograph.spacing_problem
    else:
        assert radiograph.spacing_problem is None


def test_command_line_spacing_never_overrides_a_header_spacing(phantom, tmp_path):
    folder = phantom[0]
    radiograph = load_radiograph(folder / "plain.dcm", pixel_spacing_mm=0.1)
    assert radiograph.pixel_spacing_source != "command line"
    assert radiograph.pixel_spacing_mm != pytest.approx(0.1)
    assert "--pixel-spacing 0.1 ignored" in radiograph.spacing_problem
    # Without a header spacing the command line's is used, if plausible.
    ds = pydicom.dcmread(folder / "plain.dcm")
    for keyword in ("PixelSpacing", "ImagerPixelSpacing",
                    "EstimatedRadiographicMagnificationFactor"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(tmp_path / "nospacing.dcm")
    radiograph = load_radiograph(tmp_path / "nospacing.dcm", pixel_spacing_mm=0.1)
    assert (radiograph.pixel_spacing_mm, radiograph.pixel_spacing_source) == (0.1, "command line")
    implausible = load_radiograph(tmp_path / "nospacing.dcm", pixel_spacing_mm=3.0)
    assert implausible.pixel_spacing_mm is None


def test_cr_laterality_comes_from_series_laterality(phantom, tmp_path):
    anatomy = HandAnatomy.random(np.random.default_rng(8))
    acquisition = replace(SMALL, modality="CR", laterality="L")
    pixels, _ = render(anatomy, acquisition)
    ds = to_dataset(pixels, acquisition, Patient.random(np.random.default_rng(2)), "cr")
    write_dataset(ds, tmp_path / "cr.dcm")
    assert load_radiograph(tmp_path / "cr.dcm").laterality_tag == "L"


@pytest.mark.parametrize(("depth", "channels", "suffix"), [
    (np.uint8, 1, ".png"), (np.uint16, 1, ".png"), (np.uint8, 3, ".png"),
    (np.uint8, 3, ".jpg"), (np.uint16, 1, ".tif"), (np.uint8, 1, ".tiff"),
])
def test_raster_images(phantom, tmp_path, depth, channels, suffix):
    _, pixels, _, _ = phantom
    image = (pixels >> 4).astype(np.uint8) if depth == np.uint8 else pixels * 16
    if channels == 3:
        image = np.dstack([image] * 3)
    path = tmp_path / f"image{suffix}"
    assert cv2.imwrite(str(path), image)
    radiograph = load_radiograph(path)
    assert radiograph.pixels.shape == pixels.shape and radiograph.pixels.dtype == np.float32
    assert radiograph.pixel_spacing_mm is None and radiograph.spacing_problem
    assert radiograph.dataset is None
    expected = image[..., 0] if channels == 3 else image
    tolerance = 3 if suffix == ".jpg" else 0
    assert np.abs(radiograph.pixels - expected).mean() <= tolerance
    given = load_radiograph(path, pixel_spacing_mm=0.12)
    assert (given.pixel_spacing_mm, given.pixel_spacing_source) == (0.12, "command line")


def test_colour_jpeg_reads_as_its_stored_luma(phantom, tmp_path):
    """A film exported as colour JPEG with a burned-in coloured mark (the scaph films' box):
    the grey read is the JPEG's luma plane, as any grey decoder gives it, so the film and its
    grey export are the same image to the engine (a rebuilt luma moved the mark's pixels by
    up to 24 grey levels, and an MC3 band with them)."""
    _, pixels, _, _ = phantom
    image = np.dstack([(pixels >> 4).astype(np.uint8)] * 3)
    cv2.rectangle(image, (40, 40), (200, 160), (0, 40, 255), 3)  # a red box
    path = tmp_path / "marked.jpg"
    assert cv2.imwrite(str(path), image)
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(load_radiograph(path).pixels, grey.astype(np.float32))
    export = tmp_path / "grey.png"
    assert cv2.imwrite(str(export), grey)
    assert np.array_equal(load_radiograph(path).pixels, load_radiograph(export).pixels)


def _broken_inputs(folder: Path, tmp_path: Path, ds) -> dict[str, Path]:
    plain = (folder / "plain.dcm").read_bytes()
    files = {
        "empty": b"",
        "text": b"this is not an image\n" * 20,
        "truncated": plain[: len(plain) // 2],
        "fake.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        "header-only": plain[:400],
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(content)
    no_pixels = copy.deepcopy(ds)
    del no_pixels.PixelData
    paths["no-pixels"] = tmp_path / "no-pixels.dcm"
    no_pixels.save_as(paths["no-pixels"], enforce_file_format=True)
    bad_depth = copy.deepcopy(ds)
    bad_depth.BitsAllocated = 12
    paths["bad-depth"] = tmp_path / "bad-depth.dcm"
    bad_depth.save_as(paths["bad-depth"], enforce_file_format=True)
    unknown = copy.deepcopy(ds)
    unknown.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    paths["unknown-syntax"] = tmp_path / "unknown-syntax.dcm"
    unknown.save_as(paths["unknown-syntax"], implicit_vr=False, little_endian=True)
    paths["missing"] = tmp_path / "does-not-exist.dcm"
    paths["directory"] = tmp_path
    return paths


def test_broken_inputs_raise_one_clear_error(phantom, tmp_path):
    folder, _, _, ds = phantom
    expected = {"empty": "empty file", "text": "not a DICOM", "truncated": "truncated",
                "fake.png": "not a readable", "header-only": "", "no-pixels": "no pixel data",
                "bad-depth": "bit depth", "unknown-syntax": "transfer syntax",
                "missing": "no such file", "directory": "directory"}
    for name, path in _broken_inputs(folder, tmp_path / "..", ds).items():
        with pytest.raises(ImageLoadError) as caught:
            load_radiograph(path)
        message = str(caught.value)
        assert "\n" not in message and expected[name] in message, (name, message)


def test_explicit_little_endian_is_the_default_syntax(phantom):
    folder = phantom[0]
    assert pydicom.dcmread(folder / "plain.dcm").file_meta.TransferSyntaxUID == (
        ExplicitVRLittleEndian)


def test_display_window_is_robust():
    values = np.linspace(0, 1000, 10000, dtype=np.float32).reshape(100, 100)
    values[0, 0] = 1e9  # an outlier does not squash the window
    display = to_display_uint8(values)
    assert display.dtype == np.uint8 and display.shape == values.shape
    assert display[50, 50] in range(120, 136)
    assert display.max() == 255 and display.min() == 0
    assert not to_display_uint8(np.full((4, 4), 7.0)).any()
    assert to_display_uint8(np.full((3, 3), np.nan)).shape == (3, 3)


def test_dicom_without_preamble_or_file_meta_loads(phantom, tmp_path):
    _, pixels, _, ds = phantom
    bare = copy.deepcopy(ds)
    del bare.file_meta
    path = tmp_path / "bare"
    bare.save_as(path, implicit_vr=True, little_endian=True)  # no preamble, no "DICM"
    assert path.read_bytes()[128:132] != b"DICM"
    radiograph = load_radiograph(path)
    np.testing.assert_array_equal(radiograph.pixels, pixels)
    assert radiograph.pixel_spacing_mm == pytest.approx(0.175)


def test_colour_secondary_capture_becomes_grey(phantom):
    _, pixels, _, ds = phantom
    colour = copy.deepcopy(ds)
    small = (pixels[::4, ::4] >> 4).astype(np.uint8)
    colour.Rows, colour.Columns = small.shape
    colour.SamplesPerPixel, colour.PhotometricInterpretation = 3, "RGB"
    colour.PlanarConfiguration = 0
    colour.BitsAllocated, colour.BitsStored, colour.HighBit = 8, 8, 7
    colour.PixelData = np.dstack([small] * 3).tobytes()
    radiograph = radiograph_from_dataset(colour, "colour.dcm")
    np.testing.assert_allclose(radiograph.pixels, small.astype(np.float32))


def test_unused_high_bits_are_ignored(phantom):
    _, pixels, _, ds = phantom
    dirty = copy.deepcopy(ds)  # BitsStored 12 of 16: garbage above bit 11 (old overlays)
    dirty.PixelData = (pixels | 0xA000).astype(np.uint16).tobytes()
    np.testing.assert_array_equal(radiograph_from_dataset(dirty, "dirty.dcm").pixels, pixels)


def test_signed_pixels_with_rescale(phantom):
    _, pixels, _, ds = phantom
    signed = copy.deepcopy(ds)
    signed.PixelRepresentation = 1
    signed.BitsStored, signed.HighBit = 16, 15
    signed.RescaleIntercept = 2048
    signed.PixelData = (pixels.astype(np.int16) - 2048).tobytes()
    np.testing.assert_array_equal(radiograph_from_dataset(signed, "signed.dcm").pixels, pixels)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the damaged values
def test_damaged_files_never_raise_anything_but_image_load_error(phantom, tmp_path):
    """Seeded corruption of a small DICOM file: truncations and flipped header bytes."""
    _, pixels, _, ds = phantom
    small = copy.deepcopy(ds)
    small.Rows, small.Columns = 32, 48
    small.PixelData = pixels[:32, :48].copy().tobytes()
    write_dataset(small, tmp_path / "small.dcm")
    original = (tmp_path / "small.dcm").read_bytes()
    pixel_start = original.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    rng = np.random.default_rng(0)
    loaded = failed = 0
    for trial in range(120):
        data = bytearray(original)
        if trial % 3 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for position in rng.integers(128, pixel_start, size=int(rng.integers(1, 6))):
                data[position] = int(rng.integers(0, 256))
        path = tmp_path / f"damaged_{trial}.dcm"
        path.write_bytes(bytes(data))
        try:
            radiograph = load_radiograph(path)
        except ImageLoadError as error:
            assert "\n" not in str(error)
            failed += 1
        else:
            assert radiograph.pixels.dtype == np.float32 and radiograph.pixels.ndim == 2
            loaded += 1
    assert failed > 10 and loaded > 10  # both outcomes were exercised


@pytest.mark.slow
def test_phantom_set_loads_with_true_spacing_laterality_and_bright_bone(tmp_path):
    from dxr_node.phantom.generate import write_phantom_set

    truth = write_phantom_set(tmp_path, n=4, seed=21)
    for name, record in truth.items():
        radiograph = load_radiograph(tmp_path / name)
        assert radiograph.pixel_spacing_mm == pytest.approx(record["pixel_spacing_mm"], rel=1e-6)
        assert radiograph.laterality_tag == record["laterality"]
        bone, soft = _bone_and_background(radiograph, record)
        assert bone > soft + 150, (name, record["photometric"])
