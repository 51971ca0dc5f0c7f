"""Loading radiographs: DICOM (any transfer syntax pydicom can decode) or PNG/JPEG/TIFF.

Whatever the input, the result is a float32 image in which bone is BRIGHT (values grow
with attenuation), plus the pixel spacing the header supports and where it came from.
Every failure a user can cause (wrong file, truncated or undecodable pixel data) becomes an
``ImageLoadError`` with one clear line; no other exception type escapes ``load_radiograph``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID, ImplicitVRLittleEndian, JPEGExtended12Bit

MIN_SPACING_MM = 0.02
MAX_SPACING_MM = 1.0
ANISOTROPY_TOLERANCE = 0.01
_RASTER_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")
_RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float, Double Float
# Header-claimed size limits, checked before any decoder allocates: a real DX is at most
# ~75 Mpixel (43 x 43 cm at 0.05 mm); a 3 MB RLE file claiming 60000 x 60000 is not.
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MAX_DECODED_MB = 400  # one decoded frame (rows x columns x samples x bytes)
DECODE_TIMEOUT_S = 120.0  # a decoding child that has not finished by then is killed


class ImageLoadError(Exception):
    """The input cannot be used as a radiograph; the message is one user-facing line."""


@dataclass(frozen=True)
class Radiograph:
    pixels: np.ndarray  # float32 2-D, bone BRIGHT (higher = more attenuation)
    pixel_spacing_mm: float | None
    pixel_spacing_source: str | None  # "PixelSpacing", "ImagerPixelSpacing", "command line"..
    spacing_problem: str | None  # why there is no usable spacing, or an ignored --pixel-spacing
    laterality_tag: str | None  # "L"/"R" from ImageLaterality or Laterality
    source: str
    dataset: Dataset | None  # DICOM header without the pixel data (for reports)


@dataclass(frozen=True)
class DecodeLimits:
    """What a header may claim before decoding is refused."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decoded_mb: int = DEFAULT_MAX_DECODED_MB


DEFAULT_LIMITS = DecodeLimits()


def load_radiograph(path: str | Path, pixel_spacing_mm: float | None = None, *,
                    limits: DecodeLimits = DEFAULT_LIMITS) -> Radiograph:
    """Read a DICOM, PNG, JPEG or TIFF file; ``pixel_spacing_mm`` overrides the header."""
    path = Path(path)
    name = path.name or str(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except IsADirectoryError:
        raise ImageLoadError(f"{name}: is a directory, not an image file") from None
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: no such file") from None
    except OSError as error:
        raise ImageLoadError(f"{name}: cannot be read ({error.strerror or error})") from None
    if not head:
        raise ImageLoadError(f"{name}: empty file")
    is_dicom = head[128:132] == b"DICM"
    if not is_dicom and (head.startswith(_RASTER_MAGIC)
                         or path.suffix.lower() in _RASTER_SUFFIXES):
        return _load_raster(path, pixel_spacing_mm, limits)
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as error:  # pydicom raises many types on garbage input
        kind = "a damaged DICOM file" if is_dicom else "not a DICOM or image file"
        raise ImageLoadError(f"{name}: {kind} ({_short(error)})") from None
    if not is_dicom and not any(tag in ds for tag in _PIXEL_DATA_TAGS):
        raise ImageLoadError(f"{name}: not a DICOM or image file")
    return radiograph_from_dataset(ds, str(path), pixel_spacing_mm, limits=limits)


def radiograph_from_dataset(ds: Dataset, source: str, pixel_spacing_mm: float | None = None,
                            *, limits: DecodeLimits = DEFAULT_LIMITS) -> Radiograph:
    """Decode the first frame of ``ds`` and read its spacing and laterality."""
    name = Path(source).name or source
    try:
        return _radiograph(ds, source, name, pixel_spacing_mm, limits)
    except ImageLoadError:
        raise
    except Exception as error:  # malformed values surface lazily, in any pydicom call
        raise ImageLoadError(f"{name}: malformed DICOM data ({_short(error)})") from None


def _radiograph(ds: Dataset, source: str, name: str,
                pixel_spacing_mm: float | None, limits: DecodeLimits) -> Radiograph:
    pixels = _decode(ds, name, limits)
    spacing, spacing_source, problem = _spacing(ds, pixel_spacing_mm)
    laterality = None
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            laterality = value
            break
    header = Dataset()
    header.update({elem.tag: elem for elem in ds if int(elem.tag) not in _PIXEL_DATA_TAGS})
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    return Radiograph(pixels, spacing, spacing_source, problem, laterality, source, header)


def _decode(ds: Dataset, name: str, limits: DecodeLimits) -> np.ndarray:
    if not any(tag in ds for tag in _PIXEL_DATA_TAGS):
        sop = ds.get("SOPClassUID")
        what = f" ({UID(sop).name})" if sop else ""
        raise ImageLoadError(f"{name}: DICOM file has no pixel data{what}")
    _check_pixel_module(ds, name, limits)
    meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        # A bare dataset without file meta: decode it the way it was encoded.
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.file_meta = meta
    syntax = UID(meta.TransferSyntaxUID)
    if syntax.is_transfer_syntax and syntax.is_compressed and hasattr(os, "fork"):
        stored = _decode_isolated(ds, name, syntax)
    else:
        stored = _pixel_array(ds, name, syntax)
    if stored.ndim == 3 and stored.shape[-1] in (3, 4) and ds.get("SamplesPerPixel", 1) > 1:
        stored = stored[..., :3].mean(axis=-1)  # colour secondary capture: use luminance
    if stored.ndim != 2:
        raise ImageLoadError(f"{name}: expected a 2-D image, got shape {stored.shape}")

    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    relationship = str(ds.get("PixelIntensityRelationship", "") or "").upper()
    if relationship == "LIN":
        # Linear in X-ray intensity: the log makes values scale with attenuation path.
        if int(ds.get("PixelIntensityRelationshipSign", 1) or 1) == -1:
            values = values.max() - values  # stored inverted: recover intensity
        floor = max(float(values.max()), 1.0) * 1e-4
        return (-np.log(np.maximum(values, floor))).astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        return (_max_value(ds, values) - values).astype(np.float32)
    return values


def _pixel_array(ds: Dataset, name: str, syntax: UID) -> np.ndarray:
    """The stored values of the first frame; ImageLoadError when they cannot be decoded."""
    try:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            ds.pixel_array_options(index=0)  # decode only the first frame
        return ds.pixel_array
    except Exception as error:  # decoders raise ValueError, RuntimeError, ...
        if not syntax.is_transfer_syntax:
            raise ImageLoadError(f"{name}: unknown transfer syntax {syntax}") from None
        if "less than expected" in str(error):
            raise ImageLoadError(f"{name}: pixel data is truncated ({syntax.name})") from None
        hint = ""
        if syntax == JPEGExtended12Bit and int(ds.get("BitsStored", 8)) > 8:
            hint = "; 12-bit JPEG Extended needs the optional codec: pip install dxr-node[jpeg12]"
        raise ImageLoadError(
            f"{name}: pixel data could not be decoded ({syntax.name}: {_short(error)}){hint}"
        ) from None


def _decode_isolated(ds: Dataset, name: str, syntax: UID) -> np.ndarray:
    """Decode compressed pixel data in a forked child process.

    Codecs (GDCM in particular) abort the whole process on some malformed codestreams
    (SIGABRT from a C++ assertion): in a child, that loses this image only, with a reason,
    instead of the CLI batch or the node's worker. The child sends back either the array
    (a small header line, then the raw bytes) or the ImageLoadError's message.
    """
    read_fd, write_fd = os.pipe()
    messages = tempfile.TemporaryFile()  # the codec's own last words (stderr), if it dies
    pid = os.fork()
    if pid == 0:  # the child: decode, report, and leave without running any cleanup
        status = 0
        try:
            os.dup2(messages.fileno(), 2)
            os.close(read_fd)
            with os.fdopen(write_fd, "wb") as out:
                try:
                    stored = np.ascontiguousarray(_pixel_array(ds, name, syntax))
                except ImageLoadError as error:
                    out.write(b"E" + str(error).encode("utf-8", "replace"))
                else:
                    head = json.dumps([stored.dtype.str, list(stored.shape)])
                    out.write(b"A" + head.encode() + b"\n")
                    out.write(stored.data.cast("B"))
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    # A decoder that hangs (or deadlocks after the fork) is killed: the read then ends.
    overdue = threading.Event()
    timer = threading.Timer(DECODE_TIMEOUT_S, _kill_overdue, (pid, overdue))
    timer.start()
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            received = _receive(pipe, name)
    finally:
        timer.cancel()
        _, wait_status = os.waitpid(pid, 0)  # the child exits right after writing
        messages.seek(0)
        said = messages.read(4096).decode("utf-8", "replace").strip().splitlines()
        messages.close()
    if received is None:
        if overdue.is_set():
            raise ImageLoadError(f"{name}: pixel data could not be decoded ({syntax.name}: "
                                 f"the decoder did not finish within {DECODE_TIMEOUT_S:g} s)")
        how = (f"signal {signal.Signals(os.WTERMSIG(wait_status)).name}"
               if os.WIFSIGNALED(wait_status) else f"exit {os.WEXITSTATUS(wait_status)}")
        detail = f": {_short(Exception(said[-1]))}" if said else ""
        raise ImageLoadError(f"{name}: pixel data could not be decoded ({syntax.name}: the "
                             f"decoder crashed, {how}{detail})")
    return received


def _kill_overdue(pid: int, overdue: threading.Event) -> None:
    overdue.set()
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it finished just now


def _receive(pipe: Any, name: str) -> np.ndarray | None:
    """The array a decoding child sent; None if it died before sending one."""
    kind = pipe.read(1)
    if kind == b"E":
        raise ImageLoadError(pipe.read(4096).decode("utf-8", "replace"))
    if kind != b"A":
        return None
    dtype, shape = json.loads(pipe.readline())
    stored = np.empty(shape, dtype=np.dtype(dtype))
    view = stored.data.cast("B")
    got = 0
    while got < len(view):
        n = pipe.readinto(view[got:])
        if not n:
            return None  # cut short: the child died while sending
        got += n
    return stored


def _check_pixel_module(ds: Dataset, name: str, limits: DecodeLimits) -> None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        allocated, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
    except (AttributeError, TypeError, ValueError):
        raise ImageLoadError(f"{name}: image pixel description (Rows, Columns, BitsAllocated) "
                             "is missing or malformed") from None
    if rows < 1 or cols < 1:
        raise ImageLoadError(f"{name}: empty image ({rows} x {cols} pixels)")
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated:
        raise ImageLoadError(f"{name}: unsupported bit depth (BitsAllocated {allocated}, "
                             f"BitsStored {stored})")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                           "YBR_RCT", "YBR_ICT", "PALETTE COLOR", ""):
        raise ImageLoadError(f"{name}: unsupported photometric interpretation {photometric}")
    _check_size(name, rows, cols, int(ds.get("SamplesPerPixel", 1) or 1), allocated, limits)


def _check_size(name: str, rows: int, cols: int, samples: int, bits: int,
                limits: DecodeLimits) -> None:
    """Refuse, from the header alone, an image too large to decode safely."""
    if rows * cols > limits.max_pixels:
        raise ImageLoadError(
            f"{name}: image too large ({rows} x {cols} = {rows * cols / 1e6:.1f} Mpixel; the "
            f"limit is {limits.max_pixels / 1e6:g} Mpixel)")
    decoded_mb = rows * cols * max(samples, 1) * ((bits + 7) // 8) / 2**20
    if decoded_mb > limits.max_decoded_mb:
        raise ImageLoadError(f"{name}: image too large to decode ({decoded_mb:.0f} MB per "
                             f"frame; the limit is {limits.max_decoded_mb} MB)")


def _max_value(ds: Dataset, values: np.ndarray) -> float:
    """Largest value the modality LUT can produce, for inverting MONOCHROME1."""
    if "ModalityLUTSequence" in ds:
        return float(values.max())
    stored = int(ds.get("BitsStored", ds.BitsAllocated))
    top = 2 ** (stored - 1) - 1 if int(ds.get("PixelRepresentation", 0)) else 2**stored - 1
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return max(top * slope + intercept, intercept)


def _spacing(ds: Dataset, override: float | None) -> tuple[float | None, str | None, str | None]:
    """(spacing mm, source, note) following PixelSpacing > Imager/ERMF > Imager, then the
    command line's spacing for a header without a usable one.

    An empty or implausible attribute (e.g. PixelSpacing 0\\0) falls through to the next;
    when none is usable the first problem is reported.
    """
    header = _header_spacing(ds)
    if override is None:
        return header
    if header[0] is not None:
        # A calibrated header is better evidence than a number typed for a batch.
        return (header[0], header[1],
                f"--pixel-spacing {override:g} ignored: the header gives {header[0]:.4g} mm "
                f"({header[1]})")
    return _plausible([override], "command line")


def _header_spacing(ds: Dataset) -> tuple[float | None, str | None, str | None]:
    candidates = []
    if ds.get("PixelSpacing"):
        candidates.append((ds.PixelSpacing, "PixelSpacing"))
    if ds.get("ImagerPixelSpacing"):
        factor = _number(ds.get("EstimatedRadiographicMagnificationFactor"))
        if factor is not None and 0.5 < factor < 3.0:
            try:
                corrected = [float(v) / factor for v in _as_list(ds.ImagerPixelSpacing)]
            except (TypeError, ValueError):
                corrected = None
            if corrected is not None:
                candidates.append(
                    (corrected, "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"))
        candidates.append((ds.ImagerPixelSpacing, "ImagerPixelSpacing"))
    problems = []
    for values, source in candidates:
        spacing, used, problem = _plausible(values, source)
        if spacing is not None:
            return spacing, used, None
        problems.append(problem)
    return None, None, problems[0] if problems else "no pixel spacing in the header"


def _number(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _as_list(value: object) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _plausible(values: object, source: str) -> tuple[float | None, str | None, str | None]:
    try:
        numbers = [float(v) for v in _as_list(values)]
    except (TypeError, ValueError):
        return None, None, f"{source} is not a number"
    if not numbers or not all(math.isfinite(v) for v in numbers):
        return None, None, f"{source} is empty or not finite"
    row, col = numbers[0], numbers[-1]
    if abs(row - col) > ANISOTROPY_TOLERANCE * max(row, col):
        return None, None, f"anisotropic {source} {row:g} x {col:g} mm"
    spacing = (row + col) / 2
    if not MIN_SPACING_MM <= spacing <= MAX_SPACING_MM:
        return None, None, (f"implausible {source} {spacing:g} mm (expected "
                            f"{MIN_SPACING_MM}-{MAX_SPACING_MM} mm)")
    return spacing, source, None


def _load_raster(path: Path, pixel_spacing_mm: float | None,
                 limits: DecodeLimits) -> Radiograph:
    name = path.name
    data = np.fromfile(path, dtype=np.uint8)
    _check_raster_size(name, data, limits)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # we report it ourselves
    try:
        # Grey as the decoder gives it, at the file's depth: a colour JPEG's stored luma
        # plane itself, not luma rebuilt from RGB (whose rounding moves burned-in coloured
        # marks by up to 24 grey levels), so a film and its grey export read alike.
        image = (cv2.imdecode(data, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
                 if data.size else None)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        raise ImageLoadError(f"{name}: not a readable PNG, JPEG or TIFF image")
    spacing, source, problem = (
        (None, None, "no pixel spacing (give --pixel-spacing)") if pixel_spacing_mm is None
        else _plausible([pixel_spacing_mm], "command line"))
    return Radiograph(image.astype(np.float32), spacing, source, problem, None, str(path), None)


def _check_raster_size(name: str, data: np.ndarray, limits: DecodeLimits) -> None:
    """The PNG/TIFF/JPEG header's size, before OpenCV allocates the image."""
    from PIL import Image  # reads only the header here

    try:
        with Image.open(BytesIO(data.tobytes())) as image:
            width, height = image.size
            samples = len(image.getbands())
    except Exception:  # not for PIL to judge: OpenCV reports unreadable files below
        return
    _check_size(name, height, width, samples, 16 if image.mode.startswith("I;16") else 8,
                limits)


def to_display_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit display version (bone bright) with a robust 0.5-99.5 percentile window."""
    values = np.asarray(pixels, dtype=np.float32)
    # Percentiles from about a million pixels; one working copy (a 0.1 mm hand is 25 MB).
    step = max(1, int(np.sqrt(values.size / 1_000_000)))
    sample = values[::step, ::step]
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return np.zeros(values.shape, np.uint8)
    low, high = np.percentile(finite, [0.5, 99.5])
    if high <= low:
        return np.where(values > low, 255, 0).astype(np.uint8)
    scaled = np.nan_to_num(values, nan=low)  # a copy: the caller's pixels stay untouched
    scaled -= low
    scaled *= 255.0 / (high - low)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."
