"""The engine on real radiographs without truth: per-source counts, annotated landmarks,
overlay previews and metamorphic checks (rotated, mirrored, rescaled, cropped copies).

Images are loaded exactly as ``dxr-node analyze --pixel-spacing S file`` loads them
(``load_radiograph``) with a spacing assumed per source; a transformed copy is the loaded
radiograph with its pixels (and, for a rescale, its spacing) changed, so only the pixel
geometry differs from the original run.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset

from dxr_node.engine.analyze import analyze
from dxr_node.engine.image import Radiograph, load_radiograph, to_display_uint8
from dxr_node.engine.result import BONE_NAMES, STATUS_OK, Analysis, ProblemCode

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Spacing assumed per source (mm): atlas and RSNA scans ~0.1 mm; adult wrist/RA/MURA
# films ~0.12-0.16 mm (an adult MC2 is 60-75 mm long), see the realdata-2 README.
ADULT_FILM_PREFIXES = ("scaph", "ra2", "mura")
ADULT_FILM_SPACING_MM = 0.14
DEFAULT_SPACING_MM = 0.1
ADULT_AGE_YEARS = 18
_SCAPH_AGE = re.compile(r"^scaph_\w+?_[LR]_(\d+)[MF]\.")
# Metamorphic agreement: bone centres within this share of the bone's width, or of the
# spacing between neighbouring bones (whichever is larger), and the MCI within MCI_TOLERANCE.
CENTRE_WIDTH_SHARE = 0.25
CENTRE_SPACING_SHARE = 0.15
MCI_TOLERANCE = 0.01
# A reported bone lies on the annotated bone when its centre is within this share of the
# annotated inter-metacarpal spacing and nearer to it than to the neighbouring ones.
LANDMARK_SPACING_SHARE = 0.5
PREVIEW_SIDE = 1000


def source_prefix(name: str) -> str:
    """Source of an image from its file name: the first token (``scaph``, ``dha``, ...)."""
    return name.split("_", 1)[0]


def assumed_spacing_mm(name: str) -> float:
    return (ADULT_FILM_SPACING_MM if source_prefix(name) in ADULT_FILM_PREFIXES
            else DEFAULT_SPACING_MM)


_NAMED_SIDE = re.compile(r"^(?:scaph_\w+?_([LR])_\d|ra2_\w+?-([LR])H\.)")


def header_for(name: str) -> tuple[str, str] | None:
    """(ImageLaterality, ViewPosition) a DICOM header would carry for this film, from what
    its file name says: scaphoid-series films are AP views (realdata-2 README), the RA
    hands PA; None where the name does not tell the hand."""
    match = _NAMED_SIDE.match(name)
    if match is None:
        return None
    side = match.group(1) or match.group(2)
    return side, "AP" if name.startswith("scaph_") else "PA"


def with_header(radiograph: Radiograph, laterality: str, view: str) -> Radiograph:
    """The radiograph as a DICOM with these two header values would load."""
    header = Dataset()
    header.ImageLaterality = laterality
    header.ViewPosition = view
    return replace(radiograph, laterality_tag=laterality, dataset=header)


def scaph_age(name: str) -> int | None:
    match = _SCAPH_AGE.match(name)
    return int(match.group(1)) if match else None


def is_adult(name: str) -> bool:
    """Known adults: scaphoid-series patients aged 18 or more, the RA and MURA hands."""
    prefix = source_prefix(name)
    if prefix == "scaph":
        age = scaph_age(name)
        return age is not None and age >= ADULT_AGE_YEARS
    return prefix in ("ra2", "mura")


def list_images(folders: Iterable[Path], only: str | None = None) -> list[Path]:
    """Image files of every existing folder (absent folders are skipped), sorted by name;
    ``only`` keeps names containing it (a glob when it has * or ?)."""
    files = []
    for folder in folders:
        if folder.is_dir():
            files += [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if only:
        if any(ch in only for ch in "*?["):
            files = [p for p in files if p.match(only)]
        else:
            files = [p for p in files if only in p.name]
    return files


def is_paediatric(analysis: Analysis) -> bool:
    return analysis.paediatric or analysis.has(ProblemCode.PAEDIATRIC)


def rejection_cause(analysis: Analysis) -> str | None:
    """Why an analysis was not ``ok``: the code of its first rejection (the status when it
    has none)."""
    if analysis.status == STATUS_OK:
        return None
    rejections = analysis.rejections
    return rejections[0].code.value if rejections else analysis.status


# --- transforms -------------------------------------------------------------------------
# Each maps (pixels, spacing) to (pixels, spacing, M) where M (3x3) maps original
# homogeneous (row, col, 1) to the transformed image's (row, col, 1).

Transform = Callable[[np.ndarray, float], tuple[np.ndarray, float, np.ndarray]]


def _rot90(pixels: np.ndarray, spacing: float) -> tuple[np.ndarray, float, np.ndarray]:
    cols = pixels.shape[1]  # np.rot90 (counter-clockwise): (r, c) -> (cols-1-c, r)
    return (np.ascontiguousarray(np.rot90(pixels, 1)), spacing,
            np.array([[0.0, -1.0, cols - 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))


def _rot180(pixels: np.ndarray, spacing: float) -> tuple[np.ndarray, float, np.ndarray]:
    rows, cols = pixels.shape
    return (np.ascontiguousarray(pixels[::-1, ::-1]), spacing,
            np.array([[-1.0, 0.0, rows - 1.0], [0.0, -1.0, cols - 1.0], [0.0, 0.0, 1.0]]))


def _rot270(pixels: np.ndarray, spacing: float) -> tuple[np.ndarray, float, np.ndarray]:
    rows = pixels.shape[0]  # clockwise: (r, c) -> (c, rows-1-r)
    return (np.ascontiguousarray(np.rot90(pixels, 3)), spacing,
            np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, rows - 1.0], [0.0, 0.0, 1.0]]))


def _mirror(pixels: np.ndarray, spacing: float) -> tuple[np.ndarray, float, np.ndarray]:
    cols = pixels.shape[1]
    return (np.ascontiguousarray(pixels[:, ::-1]), spacing,
            np.array([[1.0, 0.0, 0.0], [0.0, -1.0, cols - 1.0], [0.0, 0.0, 1.0]]))


def _mirror_rot90(pixels: np.ndarray, spacing: float) -> tuple[np.ndarray, float, np.ndarray]:
    mirrored, _, first = _mirror(pixels, spacing)
    rotated, _, second = _rot90(mirrored, spacing)
    return rotated, spacing, second @ first


def _turned(pixels: np.ndarray, angle_deg: float, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """``angle_deg`` counter-clockwise on a canvas grown to hold the whole image, the new
    corners padded with ``fill``; (pixels, original -> new (row, col, 1) map)."""
    rows, cols = pixels.shape
    angle = math.radians(angle_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    new_cols = int(math.ceil(cols * abs(cos) + rows * abs(sin)))
    new_rows = int(math.ceil(cols * abs(sin) + rows * abs(cos)))
    # In (x=col, y=row) with y down, a counter-clockwise turn on screen is
    # x' = cos*x + sin*y, y' = -sin*x + cos*y about the centre.
    cx, cy = (cols - 1) / 2, (rows - 1) / 2
    ncx, ncy = (new_cols - 1) / 2, (new_rows - 1) / 2
    xy = np.array([[cos, sin, ncx - cos * cx - sin * cy],
                   [-sin, cos, ncy + sin * cx - cos * cy]])
    warped = cv2.warpAffine(pixels, xy, (new_cols, new_rows), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    # Same map in (row, col): row' = y', col' = x'.
    rc = np.array([[xy[1, 1], xy[1, 0], xy[1, 2]], [xy[0, 1], xy[0, 0], xy[0, 2]],
                   [0.0, 0.0, 1.0]])
    return warped, rc


def _rot12(pixels: np.ndarray, spacing: float) -> tuple[np.ndarray, float, np.ndarray]:
    """12 degrees counter-clockwise; the new corners padded with the median of the
    original border (its background)."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    warped, rc = _turned(pixels, 12.0, float(np.median(border)))
    return warped, spacing, rc


def _black_corners(angle_deg: float) -> Transform:
    def turn(pixels: np.ndarray, spacing: float) -> tuple[np.ndarray, float, np.ndarray]:
        warped, rc = _turned(pixels, angle_deg, 0.0)
        return warped, spacing, rc
    return turn


def _scale08(pixels: np.ndarray, spacing: float) -> tuple[np.ndarray, float, np.ndarray]:
    rows, cols = pixels.shape
    new_rows, new_cols = round(rows * 0.8), round(cols * 0.8)
    small = cv2.resize(pixels, (new_cols, new_rows), interpolation=cv2.INTER_AREA)
    fr, fc = new_rows / rows, new_cols / cols
    # Pixel centres: new = (old + 0.5) * f - 0.5.
    m = np.array([[fr, 0.0, 0.5 * fr - 0.5], [0.0, fc, 0.5 * fc - 0.5], [0.0, 0.0, 1.0]])
    return small, spacing / math.sqrt(fr * fc), m


def _crop6(pixels: np.ndarray, spacing: float) -> tuple[np.ndarray, float, np.ndarray]:
    rows, cols = pixels.shape
    r0, c0 = round(rows * 0.06), round(cols * 0.06)
    return (np.ascontiguousarray(pixels[r0:rows - r0, c0:cols - c0]), spacing,
            np.array([[1.0, 0.0, -r0], [0.0, 1.0, -c0], [0.0, 0.0, 1.0]]))


TRANSFORMS: dict[str, Transform] = {
    "rot90": _rot90, "rot180": _rot180, "rot270": _rot270, "rot12": _rot12,
    "mirror": _mirror, "mirror_rot90": _mirror_rot90, "scale0.8": _scale08, "crop6": _crop6,
}


# Turned by odd angles with black corners, as an image turned in software before it is
# sent would be: the labels of the annotated films must hold (bench_realworld --turned).
TURNED: dict[str, Transform] = {f"turn{angle:+g}": _black_corners(angle)
                                for angle in (7.0, -12.0, 20.0, -33.0)}


def transformed(radiograph: Radiograph, name: str) -> tuple[Radiograph, np.ndarray]:
    """The radiograph with a transform applied, and the original -> new (row, col) map."""
    if radiograph.pixel_spacing_mm is None:
        raise ValueError(f"transform {name}: the image needs a pixel spacing")
    transform = TRANSFORMS.get(name) or TURNED[name]
    pixels, spacing, matrix = transform(radiograph.pixels, radiograph.pixel_spacing_mm)
    return replace(radiograph, pixels=pixels.astype(np.float32, copy=False),
                   pixel_spacing_mm=spacing), matrix


# --- one run ------------------------------------------------------------------------------

def run_image(path: Path, transform: str | None = None, spacing_mm: float | None = None,
              preview_dir: Path | None = None, landmarks: dict | None = None,
              header: bool = False) -> dict[str, Any]:
    """Analyse one image (optionally transformed); a JSON-safe record whose bone centres
    and widths are in the ORIGINAL image's pixel frame. ``header``: with the laterality
    and view the file name implies (``header_for``), as a DICOM would carry them."""
    spacing = spacing_mm if spacing_mm is not None else assumed_spacing_mm(path.name)
    radiograph = load_radiograph(path, spacing)
    implied = header_for(path.name) if header else None
    if implied is not None:
        radiograph = with_header(radiograph, *implied)
    matrix = np.eye(3)
    if transform:
        radiograph, matrix = transformed(radiograph, transform)
    started = time.perf_counter()
    analysis = analyze(radiograph, started=started)
    seconds = time.perf_counter() - started
    back = np.linalg.inv(matrix)
    linear = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    bones = {}
    for name, bone in analysis.bones.items():
        centre = back @ np.array([bone.center_rc[0], bone.center_rc[1], 1.0])
        # The axis (rows down, angle counter-clockwise from +column) in the original frame.
        angle = math.radians(bone.axis_angle_deg)
        axis = back[:2, :2] @ np.array([-math.sin(angle), math.cos(angle)])
        bones[name] = {"center_rc": [float(centre[0]), float(centre[1])],
                       "width_px": bone.width_px / linear, "mci": bone.mci,
                       "length_px": bone.length_px / linear,
                       "axis_rc": (axis / np.linalg.norm(axis)).tolist()}
    record = {
        "file": path.name, "source": source_prefix(path.name), "folder": path.parent.name,
        "transform": transform or "original", "spacing_mm": spacing,
        "status": analysis.status, "cause": rejection_cause(analysis),
        "reasons": list(analysis.reasons), "laterality": analysis.laterality,
        "paediatric": is_paediatric(analysis), "mci": analysis.mci,
        "dxr_bmd_g_cm2": analysis.dxr_bmd_g_cm2, "bones": bones,
        "seconds": round(seconds, 3),
    }
    if landmarks is not None:
        record["landmarks"] = landmark_check(record, landmarks)
    if preview_dir is not None:
        preview_dir.mkdir(parents=True, exist_ok=True)
        write_preview(radiograph, analysis, record, landmarks,
                      preview_dir / f"{path.stem}{'' if not transform else '_' + transform}.png",
                      matrix)
    return record


def run_image_or_crash(path: Path, transform: str | None = None, **options: Any
                       ) -> dict[str, Any]:
    """``run_image``, with an exception from the engine turned into a "crash" record:
    analyze() must never raise, and one crash must not end a run over many images."""
    try:
        return run_image(path, transform, **options)
    except Exception as exc:
        return {"file": path.name, "source": source_prefix(path.name),
                "folder": path.parent.name, "transform": transform or "original",
                "status": "crash", "cause": f"{type(exc).__name__}: {str(exc)[:200]}",
                "reasons": [], "bones": {}, "paediatric": False, "mci": None,
                "laterality": None, "seconds": 0.0}


# --- judging ------------------------------------------------------------------------------

def _marked_centres(marks: dict) -> tuple[dict[str, np.ndarray], float]:
    """The annotated mid-shaft centres and their mean spacing (neighbour to neighbour)."""
    points = {name: np.asarray(marks[name], float) for name in BONE_NAMES if name in marks}
    ordered = [points[n] for n in BONE_NAMES if n in points]
    gaps = [float(np.linalg.norm(b - a)) for a, b in zip(ordered, ordered[1:], strict=False)]
    return points, float(np.mean(gaps)) if gaps else float("inf")


def landmark_check(record: dict, marks: dict) -> dict[str, Any]:
    """Which reported bones lie on their annotated bone (see LANDMARK_SPACING_SHARE).

    ``wrong`` lists bones of an ``ok`` result that do not: a wrong bone reported ok;
    ``wrong_partial`` those of a rejected result that still lists bones (its overlay
    shows them labelled).
    """
    points, spacing = _marked_centres(marks)
    on_bone: dict[str, bool] = {}
    wrong: list[str] = []
    wrong_partial: list[str] = []
    for name, bone in record["bones"].items():
        centre = np.asarray(bone["center_rc"], float)
        distances = {n: float(np.linalg.norm(centre - p)) for n, p in points.items()}
        right = (name in distances
                 and distances[name] <= LANDMARK_SPACING_SHARE * spacing
                 and min(distances, key=distances.__getitem__) == name)
        on_bone[name] = right
        if not right:
            (wrong if record["status"] == STATUS_OK else wrong_partial).append(name)
    # How far along its bone each band lies from the annotated mid-shaft (share of the
    # bone's length): where the bone's ends were placed.
    offsets = {name: abs(float(np.dot(np.asarray(bone["center_rc"]) - points[name],
                                      bone["axis_rc"]))) / bone["length_px"]
               for name, bone in record["bones"].items()
               if on_bone.get(name) and name in points and "axis_rc" in bone}
    expected = marks.get("laterality")
    return {"on_bone": on_bone, "wrong": wrong, "wrong_partial": wrong_partial,
            "band_offsets": offsets,
            "laterality_expected": expected,
            "laterality_ok": expected is None or record["laterality"] in (None, expected)}


def across_own_bone(record: dict, marks: dict, name: str) -> bool:
    """A bone judged wrong by ``landmark_check`` still lies on its own annotated bone
    across the axis (the band moved along it, to a head or a base): within half the
    annotated spacing of its mark, and nearer to it than to the others, across its axis."""
    bone = record["bones"][name]
    if "axis_rc" not in bone or name not in marks:
        return False
    points, spacing = _marked_centres(marks)
    axis, centre = np.asarray(bone["axis_rc"], float), np.asarray(bone["center_rc"], float)
    across = {n: abs(float(axis[0] * (centre - p)[1] - axis[1] * (centre - p)[0]))
              for n, p in points.items()}
    return (across[name] <= LANDMARK_SPACING_SHARE * spacing
            and min(across, key=across.__getitem__) == name)


def agreement(original: dict, other: dict) -> tuple[bool, str]:
    """Whether a transformed copy's result matches the original's; else what differs."""
    if original["status"] != other["status"]:
        return False, f"status {original['status']} -> {other['status']} ({other['cause']})"
    if set(original["bones"]) != set(other["bones"]):
        return False, f"bones {sorted(original['bones'])} -> {sorted(other['bones'])}"
    centres = [b["center_rc"] for n, b in sorted(original["bones"].items())]
    gaps = [math.dist(a, b) for a, b in zip(centres, centres[1:], strict=False)]
    bone_spacing = float(np.mean(gaps)) if gaps else 0.0
    for name, bone in original["bones"].items():
        moved = math.dist(bone["center_rc"], other["bones"][name]["center_rc"])
        tolerance = max(CENTRE_WIDTH_SHARE * bone["width_px"],
                        CENTRE_SPACING_SHARE * bone_spacing)
        if moved > tolerance:
            return False, f"{name} centre moved {moved:.0f} px (> {tolerance:.0f})"
    if original["mci"] is not None and other["mci"] is not None:
        if abs(original["mci"] - other["mci"]) > MCI_TOLERANCE:
            return False, f"MCI {original['mci']:.3f} -> {other['mci']:.3f}"
    return True, ""


# --- preview ------------------------------------------------------------------------------

def write_preview(radiograph: Radiograph, analysis: Analysis, record: dict,
                  landmarks: dict | None, target: Path, matrix: np.ndarray | None = None
                  ) -> None:
    """Downscaled image with each bone's axis, ROI and label (green: ok result; orange:
    partial result of a rejected analysis), annotated landmarks (cyan; moved by
    ``matrix``, original -> this copy's (row, col, 1), on a transformed copy) and the
    verdict."""
    display = to_display_uint8(radiograph.pixels)
    rows, cols = display.shape
    scale = min(1.0, PREVIEW_SIDE / max(rows, cols))
    small = cv2.resize(display, (max(1, round(cols * scale)), max(1, round(rows * scale))),
                       interpolation=cv2.INTER_AREA)
    image = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    colour = (60, 220, 60) if analysis.status == STATUS_OK else (0, 160, 255)

    def pt(rc: Iterable[float]) -> tuple[int, int]:
        r, c = rc
        return round(c * scale), round(r * scale)

    for name, bone in analysis.bones.items():
        cv2.line(image, pt(bone.proximal_rc), pt(bone.distal_rc), (0, 0, 255), 1, cv2.LINE_AA)
        cv2.polylines(image, [np.array([pt(p) for p in bone.roi_rc], np.int32)], True,
                      colour, 2, cv2.LINE_AA)
        x, y = pt(bone.center_rc)
        cv2.putText(image, f"{name} {bone.mci:.2f}", (x + 8, y), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, colour, 1, cv2.LINE_AA)
    if landmarks:
        for name in BONE_NAMES:
            if name in landmarks:
                mark = np.array([*landmarks[name], 1.0])
                x, y = pt((matrix @ mark)[:2] if matrix is not None else mark[:2])
                cv2.drawMarker(image, (x, y), (255, 255, 0), cv2.MARKER_CROSS, 14, 2)
                cv2.putText(image, name[-1], (x - 16, y - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                            (255, 255, 0), 1, cv2.LINE_AA)
    lines = [f"{record['file']} [{record['transform']}] {analysis.status.upper()}  "
             f"lat {analysis.laterality or '-'}  MCI "
             f"{'-' if analysis.mci is None else format(analysis.mci, '.3f')}"
             f"{'  PAEDIATRIC' if record['paediatric'] else ''}"]
    if record.get("landmarks", {}).get("wrong"):
        lines.append(f"WRONG BONE REPORTED OK: {', '.join(record['landmarks']['wrong'])}")
    for reason in analysis.reasons[:4]:
        lines += [reason[i:i + 110] for i in range(0, len(reason), 110)]
    band = np.full((18 * len(lines) + 8, image.shape[1], 3), 30, np.uint8)
    for index, line in enumerate(lines):
        cv2.putText(band, line, (4, 16 + 18 * index), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (255, 255, 255), 1, cv2.LINE_AA)
    cv2.imwrite(str(target), np.vstack([band, image]))
