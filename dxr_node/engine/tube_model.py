"""Projected hollow tube: the profile model fitted across a metacarpal shaft.

A shaft is modelled as a tube (outer radius R, inner radius r, the canal may sit off
centre). Across the axis its projection is a weighted sum of two disc chords,
``A_o * chord(x; c_o, R) + A_i * chord(x; c_i, r)`` (A_i < 0: the canal attenuates
less than the cortex), on a smooth soft-tissue baseline, blurred by the system's
point spread function. The amplitudes are free, so no LUT or calibration is assumed;
elliptical rather than circular sections only rescale the chords, which the amplitudes
absorb too. Optionally the blurred tube is edge-enhanced by an unsharp mask,
(1 + k) * tube - k * (tube blurred by a wide Gaussian of radius L); after the log, veiling
glare (scatter) looks much the same, and the term absorbs it too.

The blur is evaluated in closed form: a disc chord has an elementary second
antiderivative, and a piecewise-linear Gaussian kernel (a sum of triangles) applied to
a function is a sum of second differences of its second antiderivative. That is exact
for the kernel used, cheap, and free of the discretisation bias of a sampled grid.

``render_tube_image`` draws an analytic reference radiograph of such a tube (finite
pixel aperture, Gaussian blur, optional unsharp masking, noise) to verify the fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, overload

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


def _chord_integrals(y: np.ndarray, radius: float,
                     derivatives: bool) -> tuple[np.ndarray, ...]:
    """Second antiderivative F2 (zero left of the disc) of the chord 2*sqrt(R^2 - y^2),
    and with ``derivatives`` also F = dF2/dy and dF2/dR."""
    r2 = radius * radius
    yc = np.minimum(np.maximum(y, -radius), radius)
    y2 = yc * yc
    root = np.sqrt(r2 - y2)
    angle = np.arcsin(yc / radius) + 0.5 * np.pi
    beyond = np.maximum(y - radius, 0.0)
    f2 = root * (2 * r2 + y2) / 3 + r2 * yc * angle + np.pi * r2 * beyond
    if not derivatives:
        return (f2,)
    f1 = yc * root + r2 * angle
    f2_radius = 2 * radius * (root + yc * angle + np.pi * beyond)
    return f2, f1, f2_radius


@overload
def blurred_chord(x: np.ndarray, center: float, radius: float, sigma: float,
                  derivatives: Literal[False] = False) -> np.ndarray: ...
@overload
def blurred_chord(x: np.ndarray, center: float, radius: float, sigma: float,
                  derivatives: Literal[True]) -> tuple[np.ndarray, ...]: ...
@overload
def blurred_chord(x: np.ndarray, center: float, radius: float, sigma: float,
                  derivatives: bool) -> tuple[np.ndarray, ...] | np.ndarray: ...


def blurred_chord(x: np.ndarray, center: float, radius: float, sigma: float,
                  derivatives: bool = False) -> tuple[np.ndarray, ...] | np.ndarray:
    """Chord length 2*sqrt(R^2 - (x-c)^2) of a disc, convolved with a Gaussian of sd sigma.

    ``sigma`` must be > 0 (include the pixel aperture); units are those of ``x``. With
    ``derivatives`` returns (value, d/dcenter, d/dradius, d/dsigma).
    """
    scale = sigma * _KERNEL_SCALE
    norm = 1.0 / (scale * _KERNEL_STEP) ** 2
    shifts = (x - center)[:, None] - scale * _SHIFT_NODES[None, :]
    parts = _chord_integrals(shifts, radius, derivatives)
    value = parts[0] @ _SHIFT_COEFFS * norm
    if not derivatives:
        return value
    f1 = parts[1]
    d_center = -(f1 @ _SHIFT_COEFFS) * norm
    d_radius = parts[2] @ _SHIFT_COEFFS * norm
    d_sigma = -(f1 @ (_SHIFT_COEFFS * _SHIFT_NODES)) * norm * _KERNEL_SCALE - 2 * value / sigma
    return value, d_center, d_radius, d_sigma


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
    reference: tuple[float, float]  # (centre, width) that normalises the baseline
    unsharp: tuple[float, float]  # modelled edge enhancement (amount, radius px); 0 = none
    cost: float  # weighted sum of squared residuals


def _tube_columns(x: np.ndarray, edges: TubeEdges, sigma: float, unsharp: tuple[float, float],
                  derivatives: bool = False) -> list[tuple[np.ndarray, ...]]:
    """Outer and canal chords blurred by sigma and edge-enhanced by an unsharp mask
    (amount k, Gaussian radius L): (1 + k) B_sigma - k B_sqrt(sigma^2 + L^2), with the
    derivatives (d/dcenter, d/dradius, d/dsigma, d/dk, d/dL) when asked."""
    amount, radius = unsharp
    discs = ((edges.center, 0.5 * edges.width),
             (0.5 * (edges.inner_a + edges.inner_b), 0.5 * (edges.inner_b - edges.inner_a)))
    out: list[tuple[np.ndarray, ...]] = []
    for center, disc_radius in discs:
        wide_sigma = float(np.hypot(sigma, radius))
        if not derivatives:
            value = blurred_chord(x, center, disc_radius, sigma)
            if amount != 0:
                value = (1 + amount) * value - amount * blurred_chord(x, center, disc_radius,
                                                                      wide_sigma)
            out.append((value,))
            continue
        sharp = blurred_chord(x, center, disc_radius, sigma, True)
        if amount == 0:
            zero = np.zeros_like(x)
            out.append((*sharp, zero, zero))
            continue
        wide = blurred_chord(x, center, disc_radius, wide_sigma, True)
        value = (1 + amount) * sharp[0] - amount * wide[0]
        d_center = (1 + amount) * sharp[1] - amount * wide[1]
        d_radius = (1 + amount) * sharp[2] - amount * wide[2]
        d_sigma = (1 + amount) * sharp[3] - amount * wide[3] * (sigma / wide_sigma)
        d_amount = sharp[0] - wide[0]
        d_unsharp_radius = -amount * wide[3] * (radius / wide_sigma)
        out.append((value, d_center, d_radius, d_sigma, d_amount, d_unsharp_radius))
    return out


def tube_design(x: np.ndarray, edges: TubeEdges, sigma: float,
                reference: tuple[float, float] | None = None,
                unsharp: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Columns of the linear model: outer chord, canal chord, baseline 1, u, u^2.

    ``u`` is x relative to a reference (centre, width), by default the tube's own; any
    reference spans the same quadratic baseline."""
    center, width = reference or (edges.center, edges.width)
    (outer,), (canal,) = _tube_columns(x, edges, sigma, unsharp)
    u = (x - center) / max(width, 1.0)
    return np.column_stack([outer, canal, np.ones_like(x), u, u * u])


def model_curve(x: np.ndarray, fit: TubeFit) -> np.ndarray:
    """The fitted profile (tube and baseline) evaluated at ``x``."""
    design = tube_design(x, fit.edges, fit.sigma, fit.reference, fit.unsharp)
    return design @ np.asarray(fit.coefficients)


def _edges_from_params(p: np.ndarray) -> TubeEdges:
    outer_a, cortex_a, canal, cortex_b = p[:4]
    return TubeEdges(outer_a, outer_a + cortex_a, outer_a + cortex_a + canal,
                     outer_a + cortex_a + canal + cortex_b)


class _ProjectedModel:
    """Variable projection for one profile: residuals and their Jacobian (Kaufman's
    approximation) with respect to the nonlinear parameters
    q = (outer_a, cortex_a, canal, cortex_b[, sigma][, k, L]); amplitudes and baseline
    are solved by least squares at every q."""

    def __init__(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray,
                 reference: tuple[float, float], sigma: float | None, unsharp: bool) -> None:
        self.x = x
        self.sqrt_w = np.sqrt(weights)
        self.y_w = y * self.sqrt_w
        u = (x - reference[0]) / max(reference[1], 1.0)
        self.baseline = np.column_stack([np.ones_like(x), u, u * u]) * self.sqrt_w[:, None]
        self.fixed_sigma = sigma
        self.unsharp = unsharp
        self._cache_q: np.ndarray | None = None

    def split(self, q: np.ndarray) -> tuple[TubeEdges, float, tuple[float, float]]:
        sigma = self.fixed_sigma if self.fixed_sigma is not None else q[4]
        unsharp = (float(q[-2]), float(q[-1])) if self.unsharp else (0.0, 1.0)
        return _edges_from_params(q), float(sigma), unsharp

    def _evaluate(self, q: np.ndarray) -> None:
        if self._cache_q is not None and np.array_equal(q, self._cache_q):
            return
        edges, sigma, unsharp = self.split(q)
        outer, canal = _tube_columns(self.x, edges, sigma, unsharp, derivatives=True)
        w = self.sqrt_w
        design = np.column_stack([outer[0] * w, canal[0] * w, self.baseline])
        basis, upper = np.linalg.qr(design)
        coef = np.linalg.solve(upper, basis.T @ self.y_w)
        self.residual = design @ coef - self.y_w
        self.coef = coef
        # Derivatives of the fitted tube term along each parameter.
        o = [d * coef[0] for d in outer[1:]]
        i = [d * coef[1] for d in canal[1:]]
        columns = [o[0] + i[0],  # outer_a moves everything
                   0.5 * (o[0] + o[1]) + i[0],  # cortex_a
                   0.5 * (o[0] + o[1]) + 0.5 * (i[0] + i[1]),  # canal
                   0.5 * (o[0] + o[1])]  # cortex_b
        if self.fixed_sigma is None:
            columns.append(o[2] + i[2])
        if self.unsharp:
            columns += [o[3] + i[3], o[4] + i[4]]
        moved = np.column_stack(columns) * w[:, None]
        self.jacobian = moved - basis @ (basis.T @ moved)
        self._cache_q = q.copy()

    def fun(self, q: np.ndarray) -> np.ndarray:
        self._evaluate(q)
        return self.residual

    def jac(self, q: np.ndarray) -> np.ndarray:
        self._evaluate(q)
        return self.jacobian


def fit_tube(x: np.ndarray, y: np.ndarray, weights: np.ndarray, start: TubeEdges,
             sigma: float, fit_sigma: bool = True,
             unsharp: tuple[float, float] | None = None) -> TubeFit:
    """Least-squares fit of the blurred tube to one profile.

    The edges (and the blur when ``fit_sigma``) are the nonlinear parameters; the two
    amplitudes and the quadratic baseline are solved linearly at every step (variable
    projection, analytic Jacobian). ``weights`` are the number of pixels behind each
    sample; ``sigma`` is the total blur (PSF and pixel aperture) to start from or keep.
    ``unsharp`` = (amount, radius px) to start from fits an unsharp-mask edge
    enhancement too.
    """
    from scipy.optimize import least_squares

    reference = (start.center, start.width)
    model = _ProjectedModel(x, y, weights, reference, None if fit_sigma else sigma,
                            unsharp is not None)
    min_part = 0.3  # px: below this a cortex or canal is not resolvable anyway
    q0 = [start.outer_a, start.inner_a - start.outer_a, start.inner_b - start.inner_a,
          start.outer_b - start.inner_b]
    lower = [-np.inf, min_part, min_part, min_part]
    upper = [np.inf] * 4
    if fit_sigma:
        q0.append(sigma)
        lower.append(np.sqrt(PIXEL_APERTURE_VARIANCE))
        upper.append(max(20.0, 2 * sigma))
    if unsharp is not None:
        q0 += list(unsharp)
        lower += [0.0, 0.5]
        upper += [5.0, max(2.0 * start.width, 2.0 * unsharp[1])]
    q0 = np.clip(np.asarray(q0, float), np.add(lower, 1e-6), np.subtract(upper, 1e-6))
    result = least_squares(model.fun, q0, jac=model.jac, bounds=(lower, upper),
                           xtol=1e-7, ftol=1e-10, max_nfev=100)
    model._evaluate(result.x)
    edges, fitted_sigma, fitted_unsharp = model.split(result.x)
    dof = max(len(y) - 5 - len(result.x), 1)
    coef = model.coef
    return TubeFit(edges=edges, sigma=fitted_sigma,
                   cortex_amplitude=float(coef[0]), canal_amplitude=float(coef[1]),
                   rms_residual=float(np.sqrt(np.sum(model.residual**2) / dof)),
                   success=bool(result.status > 0), coefficients=tuple(coef.tolist()),
                   reference=reference, unsharp=fitted_unsharp,
                   cost=float(np.sum(model.residual**2)))


def unsharp_candidate(x: np.ndarray, y: np.ndarray, weights: np.ndarray, fit: TubeFit,
                      radii: np.ndarray) -> float:
    """How much an unsharp-mask term could lower the cost of ``fit`` at most, cheaply:
    with edges and blur kept, the enhanced model is linear once the mask's wide chords
    get amplitudes of their own. The best reduction over the candidate mask radii."""
    sqrt_w = np.sqrt(weights)
    plain = tube_design(x, fit.edges, fit.sigma, fit.reference)
    best = 0.0
    for radius in radii:
        (outer,), (canal,) = _tube_columns(x, fit.edges, float(np.hypot(fit.sigma, radius)),
                                           (0.0, 1.0))
        design = np.column_stack([plain, outer, canal]) * sqrt_w[:, None]
        coef, *_ = np.linalg.lstsq(design, y * sqrt_w, rcond=None)
        best = max(best, fit.cost - float(np.sum((design @ coef - y * sqrt_w) ** 2)))
    return best


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
