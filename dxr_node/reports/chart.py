"""Drawing helpers shared by the overlay and the PDF: fonts, colours, and the reference
chart of DXR-BMD against age (mean with +-1 and +-2 SD bands, the patient as a dot)."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dxr_node.clinical.result import Interpretation

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))

# Colours (RGB): chosen to stay distinct on a grey radiograph and for common colour
# vision deficiencies (blue/orange rather than red/green for the two edge kinds).
OUTER_EDGE = (0, 200, 255)
INNER_EDGE = (255, 160, 0)
ROI = (255, 235, 80)
TEXT = (235, 238, 242)
MUTED = (150, 160, 172)
PANEL = (18, 22, 28)
RULE = (60, 68, 80)
CATEGORY_COLOURS = {
    "normal": (60, 170, 90),
    "low bone mass": (230, 160, 30),
    "osteoporosis range": (215, 60, 50),
}
WARNING = (215, 60, 50)
CAUTION = (230, 160, 30)


@lru_cache(maxsize=32)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (covers Latin, Greek, Cyrillic), else Pillow's built-in font."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in FONT_DIRS:
        if (folder / name).exists():
            return ImageFont.truetype(str(folder / name), size)
    return ImageFont.load_default(size)


def pdf_font_path(bold: bool = False) -> Path | None:
    """Liberation Sans (Latin, Greek, Cyrillic; loads ~6x faster in fpdf2 than DejaVu,
    which has many more glyphs), else DejaVu Sans."""
    candidates = [Path("/usr/share/fonts/truetype/liberation") /
                  ("LiberationSans-Bold.ttf" if bold else "LiberationSans-Regular.ttf")]
    candidates += [f / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf") for f in FONT_DIRS]
    return next((path for path in candidates if path.exists()), None)


def fallback_font_paths() -> list[Path]:
    """Fonts for names in scripts the PDF body font lacks: DejaVu Sans (Arabic, Hebrew,
    Armenian, Georgian ...) and Droid Sans Fallback (CJK)."""
    candidates = [f / "DejaVuSans.ttf" for f in FONT_DIRS]
    candidates.append(Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"))
    return [path for path in candidates if path.exists()]


def reference_curve(interpretation: Interpretation) -> list[tuple[float, float, float]]:
    """(age, mean, SD) points of the age-matched reference the Interpretation was scored
    against (carried in it, so a site table is drawn as used); without a curve only the
    age-matched value at the patient's age is known (one point)."""
    ref = interpretation.reference
    if ref is None:
        return []
    if ref.age_matched_curve:
        return list(ref.age_matched_curve)
    if (interpretation.age_years is not None and ref.age_matched_mean_g_cm2 is not None
            and ref.age_matched_sd_g_cm2 is not None):
        return [(interpretation.age_years, ref.age_matched_mean_g_cm2,
                 ref.age_matched_sd_g_cm2)]
    return []


def render_reference_chart(interpretation: Interpretation, dxr_bmd_g_cm2: float | None,
                           size: tuple[int, int], dark: bool = True) -> Image.Image | None:
    """DXR-BMD vs age chart, or None when the Interpretation carries no reference."""
    curve = reference_curve(interpretation)
    ref = interpretation.reference
    if dxr_bmd_g_cm2 is not None and not math.isfinite(dxr_bmd_g_cm2):
        dxr_bmd_g_cm2 = None
    if not curve or ref is None:
        return None
    width, height = size
    background, ink, muted = (PANEL, TEXT, MUTED) if dark else ((255, 255, 255), (20, 20, 20),
                                                               (110, 110, 110))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    label_font, tick_font = font(max(14, height // 20)), font(max(12, height // 26))

    ages = [a for a, _, _ in curve]
    age_lo = min(20.0, *ages)
    age_hi = max(90.0, *ages)
    lows = [m - 2.5 * s for _, m, s in curve]
    highs = [m + 2.5 * s for _, m, s in curve]
    if ref.young_adult_mean_g_cm2 is not None:
        highs.append(ref.young_adult_mean_g_cm2 + 0.05)
    if dxr_bmd_g_cm2 is not None:
        lows.append(dxr_bmd_g_cm2 - 0.03)
        highs.append(dxr_bmd_g_cm2 + 0.03)
    bmd_lo, bmd_hi = _nice_floor(min(lows)), _nice_ceil(max(highs))

    left, right = int(width * 0.13), width - int(width * 0.04)
    top, bottom = int(height * 0.12), height - int(height * 0.16)

    def xy(age: float, bmd: float) -> tuple[float, float]:
        x = left + (age - age_lo) / (age_hi - age_lo) * (right - left)
        y = bottom - (bmd - bmd_lo) / (bmd_hi - bmd_lo) * (bottom - top)
        return x, y

    band_colours = [(46, 84, 60), (40, 110, 70)] if dark else [(214, 236, 220), (170, 214, 184)]
    if len(curve) > 1:
        for k, colour in zip((2, 1), band_colours, strict=True):
            upper = [xy(a, m + k * s) for a, m, s in curve]
            lower = [xy(a, m - k * s) for a, m, s in reversed(curve)]
            draw.polygon(upper + lower, fill=colour)
        draw.line([xy(a, m) for a, m, _ in curve], fill=ink, width=2)
    else:
        age, mean, sd = curve[0]
        for k, colour in zip((2, 1), band_colours, strict=True):
            x, y_hi = xy(age, mean + k * sd)
            _, y_lo = xy(age, mean - k * sd)
            draw.rectangle([x - 10, y_hi, x + 10, y_lo], fill=colour)
    if ref.young_adult_mean_g_cm2 is not None:
        y = xy(age_lo, ref.young_adult_mean_g_cm2)[1]
        for x in range(left, right, 14):
            draw.line([(x, y), (min(x + 7, right), y)], fill=muted, width=1)
        draw.text((right - 4, y - 3), "young-adult mean", fill=muted, font=tick_font,
                  anchor="rb")

    # Axes, ticks and labels.
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=muted, width=1)
    for age in range(int(age_lo // 10 * 10), int(age_hi) + 1, 10):
        if age < age_lo:
            continue
        x = xy(age, bmd_lo)[0]
        draw.line([(x, bottom), (x, bottom + 5)], fill=muted)
        draw.text((x, bottom + 7), str(age), fill=muted, font=tick_font, anchor="mt")
    step = 0.1 if bmd_hi - bmd_lo > 0.45 else 0.05
    value = bmd_lo
    while value <= bmd_hi + 1e-9:
        y = xy(age_lo, value)[1]
        draw.line([(left - 5, y), (left, y)], fill=muted)
        draw.text((left - 8, y), f"{value:.2f}", fill=muted, font=tick_font, anchor="rm")
        value += step
    draw.text((left, top - 8), "DXR-BMD (g/cm²)", fill=ink, font=label_font, anchor="ld")
    draw.text(((left + right) / 2, height - 2), "Age (years)", fill=muted, font=tick_font,
              anchor="md")
    sex = {"F": "women", "M": "men"}.get(interpretation.sex or "", "")
    draw.text((right, top - 8), f"{sex} · mean ±1/±2 SD".strip(" ·"), fill=muted,
              font=tick_font, anchor="rd")

    if dxr_bmd_g_cm2 is not None and interpretation.age_years is not None:
        x, y = xy(min(max(interpretation.age_years, age_lo), age_hi), dxr_bmd_g_cm2)
        r = max(6, height // 45)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 70, 70), outline=ink, width=2)
    return image


def _nice_floor(value: float) -> float:
    return math.floor(value * 20) / 20


def _nice_ceil(value: float) -> float:
    return math.ceil(value * 20) / 20
