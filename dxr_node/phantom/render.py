"""Projection radiography of a synthetic hand: attenuation paths, detector and processing.

Order of the physics: line integrals of attenuation on a supersampled grid -> intensity
I0*exp(-A) -> Gaussian system blur -> pixel integration (box average) -> scatter, heel
effect and collimation -> quantum noise (variance ~ counts) -> log transform to 12-bit values ->
optional unsharp-mask edge enhancement -> burned-in text.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict
from typing import Any

import cv2
import numpy as np

from dxr_node.phantom.acquisition import Acquisition
from dxr_node.phantom.anatomy import (
    METACARPALS,
    MU_CORTEX,
    MU_MARROW,
    MU_SOFT,
    MU_TRABECULAR,
    Blob,
    HandAnatomy,
    LongBone,
)

MAX_VALUE = 4095  # 12-bit detector
_TISSUE_STEP_MM = 0.5  # soft tissue is smooth: render it coarsely, then resample
_TISSUE_X_MM = (-140.0, 140.0)
_TISSUE_Y_MM = (-320.0, 260.0)
_LEAD_ATTENUATION = 4.0
# Trabecular texture grid: (x0, y top, step mm, (rows, cols)) covering the hand bones.
_TEXTURE_GRID = (-85.0, 215.0, 0.15, (2000, 1133))
_CHEST_GRID = (-220.0, 270.0, 0.5, (1080, 880))


class Placement:
    """Affine map from the canonical hand frame (x right, y up, mm) to image [row, col]."""

    def __init__(self, anatomy: HandAnatomy, acquisition: Acquisition) -> None:
        rows_mm, cols_mm = acquisition.field_mm
        spacing = acquisition.pixel_spacing_mm
        self.rows, self.cols = round(rows_mm / spacing), round(cols_mm / spacing)
        angle = math.radians(acquisition.rotation_deg + (180 if acquisition.fingers == "down"
                                                          else 0))
        mirror = np.diag([-1.0 if acquisition.laterality == "L" else 1.0, 1.0])
        rotate = np.array([[math.cos(angle), -math.sin(angle)],
                           [math.sin(angle), math.cos(angle)]])
        # Screen (x right, y up) -> (row, col): row goes down.
        to_rc = np.array([[0.0, -1.0], [1.0, 0.0]]) / spacing
        self.linear = to_rc @ rotate @ mirror
        center_rc = np.array([(self.rows - 1) / 2, (self.cols - 1) / 2])
        shift = np.array([-acquisition.offset_mm[1], acquisition.offset_mm[0]]) / spacing
        points, is_tip = _outline_points(anatomy)
        projected = points @ self.linear.T
        # Skin reaches ~1.3 finger radii beyond the bones; radiographers leave ~8 mm more.
        margin = (1.3 * anatomy.soft_tissue.finger_radius_mm + 8.0) / spacing
        low, high = projected.min(axis=0) - margin, projected.max(axis=0) + margin
        self.offset = center_rc + shift - (low + high) / 2
        # Keep the whole hand inside the collimated field where it fits; where it does not,
        # show the finger tips and cut the forearm side.
        top, bottom, left, right = acquisition.collimation_mm or (0.0, 0.0, 0.0, 0.0)
        field_low = np.array([top, left]) / spacing
        field_high = np.array([self.rows - 1 - bottom / spacing, self.cols - 1 - right / spacing])
        tips = projected[is_tip].mean(axis=0) if is_tip.any() else (low + high) / 2
        for axis in (0, 1):
            if high[axis] - low[axis] <= field_high[axis] - field_low[axis]:
                self.offset[axis] += max(0.0, field_low[axis] - (low[axis] + self.offset[axis]))
                self.offset[axis] -= max(0.0, high[axis] + self.offset[axis] - field_high[axis])
            elif tips[axis] < (low[axis] + high[axis]) / 2:
                self.offset[axis] = field_low[axis] - low[axis]
            else:
                self.offset[axis] = field_high[axis] - high[axis]

    def rc(self, xy: tuple[float, float] | np.ndarray) -> np.ndarray:
        return self.linear @ np.asarray(xy, dtype=float) + self.offset

    def grid_to_xy(self, supersample: int) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) with canonical xy = A @ [i, j] + b for supersampled grid indices (i, j)."""
        inverse = np.linalg.inv(self.linear)
        # Sample i of the supersampled grid sits at native row (i + 0.5) / k - 0.5.
        a = inverse / supersample
        b = inverse @ (np.full(2, 0.5 / supersample - 0.5) - self.offset)
        return a, b


def _outline_points(anatomy: HandAnatomy) -> tuple[np.ndarray, np.ndarray]:
    """Canonical points the image must show (bone ends of the hand and distal forearm),
    and which of them are finger tips."""
    points, is_tip = [(0.0, 0.0)], [False]  # a non-hand image is centred on its origin
    for bone in anatomy.long_bones:
        points.append(bone.distal_xy)
        is_tip.append(bone.name.startswith("D"))
        if bone.name not in ("radius", "ulna"):  # those continue out of the field
            points.append(bone.proximal_xy)
            is_tip.append(False)
    if anatomy.long_bones:
        points, is_tip = points[1:], is_tip[1:]
    return np.array(points), np.array(is_tip)


def _scale(anatomy: HandAnatomy) -> float:
    return anatomy.bone("MC3").length_mm / 65.0


def render(anatomy: HandAnatomy, acquisition: Acquisition) -> tuple[np.ndarray, dict[str, Any]]:
    """Image the hand: returns stored pixel values (uint16, 12-bit) and the truth record."""
    placement = Placement(anatomy, acquisition)
    attenuation = line_integrals(anatomy, acquisition, placement)
    pixels = _detect(attenuation, acquisition, placement)
    return pixels, truth_record(anatomy, acquisition, placement)


def line_integrals(anatomy: HandAnatomy, acquisition: Acquisition,
                   placement: Placement | None = None) -> np.ndarray:
    """Total attenuation (dimensionless) on the supersampled grid, lead marker included."""
    placement = placement or Placement(anatomy, acquisition)
    k = acquisition.supersample
    shape = (placement.rows * k, placement.cols * k)
    a, b = placement.grid_to_xy(k)
    if anatomy.variant == "non-hand":
        attenuation = _warp_canonical(_chest_attenuation(), shape, a, b, _CHEST_GRID)
    else:
        attenuation = _warp_canonical(MU_SOFT * _soft_tissue_thickness(anatomy), shape, a, b)
        texture = _warp_canonical(_trabecular_texture(anatomy), shape, a, b, _TEXTURE_GRID)
        step_mm = acquisition.pixel_spacing_mm / k
        for bone in anatomy.long_bones:
            _add_long_bone(attenuation, texture, bone, a, b, step_mm)
        for blob in anatomy.blobs:
            _add_blob(attenuation, texture, blob, a, b, step_mm)
    if acquisition.marker:
        _add_marker(attenuation, acquisition, placement)
    return attenuation


def _bbox(points_xy: list[np.ndarray], margin_mm: float, a: np.ndarray, b: np.ndarray,
          step_mm: float, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    inverse = np.linalg.inv(a)
    ij = np.array([inverse @ (np.asarray(p) - b) for p in points_xy])
    margin = margin_mm / step_mm + 2
    i0, j0 = np.floor(ij.min(axis=0) - margin).astype(int)
    i1, j1 = np.ceil(ij.max(axis=0) + margin).astype(int)
    i0, j0 = max(i0, 0), max(j0, 0)
    i1, j1 = min(i1, shape[0]), min(j1, shape[1])
    if i0 >= i1 or j0 >= j1:
        return None
    return i0, i1, j0, j1


def _local_coordinates(origin: np.ndarray, direction: np.ndarray, a: np.ndarray, b: np.ndarray,
                       box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along ``direction`` and across it (mm) for every sample in ``box``."""
    i0, i1, j0, j1 = box
    normal = np.array([-direction[1], direction[0]])
    ii = np.arange(i0, i1, dtype=np.float32)[:, None]
    jj = np.arange(j0, j1, dtype=np.float32)[None, :]
    out = []
    for axis in (direction, normal):
        gradient = a.T @ axis
        start = float((b - origin) @ axis)
        out.append(start + float(gradient[0]) * ii + float(gradient[1]) * jj)
    return out[0], out[1]


def _add_long_bone(attenuation: np.ndarray, texture: np.ndarray, bone: LongBone,
                   a: np.ndarray, b: np.ndarray, step_mm: float) -> None:
    proximal, distal = np.asarray(bone.proximal_xy), np.asarray(bone.distal_xy)
    length = bone.length_mm
    direction = (distal - proximal) / length
    outer, inner, interior_mu = bone.profiles()
    margin = float(outer.max())
    box = _bbox([proximal, distal], margin, a, b, step_mm, attenuation.shape)
    if box is None:
        return
    t, d = _local_coordinates(proximal, direction, a, b, box)
    # Both radius profiles are 0 at the two ends, so clipping the index leaves no bone
    # beyond them.
    index = np.clip(t * ((len(outer) - 1) / length), 0, len(outer) - 1).astype(np.int32)
    d2 = d * d
    outer_half = np.sqrt(np.maximum((outer * outer).astype(np.float32)[index] - d2, 0))
    inner_half = np.sqrt(np.maximum((inner * inner).astype(np.float32)[index] - d2, 0))
    i0, i1, j0, j1 = box
    # Cortex fills outer minus inner; the interior is marrow plus trabecular bone (the
    # excess over marrow), which carries the texture.
    excess = (interior_mu - MU_MARROW).astype(np.float32)[index] * texture[i0:i1, j0:j1]
    path = MU_CORTEX * outer_half + ((MU_MARROW - MU_CORTEX) + excess) * inner_half
    path *= 2 * bone.depth_ratio
    physis = bone.physis_position()
    if physis is not None:
        path[np.abs(t - physis) < bone.physis_gap_mm / 2] = 0  # cartilage, not bone
    attenuation[i0:i1, j0:j1] += path


def _add_blob(attenuation: np.ndarray, texture: np.ndarray, blob: Blob, a: np.ndarray,
              b: np.ndarray, step_mm: float) -> None:
    center = np.asarray(blob.center_xy)
    semi_a, semi_b, depth = blob.semi_axes_mm
    box = _bbox([center], max(semi_a, semi_b), a, b, step_mm, attenuation.shape)
    if box is None:
        return
    angle = math.radians(blob.angle_deg)
    u, v = _local_coordinates(center, np.array([math.cos(angle), math.sin(angle)]), a, b, box)
    shell, power = blob.shell_mm, blob.squareness

    def chord(sa: float, sb: float, sc: float) -> np.ndarray:
        inside = 1 - np.abs(u / sa) ** power - np.abs(v / sb) ** power
        return 2 * sc * np.sqrt(np.maximum(inside, 0))

    outer = chord(semi_a, semi_b, depth)
    inner = chord(semi_a - shell, semi_b - shell, depth - shell)
    i0, i1, j0, j1 = box
    trabecular = (MU_TRABECULAR - MU_MARROW) * inner * texture[i0:i1, j0:j1]
    attenuation[i0:i1, j0:j1] += (MU_CORTEX * (outer - inner) + MU_MARROW * inner
                                  + trabecular).astype(np.float32)


def _trabecular_texture(anatomy: HandAnatomy) -> np.ndarray:
    """Relative density of trabecular bone: 1 + band-pass noise (0.3-1.5 mm features),
    seeded by the anatomy so the same hand shows the same pattern in every image."""
    rng = np.random.default_rng(zlib.crc32(anatomy.anatomy_id.encode()))
    x0, y1, step, (rows, cols) = _TEXTURE_GRID
    noise = rng.standard_normal((rows, cols), dtype=np.float32)
    fine = cv2.GaussianBlur(noise, (0, 0), 0.25 / step)
    band = fine - cv2.GaussianBlur(fine, (0, 0), 1.0 / step)
    band /= max(float(band.std()), 1e-6)
    return 1.0 + 0.22 * band


def _tissue_grid() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(_TISSUE_X_MM[0], _TISSUE_X_MM[1], _TISSUE_STEP_MM)
    y = np.arange(_TISSUE_Y_MM[1], _TISSUE_Y_MM[0], -_TISSUE_STEP_MM)  # row 0 at the top
    return x, y


def _to_tissue_px(xy: np.ndarray | tuple[float, float]) -> tuple[int, int]:
    return (round((xy[0] - _TISSUE_X_MM[0]) / _TISSUE_STEP_MM),
            round((_TISSUE_Y_MM[1] - xy[1]) / _TISSUE_STEP_MM))


def _rounded_thickness(mask: np.ndarray, half_thickness_mm: float | np.ndarray) -> np.ndarray:
    """Thickness of a slab with rounded (circular) edges over a binary outline."""
    distance = cv2.distanceTransform(mask, cv2.DIST_L2, 5) * _TISSUE_STEP_MM
    depth = np.minimum(distance, half_thickness_mm)
    return 2 * np.sqrt(np.maximum(half_thickness_mm**2 - (half_thickness_mm - depth) ** 2, 0))


def _soft_tissue_thickness(anatomy: HandAnatomy) -> np.ndarray:
    """Hand outline and thickness (mm) on the coarse canonical grid."""
    x, y = _tissue_grid()
    soft = anatomy.soft_tissue
    scale = _scale(anatomy)
    fingers = np.zeros((len(y), len(x)), np.uint8)
    for chain in anatomy.fingers:
        bones = [anatomy.bone(name) for name in chain]
        tip = np.asarray(bones[-1].distal_xy)
        tip_direction = tip - np.asarray(bones[-1].proximal_xy)
        tip = tip + 0.3 * soft.finger_radius_mm * tip_direction / np.linalg.norm(tip_direction)
        start = bones[0] if chain[0] == "MC1" else bones[1]
        points = [np.asarray(start.proximal_xy)] + [np.asarray(b.distal_xy) for b in bones[:-1]]
        points.append(tip)
        radius = soft.finger_radius_mm * (1.15 if chain[0] == "MC1" else 1.0)
        width_px = max(1, round(2 * radius / _TISSUE_STEP_MM))
        for p, q in zip(points[:-1], points[1:], strict=True):
            cv2.line(fingers, _to_tissue_px(p), _to_tissue_px(q), 255, width_px, cv2.LINE_8)
    thickness = _rounded_thickness(fingers, soft.finger_radius_mm)

    mc = {name: anatomy.bone(name) for name in METACARPALS}
    wrist_y = min(b.distal_xy[1] for b in anatomy.long_bones if b.name in ("radius", "ulna"))
    side = soft.finger_radius_mm
    palm_points = [
        np.add(mc["MC2"].distal_xy, (-0.9 * side, 0.2 * side)),
        np.add(mc["MC3"].distal_xy, (0.0, 0.4 * side)),
        np.add(mc["MC5"].distal_xy, (1.0 * side, 0.0)),
        (mc["MC5"].proximal_xy[0] + 0.9 * side, wrist_y + 4.0 * scale),
        (mc["MC2"].proximal_xy[0] - 1.2 * side, wrist_y + 4.0 * scale),
        np.asarray(anatomy.bone("MC1").proximal_xy) + (-0.6 * side, 0.0),
    ]
    body = np.zeros_like(fingers)
    cv2.fillConvexPoly(body, np.array([_to_tissue_px(p) for p in palm_points], np.int32), 255)
    # Wrist and forearm, joined to the palm in one outline so the skin has no seam; the
    # half-thickness grows from the palm's to the wrist's over ~30 mm.
    center_x = 0.5 * (anatomy.bone("radius").distal_xy[0] + anatomy.bone("ulna").distal_xy[0])
    half = soft.wrist_half_width_mm
    arm = [palm_points[3], palm_points[4], (center_x - 1.02 * half, wrist_y - 8 * scale),
           (center_x - 1.2 * half, _TISSUE_Y_MM[0]), (center_x + 1.15 * half, _TISSUE_Y_MM[0]),
           (center_x + half, wrist_y - 8 * scale)]
    cv2.fillConvexPoly(body, np.array([_to_tissue_px(np.asarray(p)) for p in arm], np.int32),
                       255)
    ramp = np.clip((wrist_y + 15 * scale - y) / (30.0 * scale), 0.0, 1.0)[:, None]
    half_thickness = soft.palm_half_thickness_mm + ramp * (
        soft.wrist_half_thickness_mm - soft.palm_half_thickness_mm)
    thickness = np.maximum(thickness, _rounded_thickness(body, half_thickness))
    # Smooth the joins (web spaces, wrist) the way skin and fat do; fat and muscle make
    # the thickness vary a few per cent.
    thickness = cv2.GaussianBlur(thickness.astype(np.float32), (0, 0), 0.8 / _TISSUE_STEP_MM)
    rng = np.random.default_rng(zlib.crc32(anatomy.anatomy_id.encode()) + 1)
    lumps = cv2.GaussianBlur(rng.standard_normal(thickness.shape, dtype=np.float32), (0, 0),
                             4.0 / _TISSUE_STEP_MM)
    return thickness * (1 + 0.04 * lumps / max(float(lumps.std()), 1e-6))


def _chest_attenuation() -> np.ndarray:
    """A chest-like PA radiograph for rejection tests (on ``_CHEST_GRID``): torso with
    shoulders, air-filled lungs with diaphragm domes, heart, spine, ribs and clavicles."""
    x0, y1, step, (rows, cols) = _CHEST_GRID
    xx, yy = np.meshgrid(x0 + step * np.arange(cols), y1 - step * np.arange(rows))
    ax = np.abs(xx)
    # Body: an elliptical torso section, wider at the shoulders; attenuation ~ thickness.
    half_width = 150 + 25 * np.clip((yy - 60) / 80, 0.0, 1.0)
    body = np.sqrt(np.clip(1 - (xx / half_width) ** 2, 0, 1))
    attenuation = 3.0 * body
    # Lungs: air lowers attenuation; apex rounded, base cut by a diaphragm dome.
    lung_x = (ax - 75) / 60
    lung_y = (yy - 20) / 135
    dome = -110 + 35 * np.sqrt(np.clip(1 - ((ax - 80) / 70) ** 2, 0, 1))
    lung = np.clip(1 - lung_x**2 - np.maximum(lung_y, 0) ** 2, 0, 1) * (yy > dome)
    attenuation -= 1.6 * np.sqrt(lung) * (ax > 15)
    heart = np.clip(1 - ((xx + 25) / 70) ** 2 - ((yy + 55) / 60) ** 2, 0, 1)
    attenuation += 1.2 * np.sqrt(heart)
    # Spine: vertebral bodies (blocks with bright end plates) in a central band.
    vertebra = np.abs(((yy + 400) % 28) - 14) < 11
    attenuation += np.where(ax < 20, 0.5 + 0.2 * vertebra, 0.0)
    # Posterior ribs: arcs from the spine sweeping laterally and down, with cortical edges.
    for level in range(10):
        centre = 150 - 26 * level - 0.45 * ax + 0.0012 * ax**2
        distance = np.abs(yy - centre)
        rib = (distance < 6) & (ax > 18) & (ax < half_width - 8)
        attenuation += np.where(rib, 0.25 + 0.2 * (distance > 4), 0.0)
    clavicle = np.abs(yy - (165 - 0.25 * ax + 0.0015 * ax**2)) < 7
    attenuation += np.where(clavicle & (ax > 10) & (ax < 150), 0.6, 0.0)
    return cv2.GaussianBlur(attenuation.astype(np.float32), (0, 0), 1.5 / step)


def _warp_canonical(image: np.ndarray, shape: tuple[int, int], a: np.ndarray,
                    b: np.ndarray, grid: tuple | None = None) -> np.ndarray:
    """Resample a canonical-grid image onto the supersampled image grid (i, j)."""
    x0, y1, step, _ = grid or (_TISSUE_X_MM[0], _TISSUE_Y_MM[1], _TISSUE_STEP_MM, None)
    # Canonical grid pixel (u, v): u = (x - x0) / step, v = (y1 - y) / step.
    to_uv = np.array([[1.0, 0.0], [0.0, -1.0]]) / step
    uv_offset = np.array([-x0, y1]) / step
    linear = to_uv @ a  # d(u, v) / d(i, j)
    shift = to_uv @ b + uv_offset
    # cv2 works in (x=j, y=i) order: map destination (j, i) -> source (u, v).
    matrix = np.array([[linear[0, 1], linear[0, 0], shift[0]],
                       [linear[1, 1], linear[1, 0], shift[1]]])
    return cv2.warpAffine(image, matrix, (shape[1], shape[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _marker_corner(acquisition: Acquisition, placement: Placement) -> tuple[float, float]:
    """Native (row, col) of the lead marker: the field corner farthest from the hand."""
    top, bottom, left, right = acquisition.collimation_mm or (0.0, 0.0, 0.0, 0.0)
    spacing = acquisition.pixel_spacing_mm
    inset = 8.0 / spacing
    corners = [(top / spacing + inset, left / spacing + inset),
               (top / spacing + inset, placement.cols - right / spacing - 3 * inset),
               (placement.rows - bottom / spacing - 3 * inset, left / spacing + inset),
               (placement.rows - bottom / spacing - 3 * inset,
                placement.cols - right / spacing - 3 * inset)]
    center = placement.rc((0.0, 60.0))
    return max(corners, key=lambda rc: float(np.hypot(rc[0] - center[0], rc[1] - center[1])))


def _add_marker(attenuation: np.ndarray, acquisition: Acquisition, placement: Placement) -> None:
    k = acquisition.supersample
    spacing = acquisition.pixel_spacing_mm
    letter_px = 12.0 / spacing * k  # 12 mm high lead letter
    scale = letter_px / 22.0  # FONT_HERSHEY_SIMPLEX caps are ~22 px at scale 1
    row, col = _marker_corner(acquisition, placement)
    # Draw in a patch around the letter only: the whole grid would cost a full pass.
    top, left = max(0, round(row * k - letter_px)), max(0, round(col * k - letter_px))
    patch = attenuation[top:top + round(3 * letter_px), left:left + round(3 * letter_px)]
    mask = np.zeros(patch.shape, np.uint8)
    cv2.putText(mask, acquisition.laterality,
                (round(col * k) - left, round(row * k + letter_px) - top),
                cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(1, round(1.8 / spacing * k)),
                cv2.LINE_AA)
    patch += mask.astype(np.float32) * (_LEAD_ATTENUATION / 255)


def _lowpass(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Wide Gaussian blur, computed on a reduced image when the kernel is large."""
    factor = max(1, int(sigma_px // 4))
    if factor == 1:
        return cv2.GaussianBlur(image, (0, 0), sigma_px)
    rows, cols = image.shape
    small = cv2.resize(image, (max(1, cols // factor), max(1, rows // factor)),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / factor)
    return cv2.resize(small, (cols, rows), interpolation=cv2.INTER_LINEAR)


def _native_grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(rows, dtype=np.float32)[:, None], np.arange(cols, dtype=np.float32)[None, :])


def _detect(attenuation: np.ndarray, acquisition: Acquisition,
            placement: Placement) -> np.ndarray:
    k = acquisition.supersample
    spacing = acquisition.pixel_spacing_mm
    rows, cols = placement.rows, placement.cols
    intensity = cv2.exp(np.negative(attenuation, out=attenuation))  # reuses the buffer
    if acquisition.blur_sigma_mm > 0:
        intensity = cv2.GaussianBlur(intensity, (0, 0), acquisition.blur_sigma_mm / spacing * k)
    if k > 1:  # pixel integration: average the k x k samples of each pixel
        intensity = cv2.resize(intensity, (cols, rows), interpolation=cv2.INTER_AREA)
    if acquisition.scatter_fraction > 0:
        # Scatter: a broad blur of the primary beam added on top (~25 mm kernel).
        intensity += acquisition.scatter_fraction * _lowpass(intensity, 25.0 / spacing)

    r, c = _native_grid(rows, cols)
    heel = math.radians(acquisition.heel_direction_deg)
    gradient = acquisition.heel_gradient
    intensity *= ((1 + gradient * math.sin(heel) * (r / rows - 0.5))
                  - gradient * math.cos(heel) * (c / cols - 0.5))
    if acquisition.collimation_mm is not None:
        intensity *= _collimation_factor(acquisition, rows, cols)

    counts_per_pixel = acquisition.counts_per_mm2 * spacing * spacing
    counts = intensity * counts_per_pixel
    if acquisition.noise:
        rng = np.random.default_rng(acquisition.noise_seed)
        # Quantum noise (variance = counts) plus read-out noise (sd 2 counts). The
        # scintillator spreads each quantum like the signal, so the noise grain is blurred
        # too; counts act as noise-equivalent quanta, so its per-pixel variance is kept.
        noise = rng.standard_normal(counts.shape, dtype=np.float32)
        blur_px = acquisition.blur_sigma_mm / spacing
        if blur_px > 0.3:
            noise = cv2.GaussianBlur(noise, (0, 0), blur_px)
            noise /= max(float(noise[::7, ::7].std()), 1e-6)
        counts += np.sqrt(counts + 4.0) * noise
    counts = np.maximum(counts, 1.0, out=counts)

    if acquisition.for_processing:
        # Raw linear signal, MONOCHROME1 (low intensity = bone = displayed bright).
        raw = counts * (3000.0 / counts_per_pixel)
        return np.clip(np.rint(raw), 0, MAX_VALUE).astype(np.uint16)

    gain = acquisition.detector_gain
    value = np.log(counts, out=counts)  # value = offset + gain * ln(I0 / counts)
    value *= -gain
    value += acquisition.detector_offset + gain * math.log(counts_per_pixel)
    if acquisition.edge_gain > 0 and acquisition.edge_sigma_mm > 0:
        value = value + acquisition.edge_gain * (
            value - _lowpass(value, acquisition.edge_sigma_mm / spacing))
    if acquisition.burned_in_text:
        _burn_in_text(value, acquisition)
    value = np.clip(np.rint(value), 0, MAX_VALUE)
    if acquisition.photometric == "MONOCHROME1":
        value = MAX_VALUE - value
    return value.astype(np.uint16)


def _collimation_factor(acquisition: Acquisition, rows: int, cols: int) -> np.ndarray:
    """1 inside the collimated field, scatter level outside, with a soft penumbra."""
    if acquisition.collimation_mm is None:  # not collimated: the whole detector is exposed
        return np.ones((rows, cols))
    top, bottom, left, right = acquisition.collimation_mm
    spacing = acquisition.pixel_spacing_mm
    center = ((top + (rows * spacing - bottom)) / 2 / spacing,
              (left + (cols * spacing - right)) / 2 / spacing)
    size = ((cols * spacing - left - right) / spacing, (rows * spacing - top - bottom) / spacing)
    box = cv2.boxPoints(((center[1], center[0]), size, acquisition.collimation_angle_deg))
    field = np.zeros((rows, cols), np.float32)
    cv2.fillConvexPoly(field, np.round(box).astype(np.int32), 1.0)
    field = _lowpass(field, 0.6 / spacing)
    return field + (1 - field) * 0.04


def _burn_in_text(value: np.ndarray, acquisition: Acquisition) -> None:
    spacing = acquisition.pixel_spacing_mm
    top, _, left, _ = acquisition.collimation_mm or (0.0, 0.0, 0.0, 0.0)
    scale = 3.5 / spacing / 22.0  # 3.5 mm high characters
    thickness = max(1, round(0.4 / spacing))
    x = round((left + 40.0) / spacing)
    text_mask = np.zeros(value.shape, np.uint8)
    for line, text in enumerate(("DXR PHANTOM", f"{acquisition.modality} HAND PA")):
        y = round((top + 8.0 + 6.0 * line) / spacing)
        cv2.putText(text_mask, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255,
                    thickness, cv2.LINE_AA)
    alpha = text_mask.astype(np.float32) / 255
    value *= 1 - alpha
    value += alpha * MAX_VALUE


def truth_record(anatomy: HandAnatomy, acquisition: Acquisition,
                 placement: Placement) -> dict[str, Any]:
    """Ground truth for one image (image coordinates: [row, col], integer = pixel centre)."""
    bones = {}
    if anatomy.variant != "non-hand":
        for name in METACARPALS:
            bone = anatomy.bone(name)
            proximal, distal = placement.rc(bone.proximal_xy), placement.rc(bone.distal_xy)
            axis = distal - proximal
            bones[name] = {
                "outer_radius_mm": bone.outer_radius_mm,
                "inner_radius_mm": bone.inner_radius_mm,
                "cortical_thickness_mm": bone.cortical_thickness_mm,
                "width_mm": 2 * bone.outer_radius_mm,
                "medullary_width_mm": 2 * bone.inner_radius_mm,
                "length_mm": bone.length_mm,
                "midshaft_center_rc": _pair(placement.rc(bone.midshaft_xy)),
                "axis_angle_deg": round(math.degrees(math.atan2(-axis[0], axis[1])), 4),
                "proximal_rc": _pair(proximal),
                "distal_rc": _pair(distal),
                "shaft_fraction": [bone.shaft_start, bone.shaft_end],
            }
    acq = asdict(acquisition)
    return {
        "anatomy_id": anatomy.anatomy_id,
        "variant": anatomy.variant,
        "pixel_spacing_mm": acquisition.pixel_spacing_mm,
        "imager_pixel_spacing_mm": acquisition.imager_pixel_spacing_mm,
        "magnification": acquisition.magnification,
        "laterality": acquisition.laterality,
        "rotation_deg": acquisition.rotation_deg,
        "fingers": acquisition.fingers,
        "blur_sigma_mm": acquisition.blur_sigma_mm,
        "osteoporotic": anatomy.osteoporotic,
        "edge_enhancement": {"sigma_mm": acquisition.edge_sigma_mm,
                             "gain": acquisition.edge_gain},
        "rows": placement.rows,
        "cols": placement.cols,
        "acquisition": acq,
        "bones": bones,
    }


def _pair(rc: np.ndarray) -> list[float]:
    return [round(float(rc[0]), 4), round(float(rc[1]), 4)]
