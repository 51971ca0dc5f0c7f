"""Sub-pixel cortical thickness and outer width at a metacarpal mid-shaft.

The shaft is measured by fitting a blurred projected tube (``tube_model``) to profiles
across the bone axis rather than by locating steepest gradients: blur moves a gradient
maximum about 0.74 sigma inside the true outer edge, and a model that includes the blur
does not have that bias.

Profiles come straight from the pixels, without interpolation: every pixel of the band
gets its coordinates (t along the axis, u across it) and pixels are averaged in thin
bins of u. A bone axis that is not aligned with the pixel grid then yields a profile
sampled finer than the pixel pitch (as in the slanted-edge method), and no interpolation
kernel blurs or biases it.

Steps: sample the band; fit the mean profile; centre groups of adjacent profiles and
fit a line through their centres to refine the axis (repeat once); fit each group with
the bone's blur fixed; reject outlier groups; fit the mean profile of the accepted
groups, de-tapered (real shafts narrow along the band), for the reported values (with an
unsharp-mask term when that explains it clearly better) and report the spread over groups.

On real, display-processed radiographs (non-linear LUTs, rounded cortical peaks) a free
blur can run away into a degenerate thin-shell fit; such a fit is replaced by the best of
fits at fixed plausible blurs (``blur_source`` "fallback"), and a result whose cortex the
blur does not resolve always carries a ``problem``. ``shared_blur_px`` gives the blur of
an image's other bones to re-measure a fallen-back shaft with.

Known limit: the model blurs in the domain of the stored values. Detectors blur light
(intensity) before the log, which makes a strongly attenuating cortex read slightly
thin, about 0.1-0.2 sigma per edge on the phantoms (T -0.01 mm on average, -0.025 mm at
0.15 mm blur). It is the same on every acquisition, so precision does not suffer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dxr_node.engine.tube_model import (
    PIXEL_APERTURE_VARIANCE,
    TubeEdges,
    TubeFit,
    fit_tube,
    model_curve,
    unsharp_candidate,
)

BIN_PX = 0.5  # width of the bins across the axis that pixels are averaged in
MIN_GROUPS_ACCEPTED = 3
AXIS_REFINEMENTS = 2
# A real mid-shaft tapers: over a band of 20 % of the bone's length its outer width changes
# by up to about 18 % (range over the groups, 10 adolescent radiographs). The mean profile,
# de-tapered, still gives the width at the band's centre. A wider range means the band
# reaches the flaring metaphysis.
MAX_WIDTH_CHANGE = 0.25
# Per-group cortices of real shafts are noisy (trabecular endosteum): their linear trend
# over the band reaches 77 % of T on those radiographs; a band moved 22 mm towards a
# phantom's head shows 130 %.
MAX_THICKNESS_TREND = 1.0
# Groups of profiles along a sound band agree on T within a quarter of it (1 SD).
MAX_THICKNESS_SPREAD = 0.25
# A cortex thinner than this many blur sigmas (or than MIN_CORTEX_PX) is not resolved. On
# real, display-processed images a free fit can trade thickness for blur: a thin shell with
# huge opposite amplitudes, blurred a lot, mimics rounded cortical peaks (T 0.3 px, blur
# 4-5 px where the cortex is plainly 10 px thick).
MIN_CORTEX_SIGMAS = 1.5
MIN_CORTEX_PX = 1.0
# Callers size the search half-width at about 1.1 times the expected width (real
# radiographs: fitted W / half-width 0.74-0.98); a fit far narrower found something else,
# e.g. a cortex seen from a centre beside the shaft.
MIN_WIDTH_OF_SEARCH = 0.4
# A display window that saturates the bone flattens the canal dip and reads T up to 40 %
# thin. Bone pixels within MAX_GREY_FRACTION of the image's top grey value: none on the
# real radiographs, 16-26 % on phantom exports through a saturating sigmoid.
MAX_GREY_FRACTION = 0.02
MAX_SATURATED_BONE = 0.12
# Total blurs (px, pixel aperture included) tried with the blur fixed when a free fit
# degenerates; the best non-degenerate one is kept.
FALLBACK_SIGMAS = (0.6, 1.0, 1.6, 2.5)


EDGE_AT_WINDOW_BORDER = "bone edge at the border of the search window"


@dataclass(frozen=True)
class ShaftMeasurement:
    """Result of ``measure_shaft``; all lengths in pixels.

    Edge offsets and ``center_offset_px`` are measured from the given centre along the
    given across-axis direction ``(cos a, sin a)`` in (row, col) for axis angle ``a``;
    side "a" is the negative side (the left of the image for fingers up).
    ``axis_angle_deg`` is the refined axis, ``center_rc`` the fitted shaft centre.
    """

    cortical_thickness_px: float  # mean of the two cortices
    width_px: float  # outer (periosteal) width
    medullary_width_px: float
    outer_a_px: float
    inner_a_px: float
    inner_b_px: float
    outer_b_px: float
    center_offset_px: float  # fitted centre relative to the given axis
    center_rc: tuple[float, float]
    axis_angle_deg: float
    blur_sigma_px: float  # Gaussian PSF sigma estimated by the fit (pixel aperture excluded)
    n_profiles: int  # accepted profiles (one per pixel along the axis)
    n_rejected: int
    thickness_sd_px: float  # spread over accepted groups of profiles
    width_sd_px: float
    problem: str | None  # None when trustworthy; else a specific reason
    # Where the blur comes from: "fitted" to this shaft, "given" by the caller, or
    # "fallback": the free fit degenerated and the best of a few fixed blurs was kept
    # (re-measuring with ``shared_blur_px`` of the image's other bones is better).
    blur_source: str = "fitted"
    # The problem is the band's shape changing along it (it reaches a flaring bone end);
    # a shorter band around the same centre may still be measurable.
    band_flares: bool = False


@dataclass(frozen=True)
class _Band:
    """Pixels of the band in axis coordinates."""

    t: np.ndarray  # along the axis, px
    u: np.ndarray  # across the axis, px
    value: np.ndarray
    clipped: np.ndarray  # bool: not finite, or flat like saturation, padding or a mask


@dataclass(frozen=True)
class _Profile:
    x: np.ndarray  # mean u of the pixels in each non-empty bin
    y: np.ndarray
    count: np.ndarray


def measure_shaft(pixels: np.ndarray, center_rc: tuple[float, float], axis_angle_deg: float,
                  band_half_length_px: float, search_half_width_px: float,
                  min_width_px: float = 8.0,
                  blur_sigma_px: float | None = None) -> ShaftMeasurement:
    """Measure outer width and cortical thickness of a shaft around ``center_rc``.

    ``pixels``: 2-D image, bone bright. ``axis_angle_deg``: bone axis, degrees
    counter-clockwise from +column with rows down (fingers up = 90). Profiles cover
    ``+-band_half_length_px`` along the axis and ``+-search_half_width_px`` across it.
    ``blur_sigma_px`` (PSF sigma, e.g. from another bone of the same image) fixes the
    blur instead of estimating it. Failures are reported in ``problem``, not raised,
    except for arguments that can never work (ValueError).
    """
    image = np.asarray(pixels)
    if image.ndim != 2:
        raise ValueError(f"pixels must be a 2-D array, got shape {image.shape}")
    if not (band_half_length_px >= 1 and search_half_width_px >= 4):
        raise ValueError("band_half_length_px must be >= 1 and search_half_width_px >= 4")
    if not all(math.isfinite(v) for v in (*center_rc, axis_angle_deg)):
        raise ValueError("center_rc and axis_angle_deg must be finite")
    if blur_sigma_px is not None and not (math.isfinite(blur_sigma_px) and blur_sigma_px >= 0):
        raise ValueError(f"blur_sigma_px must be a finite value >= 0, got {blur_sigma_px}")
    fixed_sigma = None
    if blur_sigma_px is not None:
        fixed_sigma = math.sqrt(blur_sigma_px**2 + PIXEL_APERTURE_VARIANCE)
    measurer = _Measurer(image, center_rc, axis_angle_deg, band_half_length_px,
                         search_half_width_px, min_width_px, fixed_sigma)
    try:
        return measurer.run()
    except np.linalg.LinAlgError:  # e.g. a fit window with too few distinct positions
        return _failed("profile fit is singular (no distinct bone profile)",
                       np.asarray(center_rc, float), float(axis_angle_deg))


def shared_blur_px(shafts: Iterable[ShaftMeasurement]) -> float | None:
    """One blur for a whole image: the median PSF sigma of the shafts measured without a
    problem whose blur was fitted to them, or None when there is none. Pass it as
    ``blur_sigma_px`` to re-measure a shaft whose own fit had to fall back."""
    fitted = [s.blur_sigma_px for s in shafts if s.problem is None and s.blur_source == "fitted"]
    return float(np.median(fitted)) if fitted else None


def _directions(angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (d_row, d_col) along the axis and across it (+u)."""
    theta = math.radians(angle_deg)
    along = np.array([-math.sin(theta), math.cos(theta)])
    across = np.array([math.cos(theta), math.sin(theta)])
    return along, across


def _failed(problem: str, center: np.ndarray, angle: float) -> ShaftMeasurement:
    nan = float("nan")
    return ShaftMeasurement(nan, nan, nan, nan, nan, nan, nan, nan,
                            (float(center[0]), float(center[1])), float(angle), nan,
                            0, 0, nan, nan, problem)


class _Measurer:
    def __init__(self, image: np.ndarray, center_rc: tuple[float, float], angle_deg: float,
                 half_length: float, half_width: float, min_width: float,
                 fixed_sigma: float | None) -> None:
        self.image = image
        self.given_center = np.asarray(center_rc, float)
        self.given_angle = float(angle_deg)
        self.half_length = float(half_length)
        self.half_width = float(half_width)
        self.min_width = float(min_width)
        self.fixed_sigma = fixed_sigma
        self.fell_back = False  # the last free-blur fit degenerated (see ``fit``)
        self.n_groups = int(np.clip(2 * self.half_length // 6, MIN_GROUPS_ACCEPTED, 8))

    # -- sampling ---------------------------------------------------------------------

    def sample(self, center: np.ndarray, angle_deg: float) -> _Band:
        along, across = _directions(angle_deg)
        corners = [center + sa * self.half_length * along + sb * self.half_width * across
                   for sa in (-1, 1) for sb in (-1, 1)]
        low = np.floor(np.min(corners, axis=0)).astype(int)
        high = np.ceil(np.max(corners, axis=0)).astype(int) + 1
        low = np.maximum(low, 0)
        high = np.minimum(high, self.image.shape)
        rows = np.arange(low[0], max(high[0], low[0]))[:, None] - center[0]
        cols = np.arange(low[1], max(high[1], low[1]))[None, :] - center[1]
        t = rows * along[0] + cols * along[1]
        u = rows * across[0] + cols * across[1]
        inside = (np.abs(t) <= self.half_length) & (np.abs(u) <= self.half_width)
        block = self.image[low[0]:high[0], low[1]:high[1]]
        value = block[inside].astype(np.float64)
        bad = ~np.isfinite(value)
        value[bad] = 0.0
        clipped = bad | _flat_pixels(block)[inside]
        return _Band(t[inside], u[inside], value, clipped)

    def profile(self, band: _Band, select: np.ndarray | None = None) -> _Profile:
        u, value = (band.u, band.value) if select is None else (band.u[select],
                                                                band.value[select])
        n_bins = int(math.ceil(2 * self.half_width / BIN_PX)) + 1
        index = np.clip(((u + self.half_width) / BIN_PX).astype(int), 0, n_bins - 1)
        count = np.bincount(index, minlength=n_bins)
        sum_u = np.bincount(index, u, minlength=n_bins)
        sum_v = np.bincount(index, value, minlength=n_bins)
        keep = count > 0
        return _Profile(sum_u[keep] / count[keep], sum_v[keep] / count[keep],
                        count[keep].astype(float))

    def group_masks(self, band: _Band) -> list[np.ndarray]:
        edges = np.linspace(-self.half_length, self.half_length, self.n_groups + 1)
        index = np.clip(np.searchsorted(edges, band.t, side="right") - 1, 0, self.n_groups - 1)
        return [index == g for g in range(self.n_groups)]

    # -- fitting ----------------------------------------------------------------------

    def window(self, prof: _Profile, edges: TubeEdges, sigma: float) -> np.ndarray:
        """Bins used for a fit: the bone plus soft tissue on both sides, stopping at the
        gap to a neighbouring bone (the profile's minimum) when there is one."""
        radius = 0.5 * edges.width
        margin = max(0.6 * radius, 4 * sigma, 4.0)
        smooth = ndimage.gaussian_filter1d(prof.y, 2.0) if prof.y.size > 4 else prof.y
        keep = np.ones(prof.x.size, bool)
        # Always keep the blurred edge and an edge-enhancement undershoot next to it.
        least = max(3 * sigma, 0.25 * radius)
        for sign, edge in ((-1, edges.outer_a), (1, edges.outer_b)):
            beyond = sign * (prof.x - edge)
            zone = (beyond >= least) & (beyond <= margin)
            limit = margin
            if zone.any():
                lowest = np.argmin(np.where(zone, smooth, np.inf))
                limit = max(beyond[lowest], least)
            keep &= beyond <= limit
        return keep

    def fit(self, prof: _Profile, start: TubeEdges, sigma: float, fit_sigma: bool,
            fallback_sigmas: tuple[float, ...] = FALLBACK_SIGMAS) -> tuple[TubeFit, np.ndarray]:
        """Fit one profile; a free-blur fit that degenerates (see ``_degenerate``) is
        replaced by the best of fits with the blur fixed at ``fallback_sigmas``."""
        keep = self.window(prof, start, sigma)
        x, y, w = prof.x[keep], prof.y[keep], prof.count[keep]
        result = fit_tube(x, y, w, start, sigma, fit_sigma=fit_sigma)
        self.fell_back = False
        if not fit_sigma or not _degenerate(result):
            return result, keep
        self.fell_back = True
        for fixed in fallback_sigmas:
            trial = fit_tube(x, y, w, start, fixed, fit_sigma=False)
            if trial.success and not _degenerate(trial) and (
                    _degenerate(result) or trial.cost < result.cost):
                result = trial
        return result, keep

    def with_edge_enhancement(self, prof: _Profile, keep: np.ndarray, plain: TubeFit) -> TubeFit:
        """Refit with an unsharp-mask term (processed CR/DX images overshoot at edges; a
        mask radius near the cortical thickness otherwise thins T by up to 0.06 mm).
        Kept only when it explains the profile clearly better than the plain model."""
        x, y, w = prof.x[keep], prof.y[keep], prof.count[keep]
        significant = 25 * plain.cost / max(y.size - 9, 1)  # in units of the noise variance
        radii = plain.edges.width * np.geomspace(0.05, 1.0, 10)
        if unsharp_candidate(x, y, w, plain, radii) < significant:
            return plain  # even a looser model with a mask gains too little
        best = plain
        for fraction in (0.12, 0.4):  # mask radius to start from, relative to the width
            trial = fit_tube(x, y, w, plain.edges, plain.sigma,
                             fit_sigma=self.fixed_sigma is None,
                             unsharp=(0.5, fraction * plain.edges.width))
            if trial.success and not _degenerate(trial) and trial.cost < best.cost:
                best = trial
        return best if plain.cost - best.cost > significant else plain

    # -- the measurement --------------------------------------------------------------

    def run(self) -> ShaftMeasurement:
        center, angle = self.given_center.copy(), self.given_angle
        band = self.sample(center, angle)
        if band.value.size < 20:
            return _failed("shaft band lies outside the image", center, angle)
        prof = self.profile(band)
        start = _initial_edges(prof, self.half_width)
        if start is None:
            return _failed("no bone profile found in the search window", center, angle)
        sigma = self.fixed_sigma or 1.0
        overall, _ = self.fit(prof, start, sigma, fit_sigma=self.fixed_sigma is None)

        for _ in range(AXIS_REFINEMENTS):
            shift, slope = self.axis_correction(band, overall)
            if shift is None or slope is None or (abs(shift) < 0.05 and abs(slope) < 0.002):
                break
            center = center + shift * _directions(angle)[1]
            angle -= math.degrees(math.atan(slope))
            band = self.sample(center, angle)
            prof = self.profile(band)
            moved = _shift_edges(overall.edges, -shift)
            overall, _ = self.fit(prof, moved, overall.sigma,
                                  fit_sigma=self.fixed_sigma is None)
        return self.final(band, overall, center, angle, self.fell_back)

    def axis_correction(self, band: _Band,
                        overall: TubeFit) -> tuple[float, float] | tuple[None, None]:
        """Line through the centres of the profile groups: (offset at t=0, slope du/dt).

        Each group is centred by matching it to the fitted mean profile (a template
        shifted by Gauss-Newton steps), far cheaper than a fit per group."""
        step = 0.05
        grid = np.arange(overall.edges.outer_a - self.half_width,
                         overall.edges.outer_b + self.half_width, step)
        template = model_curve(grid, overall)
        slope_of_template = np.gradient(template, step)
        t_mid, centers = [], []
        for mask in self.group_masks(band):
            if mask.sum() < 20:
                continue
            prof = self.profile(band, mask)
            keep = self.window(prof, overall.edges, overall.sigma)
            shift = _match_shift(prof.x[keep], prof.y[keep], prof.count[keep], grid,
                                 template, slope_of_template)
            if shift is not None:
                t_mid.append(float(band.t[mask].mean()))
                centers.append(overall.edges.center + shift)
        if len(centers) < MIN_GROUPS_ACCEPTED:
            return None, None
        t_arr, c_arr = np.array(t_mid), np.array(centers)
        slope, offset = np.polyfit(t_arr, c_arr, 1)
        residual = np.abs(c_arr - (slope * t_arr + offset))
        inliers = residual <= max(3 * 1.4826 * np.median(residual), 0.5)
        if inliers.sum() >= MIN_GROUPS_ACCEPTED:
            slope, offset = np.polyfit(t_arr[inliers], c_arr[inliers], 1)
        return float(offset), float(slope)

    def final(self, band: _Band, overall: TubeFit, center: np.ndarray, angle: float,
              overall_fell_back: bool) -> ShaftMeasurement:
        if overall.cortex_amplitude <= 0 or overall.canal_amplitude >= 0:
            return _failed("no hollow shaft found around the given centre", center, angle)
        reach = self.half_width - 2 * overall.sigma
        if overall.edges.outer_a < -reach or overall.edges.outer_b > reach:
            return _failed("the bone is not inside the search window (centre too far off?)",
                           center, angle)
        if overall.edges.width < MIN_WIDTH_OF_SEARCH * self.half_width:
            return _failed(f"outer width {overall.edges.width:.1f} px is far narrower than the "
                           "search window expects (centre off the bone?)", center, angle)
        masks = self.group_masks(band)
        groups: list[TubeFit | None] = []
        for mask in masks:
            if mask.sum() < 20:
                groups.append(None)
                continue
            # A blur that the mean profile could only get by falling back (its edges
            # smeared by a taper, say) is no good to impose on the groups: they fit their
            # own, and only where that degenerates too take the mean profile's.
            fitted, _ = self.fit(self.profile(band, mask), overall.edges, overall.sigma,
                                 fit_sigma=overall_fell_back,
                                 fallback_sigmas=(overall.sigma,))
            groups.append(fitted)
        group_t = [float(band.t[mask].mean()) if mask.any() else 0.0 for mask in masks]
        accepted = _accept_groups(groups, group_t)
        profiles_per_group = 2 * self.half_length / self.n_groups
        n_accepted = int(round(profiles_per_group * sum(accepted)))
        n_rejected = int(round(profiles_per_group * (len(groups) - sum(accepted))))
        if sum(accepted) < max(MIN_GROUPS_ACCEPTED, (len(groups) + 1) // 2):
            return _failed(f"too few consistent profile groups ({sum(accepted)} of "
                           f"{len(groups)})", center, angle)
        select = np.zeros(band.t.size, bool)
        for mask, ok in zip(masks, accepted, strict=True):
            if ok:
                select |= mask
        kept = [g for g, ok in zip(groups, accepted, strict=True) if ok and g is not None]
        kept_t = np.array([t for t, ok in zip(group_t, accepted, strict=True) if ok])
        widths = np.array([g.edges.width for g in kept])
        taper = float(np.polyfit(kept_t, widths, 1)[0])  # d(width)/dt
        prof = self.profile(_detapered(band, overall.edges.center, taper), select)
        plain, keep = self.fit(prof, overall.edges, overall.sigma,
                               fit_sigma=self.fixed_sigma is None)
        blur_source = ("given" if self.fixed_sigma is not None
                       else "fallback" if self.fell_back else "fitted")
        result = self.with_edge_enhancement(prof, keep, plain)
        edges = result.edges
        fitted_center = center + edges.center * _directions(angle)[1]
        given_across = _directions(self.given_angle)[1]
        offset = float(np.dot(fitted_center - self.given_center, given_across))
        problem = self.problem(result, prof, keep, band, select, n_accepted)
        band_flares = False
        if problem is None:
            problem = self.shaft_change(groups, kept, kept_t)
            band_flares = problem is not None
        self.final_fit, self.final_profile = result, (prof, keep)  # for diagnostic plots
        return ShaftMeasurement(
            cortical_thickness_px=edges.thickness,
            width_px=edges.width,
            medullary_width_px=edges.inner_b - edges.inner_a,
            outer_a_px=offset + edges.outer_a - edges.center,
            inner_a_px=offset + edges.inner_a - edges.center,
            inner_b_px=offset + edges.inner_b - edges.center,
            outer_b_px=offset + edges.outer_b - edges.center,
            center_offset_px=offset,
            center_rc=(float(fitted_center[0]), float(fitted_center[1])),
            axis_angle_deg=angle,
            blur_sigma_px=math.sqrt(max(result.sigma**2 - PIXEL_APERTURE_VARIANCE, 0.0)),
            n_profiles=n_accepted,
            n_rejected=n_rejected,
            thickness_sd_px=float(np.std([g.edges.thickness for g in kept], ddof=1)),
            width_sd_px=float(np.std([g.edges.width for g in kept], ddof=1)),
            problem=problem,
            blur_source=blur_source,
            band_flares=band_flares,
        )

    def shaft_change(self, groups: list[TubeFit | None], kept: list[TubeFit],
                     kept_t: np.ndarray) -> str | None:
        """Flag a band that reaches the metaphysis: the width spreads more than a tapering
        mid-shaft's (range over every resolved group, outliers too: a flare is what they
        may show), or the cortex thins steadily along the band as the shaft widens into
        the head."""
        # A group whose width overran the search window diverged: it resolved nothing
        # (one such on a real film claimed a change of 21353 %).
        resolved = [g.edges.width for g in groups if g is not None and g.success
                    and g.cortex_amplitude > 0 and not _degenerate(g)
                    and g.edges.width <= 2 * self.half_width]
        change = (max(resolved) - min(resolved)) / float(np.median(resolved))
        if change > MAX_WIDTH_CHANGE:
            return (f"outer width changes by {100 * change:.0f} % along the band "
                    "(it reaches beyond the mid-shaft?)")
        thickness = np.array([g.edges.thickness for g in kept])
        spread = float(np.std(thickness, ddof=1) / np.median(thickness))
        if spread > MAX_THICKNESS_SPREAD:
            return (f"cortical thickness varies by {100 * spread:.0f} % between profile groups"
                    " along the band")
        trend = np.polyfit(kept_t, thickness, 1)[0] * 2 * self.half_length
        if abs(trend) > MAX_THICKNESS_TREND * float(np.median(thickness)):
            return (f"cortical thickness changes by {100 * abs(trend) / np.median(thickness):.0f}"
                    " % along the band (it reaches beyond the mid-shaft?)")
        return None

    def problem(self, result: TubeFit, prof: _Profile, keep: np.ndarray, band: _Band,
                select: np.ndarray, n_profiles: int) -> str | None:
        edges = result.edges
        if not result.success:
            return "profile fit did not converge"
        if result.cortex_amplitude <= 0:
            return "no bright shaft: profile does not look like bone"
        if _degenerate(result):
            return (f"cortex not resolved (fit gives {edges.thickness:.1f} px at a blur of "
                    f"{result.sigma:.1f} px)")
        if not self.min_width <= edges.width <= 2 * self.half_width - 4 * result.sigma:
            return (f"outer width {edges.width:.1f} px outside "
                    f"{self.min_width:.1f}..{2 * self.half_width:.1f} px")
        if result.canal_amplitude >= 0 or edges.inner_b - edges.inner_a < 1.0:
            return "medullary canal not resolved"
        side_a = edges.inner_a - edges.outer_a
        side_b = edges.outer_b - edges.inner_b
        if min(side_a, side_b) < 0.3 * max(side_a, side_b):
            return f"inconsistent cortices ({side_a:.1f} vs {side_b:.1f} px)"
        low, high = prof.x[keep].min(), prof.x[keep].max()
        if low > edges.outer_a - 2 * result.sigma or high < edges.outer_b + 2 * result.sigma:
            return EDGE_AT_WINDOW_BORDER
        in_window = select & (band.u >= low) & (band.u <= high)
        if in_window.sum() < 0.9 * (high - low) * n_profiles:  # one pixel per px^2
            return "edge of the image field inside the search window"
        if band.clipped[in_window].mean() > 0.02:
            return "saturated or constant pixels inside the search window"
        bone = select & (band.u >= edges.outer_a) & (band.u <= edges.outer_b)
        top = np.nanmax(self.image)
        near_top = band.value[bone] >= top - MAX_GREY_FRACTION * (top - np.nanmin(self.image))
        if near_top.mean() > MAX_SATURATED_BONE:
            return (f"bone saturated by the display window ({100 * near_top.mean():.0f} % of "
                    "its pixels at the top of the grey range)")
        return None


def _flat_pixels(block: np.ndarray) -> np.ndarray:
    """Pixels in a constant 3x3 patch at the block's lowest or highest value: saturation,
    padding, collimator masks. Noise makes that rare in real exposures, and flat JPEG
    blocks at intermediate values are not counted."""
    finite = np.where(np.isfinite(block), block, np.nan)
    if min(block.shape) < 3 or np.all(np.isnan(finite)):
        return np.zeros(block.shape, bool)
    constant = (ndimage.maximum_filter(block, 3, mode="nearest")
                == ndimage.minimum_filter(block, 3, mode="nearest"))
    extreme = (finite <= np.nanmin(finite)) | (finite >= np.nanmax(finite))
    return constant & extreme


def _match_shift(x: np.ndarray, y: np.ndarray, weights: np.ndarray, grid: np.ndarray,
                 template: np.ndarray, template_slope: np.ndarray) -> float | None:
    """Shift d (px) such that y ~ a * template(x - d) + b, by Gauss-Newton steps."""
    shift = 0.0
    sqrt_w = np.sqrt(weights)
    for _ in range(5):
        values = np.interp(x - shift, grid, template)
        slopes = np.interp(x - shift, grid, template_slope)
        design = np.column_stack([values, np.ones_like(x), slopes]) * sqrt_w[:, None]
        coef, *_ = np.linalg.lstsq(design, y * sqrt_w, rcond=None)
        if coef[0] <= 0:
            return None
        step = -coef[2] / coef[0]
        shift += float(np.clip(step, -2.0, 2.0))
        if abs(step) < 1e-3:
            break
    return shift


def _shift_edges(edges: TubeEdges, shift: float) -> TubeEdges:
    return TubeEdges(edges.outer_a + shift, edges.inner_a + shift, edges.inner_b + shift,
                     edges.outer_b + shift)


def _initial_edges(prof: _Profile, half_width: float) -> TubeEdges | None:
    """Rough edges from the mean profile: steepest outward descents for the outer edges,
    the brightest points between them (the cortex peaks) for the inner edges."""
    if prof.x.size < 16:
        return None
    grid = np.arange(-half_width, half_width + 0.5, 0.5)
    y = np.interp(grid, prof.x, prof.y)
    y = ndimage.gaussian_filter1d(y, 2.0)
    slope = np.gradient(y)
    reach = np.abs(grid) <= 0.9 * half_width
    left = np.flatnonzero(reach & (grid < 0))
    right = np.flatnonzero(reach & (grid > 0))
    if left.size < 3 or right.size < 3:
        return None
    outer_a = left[np.argmax(slope[left])]
    outer_b = right[np.argmin(slope[right])]
    if outer_b - outer_a < 8:
        return None
    middle = (outer_a + outer_b) // 2
    inner_a = outer_a + np.argmax(y[outer_a:middle + 1])
    inner_b = middle + np.argmax(y[middle:outer_b + 1])
    # Keep a plausible order with room for a canal when the peaks are not distinct.
    quarter = (outer_b - outer_a) / 4
    if not outer_a + 1 <= inner_a <= middle - 1:
        inner_a = int(outer_a + quarter)
    if not middle + 1 <= inner_b <= outer_b - 1:
        inner_b = int(outer_b - quarter)
    return TubeEdges(*(float(grid[i]) for i in (outer_a, inner_a, inner_b, outer_b)))


def _degenerate(fit: TubeFit) -> bool:
    """A fit whose thinner cortex or canal is below what its blur lets it resolve."""
    edges = fit.edges
    thinner = min(edges.inner_a - edges.outer_a, edges.outer_b - edges.inner_b)
    return (thinner < max(MIN_CORTEX_PX, MIN_CORTEX_SIGMAS * fit.sigma)
            or edges.inner_b - edges.inner_a < MIN_CORTEX_PX)


def _detapered(band: _Band, center: float, taper: float) -> _Band:
    """The band with each side moved rigidly across the axis so that the outer width
    (changing by ``taper`` px per px along t) is that at t = 0 everywhere: averaging a
    tapering shaft then does not smear its edges, and cortices keep their thickness."""
    if taper == 0:
        return band
    side = np.sign(band.u - center)
    u = band.u - side * 0.5 * taper * band.t
    return _Band(band.t, u, band.value, band.clipped)


def _accept_groups(groups: list[TubeFit | None], group_t: list[float]) -> list[bool]:
    """Reject failed, degenerate or implausible group fits, then robust outliers in W
    (about its linear trend along the shaft), T, centre and residual (a neighbouring bone,
    a nutrient canal, an artefact)."""
    ok = [g is not None and g.success and g.cortex_amplitude > 0 and g.canal_amplitude < 0
          and not _degenerate(g) for g in groups]
    good = [g for g, keep in zip(groups, ok, strict=True) if keep and g is not None]
    if len(good) < MIN_GROUPS_ACCEPTED:
        return ok
    good_t = np.array([t for t, keep in zip(group_t, ok, strict=True) if keep])

    def robust_ok(values: list[float] | np.ndarray, floor: float) -> np.ndarray:
        arr = np.asarray(values)
        spread = max(4 * 1.4826 * np.median(np.abs(arr - np.median(arr))), floor)
        return np.abs(arr - np.median(arr)) <= spread

    widths = np.array([g.edges.width for g in good])
    width = float(np.median(widths))
    trend = np.polyval(_robust_line(good_t, widths), good_t)
    checks = (robust_ok(widths - trend, 0.02 * width + 0.3)
              & robust_ok([g.edges.thickness for g in good], 0.05 * width + 0.2)
              & robust_ok([g.edges.center for g in good], 0.02 * width + 0.3)
              & (np.array([g.rms_residual for g in good])
                 <= 2.5 * np.median([g.rms_residual for g in good])))
    verdicts = iter(checks.tolist())
    return [next(verdicts) if keep else False for keep in ok]


def _robust_line(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Line through (x, y) that one outlier cannot tilt: the median of pairwise slopes
    (Theil-Sen) and the median intercept; polyfit-style coefficients."""
    pairs = [(y[j] - y[i]) / (x[j] - x[i]) for i in range(x.size) for j in range(i + 1, x.size)
             if x[j] != x[i]]
    slope = float(np.median(pairs)) if pairs else 0.0
    return np.array([slope, float(np.median(y - slope * x))])
