"""Projected hollow tube: the profile model fitted across a metacarpal shaft.

A shaft is modelled as a tube (outer radius R, inner radius r, the canal may sit off
centre). Across the axis its projection is a weighted sum of two disc chords,
``A_o * chord(x; c_o, R) + A_i * chord(x; c_i, r)`` (A_i < 0: the canal attenuates
less than the cortex), on a smooth soft-tissue baseline, blurred by the system's
point spread function. The amplitudes are free, so no LUT or calibration is assumed.

The blur is evaluated in closed form: a disc chord has an elementary second
antiderivative, and a piecewise-linear Gaussian kernel (a sum of triangles) applied to
a function is a sum of second differences of its second antiderivative. That is exact
for the kernel used, cheap, and free of the discretisation bias of a sampled grid.

``render_tube_image`` draws an analytic reference radiograph of such a tube (finite
pixel aperture, Gaussian blur, optional unsharp masking, noise) to verify the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Piecewise-linear Gaussian kernel: triangles at z = k * _KERNEL_STEP sd, |z| <= 3.6 sd.
_KERNEL_STEP = 0.6
_KERNEL_NODES = np.arange(-6, 7) * _KERNEL_STEP
_KERNEL_WEIGHTS = np.exp(-0.5 * _KERNEL_NODES**2)
_KERNEL_WEIGHTS /= _KERNEL_WEIGHTS.sum()
# The sum of triangles of half-width h has variance sum(w z^2) + h^2/6: rescale so the
# kernel's standard deviation equals the requested sigma exactly.
_KERNEL_SCALE = 1.0 / np.sqrt(np.sum(_KERNEL_WEIGHTS * _KERNEL_NODES**2) + _KERNEL_STEP**2 / 6)
# Second differences of the triangle weights give one coefficient per shifted evaluation.
_PADDED = np.concatenate([[0.0], _KERNEL_WEIGHTS, [0.0]])
_SHIFT_NODES = np.arange(-7, 8) * _KERNEL_STEP
_SHIFT_COEFFS = np.concatenate([[0.0], _PADDED, [0.0]])
_SHIFT_COEFFS = _SHIFT_COEFFS[2:] - 2 * _SHIFT_COEFFS[1:-1] + _SHIFT_COEFFS[:-2]

# A detector pixel integrates over its width: variance 1/12 px^2 added to the PSF.
PIXEL_APERTURE_VARIANCE = 1.0 / 12.0


def _chord_second_antiderivative(y: np.ndarray, radius: float) -> np.ndarray:
    """Second antiderivative (zero left of the disc) of the chord 2*sqrt(R^2 - y^2)."""
    r2 = radius * radius
    yc = np.minimum(np.maximum(y, -radius), radius)
    y2 = yc * yc
    out = np.sqrt(r2 - y2) * (2 * r2 + y2) / 3
    out += r2 * yc * (np.arcsin(yc / radius) + 0.5 * np.pi)
    out += np.pi * r2 * np.maximum(y - radius, 0.0)
    return out


def blurred_chord(x: np.ndarray, center: float, radius: float, sigma: float) -> np.ndarray:
    """Chord length 2*sqrt(R^2 - (x-c)^2) of a disc, convolved with a Gaussian of sd sigma.

    ``sigma`` must be > 0 (include the pixel aperture); units are those of ``x``.
    """
    step = sigma * _KERNEL_SCALE * _KERNEL_STEP
    shifts = (x - center)[:, None] - (sigma * _KERNEL_SCALE) * _SHIFT_NODES[None, :]
    return _chord_second_antiderivative(shifts, radius) @ _SHIFT_COEFFS / (step * step)


@dataclass(frozen=True)
class TubeEdges:
    """Four edge positions across the axis (px): outer a < inner a < inner b < outer b."""

    outer_a: float
    inner_a: float
    inner_b: float
    outer_b: float

    @property
    def width(self) -> float:
        return self.outer_b - self.outer_a

    @property
    def thickness(self) -> float:
        """Mean cortical thickness of the two sides."""
        return 0.5 * ((self.inner_a - self.outer_a) + (self.outer_b - self.inner_b))

    @property
    def center(self) -> float:
        return 0.5 * (self.outer_a + self.outer_b)


@dataclass(frozen=True)
class TubeFit:
    edges: TubeEdges
    sigma: float  # total blur of the fit (PSF and pixel aperture), px
    cortex_amplitude: float  # A_o: attenuation of cortex per px of path
    canal_amplitude: float  # A_i: canal minus cortex (negative for a hollow shaft)
    rms_residual: float
    success: bool
    coefficients: tuple[float, ...]  # linear part: the columns of ``tube_design``


def tube_design(x: np.ndarray, edges: TubeEdges, sigma: float) -> np.ndarray:
    """Columns of the linear model: outer chord, canal chord, baseline 1, u, u^2."""
    outer = blurred_chord(x, edges.center, 0.5 * edges.width, sigma)
    canal_center = 0.5 * (edges.inner_a + edges.inner_b)
    canal = blurred_chord(x, canal_center, 0.5 * (edges.inner_b - edges.inner_a), sigma)
    u = (x - edges.center) / max(edges.width, 1.0)
    return np.column_stack([outer, canal, np.ones_like(x), u, u * u])


def model_curve(x: np.ndarray, fit: TubeFit) -> np.ndarray:
    """The fitted profile (tube and baseline) evaluated at ``x``."""
    return tube_design(x, fit.edges, fit.sigma) @ np.asarray(fit.coefficients)


def _edges_from_params(p: np.ndarray) -> TubeEdges:
    outer_a, cortex_a, canal, cortex_b = p[:4]
    return TubeEdges(outer_a, outer_a + cortex_a, outer_a + cortex_a + canal,
                     outer_a + cortex_a + canal + cortex_b)


def fit_tube(x: np.ndarray, y: np.ndarray, weights: np.ndarray, start: TubeEdges,
             sigma: float, fit_sigma: bool = True, fit_shape: bool = True) -> TubeFit:
    """Least-squares fit of the blurred tube to one profile (variable projection).

    The edges (and the blur when ``fit_sigma``) are the nonlinear parameters; the two
    amplitudes and the quadratic baseline are solved linearly at every step. With
    ``fit_shape`` False only the position moves (for centring profiles on the axis).
    ``weights`` are the number of pixels behind each sample.
    """
    from scipy.optimize import least_squares

    sqrt_w = np.sqrt(weights)
    base = np.array([start.outer_a, start.inner_a - start.outer_a,
                     start.inner_b - start.inner_a, start.outer_b - start.inner_b])

    def unpack(q: np.ndarray) -> tuple[TubeEdges, float]:
        if fit_shape:
            p = q[:4]
        else:
            p = base.copy()
            p[0] += q[0]
        s = q[-1] if fit_sigma else sigma
        return _edges_from_params(p), s

    def residual(q: np.ndarray) -> np.ndarray:
        edges, s = unpack(q)
        design = tube_design(x, edges, s) * sqrt_w[:, None]
        coef, *_ = np.linalg.lstsq(design, y * sqrt_w, rcond=None)
        return design @ coef - y * sqrt_w

    min_part = 0.3  # px: below this a cortex or canal is not resolvable anyway
    if fit_shape:
        q0 = [*base]
        lower = [-np.inf, min_part, min_part, min_part]
        upper = [np.inf] * 4
    else:
        q0, lower, upper = [0.0], [-np.inf], [np.inf]
    if fit_sigma:
        q0.append(sigma)
        lower.append(np.sqrt(PIXEL_APERTURE_VARIANCE))
        upper.append(max(20.0, 2 * sigma))
    q0 = np.clip(np.asarray(q0, float), np.add(lower, 1e-6), np.subtract(upper, 1e-6))
    result = least_squares(residual, q0, bounds=(lower, upper), x_scale=1.0,
                           diff_step=1e-4, xtol=1e-6, ftol=1e-9, max_nfev=200)
    edges, s = unpack(result.x)
    design = tube_design(x, edges, s) * sqrt_w[:, None]
    coef, *_ = np.linalg.lstsq(design, y * sqrt_w, rcond=None)
    res = design @ coef - y * sqrt_w
    dof = max(len(y) - design.shape[1] - len(result.x), 1)
    rms = float(np.sqrt(np.sum(res**2) / dof))
    return TubeFit(edges=edges, sigma=float(s), cortex_amplitude=float(coef[0]),
                   canal_amplitude=float(coef[1]), rms_residual=rms,
                   success=bool(result.status > 0), coefficients=tuple(coef.tolist()))


def render_tube_image(shape: tuple[int, int], center_rc: tuple[float, float],
                      axis_angle_deg: float, outer_radius_px: float, inner_radius_px: float,
                      blur_sigma_px: float, *, canal_offset_px: float = 0.0,
                      cortex_mu: float = 1.0, marrow_mu: float = 0.25,
                      soft_tissue_mu: float = 0.2, soft_tissue_radius_px: float | None = None,
                      unsharp_amount: float = 0.0, unsharp_sigma_px: float = 10.0,
                      noise_sd: float = 0.0, supersample: int = 5,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """Analytic radiograph of an infinitely long tube (bone bright), float32.

    Path lengths are integrated over each pixel's area (supersampled), blurred by a
    Gaussian PSF, optionally edge-enhanced by unsharp masking, and given white noise.
    Attenuation: cortex ``cortex_mu`` per px of path, marrow ``marrow_mu``, soft tissue
    (a cylinder around the bone, displaced by it) ``soft_tissue_mu``. ``canal_offset_px``
    moves the canal towards side b (positive offsets across the axis).
    """
    rows, cols = shape
    f = supersample
    sub = (np.arange(f) + 0.5) / f - 0.5
    rr = (np.arange(rows)[:, None] + sub[None, :]).reshape(-1)
    cc = (np.arange(cols)[:, None] + sub[None, :]).reshape(-1)
    theta = np.deg2rad(axis_angle_deg)
    # Offset across the axis: normal n = (cos, sin) in (row, col), as in profile.py.
    across = ((rr[:, None] - center_rc[0]) * np.cos(theta)
              + (cc[None, :] - center_rc[1]) * np.sin(theta))

    def chord(d: np.ndarray, radius: float) -> np.ndarray:
        return 2 * np.sqrt(np.maximum(radius * radius - d * d, 0.0))

    outer = chord(across, outer_radius_px)
    canal = chord(across - canal_offset_px, inner_radius_px)
    soft_radius = soft_tissue_radius_px or 2.2 * outer_radius_px
    soft = chord(across, soft_radius) - outer
    image = cortex_mu * (outer - canal) + marrow_mu * canal + soft_tissue_mu * soft
    if blur_sigma_px > 0:
        image = ndimage.gaussian_filter(image, blur_sigma_px * f, mode="nearest")
    image = image.reshape(rows, f, cols, f).mean(axis=(1, 3))
    if unsharp_amount:
        smooth = ndimage.gaussian_filter(image, unsharp_sigma_px, mode="nearest")
        image = image + unsharp_amount * (image - smooth)
    if noise_sd:
        rng = rng or np.random.default_rng(0)
        image = image + rng.normal(0.0, noise_sd, image.shape)
    return image.astype(np.float32)
