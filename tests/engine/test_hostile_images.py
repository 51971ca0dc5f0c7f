"""Hostile image files: size limits checked before decoding, codec crashes contained
(issue 14)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, RLELossless, generate_uid

from dxr_node.engine.image import DecodeLimits, ImageLoadError, load_radiograph


def _rle_dx(path: Path, rows: int = 64, cols: int = 48) -> None:
    """A small RLE DX whose header is then edited to claim ``rows`` x ``cols``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, uid
    ds.Modality = "DX"
    ds.Rows, ds.Columns = 64, 48
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.1, 0.1]
    ds.PixelData = np.arange(64 * 48, dtype=np.uint16).tobytes()
    ds.compress(RLELossless)
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(path, enforce_file_format=True)


def test_rle_claiming_60000_squared_is_refused_from_the_header_in_bounded_memory(tmp_path):
    """The 2.9 MB file that took 7 GB: refused before decoding. Run under a 1.5 GB address
    space limit so that a regression fails quickly instead of exhausting the machine."""
    _rle_dx(tmp_path / "huge.dcm", 60000, 60000)
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
        from dxr_node.engine.image import ImageLoadError, load_radiograph
        try:
            load_radiograph({str(tmp_path / "huge.dcm")!r})
        except ImageLoadError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "image too large (60000 x 60000 = 3600.0 Mpixel; the limit is 100 Mpixel)" \
        in result.stdout


def test_limits_are_configurable_and_a_normal_image_passes(tmp_path):
    _rle_dx(tmp_path / "small.dcm")
    assert load_radiograph(tmp_path / "small.dcm").pixels.shape == (64, 48)
    with pytest.raises(ImageLoadError, match="image too large .* limit is 0.001 Mpixel"):
        load_radiograph(tmp_path / "small.dcm", limits=DecodeLimits(max_pixels=1000))
    _rle_dx(tmp_path / "claim.dcm", 1024, 1024)  # 2 MB decoded
    with pytest.raises(ImageLoadError, match="too large to decode .2 MB per frame; the limit "
                                             "is 1 MB"):
        load_radiograph(tmp_path / "claim.dcm", limits=DecodeLimits(max_decoded_mb=1))


def test_png_header_size_is_checked_before_opencv_decodes(tmp_path):
    cv2.imwrite(str(tmp_path / "wide.png"), np.zeros((40, 50), np.uint8))
    assert load_radiograph(tmp_path / "wide.png", 0.1).pixels.shape == (40, 50)
    with pytest.raises(ImageLoadError, match="image too large"):
        load_radiograph(tmp_path / "wide.png", 0.1, limits=DecodeLimits(max_pixels=1999))



@pytest.fixture(scope="module")
def crashing_jpeg_ls(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A good JPEG-LS phantom and two edits of its header on which GDCM aborts (SIGABRT):
    Rows x 4, and SamplesPerPixel 3."""
    if shutil.which("dcmcjpls") is None:
        pytest.skip("dcmtk dcmcjpls not installed")
    from dxr_node.phantom.generate import write_phantom_set

    folder = tmp_path_factory.mktemp("jpeg-ls")
    write_phantom_set(folder, n=1, seed=2)
    good = folder / "good.dcm"
    subprocess.run(["dcmcjpls", str(folder / "phantom_0000.dcm"), str(good)], check=True,
                   capture_output=True)
    tall, colour = pydicom.dcmread(good), pydicom.dcmread(good)
    tall.Rows = tall.Rows * 4
    tall.save_as(folder / "rows_x4.dcm")
    colour.SamplesPerPixel, colour.PhotometricInterpretation = 3, "RGB"
    colour.PlanarConfiguration = 0
    colour.save_as(folder / "samples_3.dcm")
    return good, [folder / "rows_x4.dcm", folder / "samples_3.dcm"]


def test_a_codec_abort_loses_one_file_and_the_batch_goes_on(crashing_jpeg_ls):
    good, crashing = crashing_jpeg_ls
    result = subprocess.run([sys.executable, "-m", "dxr_node.cli", "analyze", "--json",
                             *map(str, crashing), str(good)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr  # documented: 2 when a file is an error
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["source"] for r in records] == [*map(str, crashing), str(good)]
    for record in records[:2]:
        assert record["status"] == "error"
        assert "the decoder crashed, signal SIGABRT" in record["reasons"][0]
    assert records[2]["status"] == "ok"
    assert "Traceback" not in result.stderr


def test_a_codec_abort_fails_the_node_job_at_the_first_attempt(crashing_jpeg_ls, tmp_path):
    """run_job in a child process (a regression would abort the test runner itself)."""
    _, crashing = crashing_jpeg_ls
    script = textwrap.dedent(f"""
        from dxr_node.node.config import NodeConfig
        from dxr_node.node.store import InstanceInfo, Store
        from dxr_node.node.worker import run_job
        config = NodeConfig(data_dir={str(tmp_path / "data")!r})
        with Store(config.database_path) as store:
            store.add_instance(InstanceInfo("1.2.3", "1.2.840.10008.5.1.4.1.1.1.1",
                                            "1.2.840.10008.1.2.4.80", {str(crashing[0])!r}, 1))
            job = store.claim_job("test")
            print(run_job(config, store, job), job.attempts)
            print(store.job_state(job.id)["error"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    state, reason = result.stdout.splitlines()
    assert state == "failed 1"
    assert "decoder crashed, signal SIGABRT" in reason
