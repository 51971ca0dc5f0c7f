"""A small inline SVG plot of a patient's DXR-BMD over time (no JavaScript needed)."""

from __future__ import annotations

from datetime import date
from html import escape
from typing import Any

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 14, 34


def _day(study_date: str | None) -> date | None:
    if study_date is None:
        return None
    try:
        return date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:8]))
    except (TypeError, ValueError):
        return None


def bmd_history_svg(history: list[dict[str, Any]], current_job_id: int) -> str:
    """DXR-BMD (g/cm2) against study date; the current exam's point is highlighted.
    Results without a valid study date are left out."""
    dated = [(_day(h["study_date"]), h["dxr_bmd_g_cm2"], h) for h in history]
    points = [(day, value, h) for day, value, h in dated if day is not None]
    if not points:
        return ""
    days = [p[0].toordinal() for p in points]
    values = [p[1] for p in points]
    x_lo, x_hi = min(days), max(days)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 30, x_hi + 30
    margin = max(0.01, (max(values) - min(values)) * 0.15)
    y_lo, y_hi = min(values) - margin, max(values) + margin

    def x(day: int) -> float:
        return LEFT + (day - x_lo) / (x_hi - x_lo) * (WIDTH - LEFT - RIGHT)

    def y(value: float) -> float:
        return TOP + (y_hi - value) / (y_hi - y_lo) * (HEIGHT - TOP - BOTTOM)

    parts = [f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="DXR-BMD over time">']
    for fraction in (0.0, 0.5, 1.0):  # three horizontal grid lines with their values
        value = y_lo + fraction * (y_hi - y_lo)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
                     f'y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y(value) + 4:.1f}" '
                     f'text-anchor="end">{value:.3f}</text>')
    for day, anchor in ((min(days), "start"), (max(days), "end")):
        label = date.fromordinal(day).isoformat()
        parts.append(f'<text class="axis" x="{x(day):.1f}" y="{HEIGHT - 10}" '
                     f'text-anchor="{anchor}">{label}</text>')
    line = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in zip(days, values, strict=True))
    parts.append(f'<polyline class="trend" points="{line}"/>')
    for day, value, (_, _, item) in zip(days, values, points, strict=True):
        current = item["job_id"] == current_job_id
        title = f"{date.fromordinal(day).isoformat()}: {value:.3f} g/cm²"
        if item.get("laterality"):
            title += f" ({item['laterality']})"
        parts.append(f'<circle class="{"current" if current else "point"}" '
                     f'cx="{x(day):.1f}" cy="{y(value):.1f}" r="{6 if current else 4}">'
                     f"<title>{escape(title)}</title></circle>")
    parts.append(f'<text class="axis" x="{LEFT}" y="{TOP - 2}">g/cm²</text>')
    parts.append("</svg>")
    return "".join(parts)
