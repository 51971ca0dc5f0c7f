"""The result overlay: the radiograph with ROI bands, edge lines and bone labels, beside a
results panel. Rendered to an RGB array (used for the secondary capture and the console).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageDraw

from dxr_node.clinical.interpreter import BILLING_REDUCED, billing_modifier
from dxr_node.clinical.result import Interpretation
from dxr_node.engine.result import BONE_NAMES, Analysis, BoneMeasurement, Point
from dxr_node.reports import chart
from dxr_node.reports.chart import font
from dxr_node.reports.identity import hand_laterality
from dxr_node.reports.review import SignOff

CANVAS_HEIGHT = 1800  # canvas height and the radiograph's long side
PANEL_WIDTH = 900
MARGIN = 44
REVIEW_NOTE = "For clinical review. DXR results support, and do not replace, clinical judgement."


def render_overlay(display: np.ndarray, analysis: Analysis,
                   interpretation: Interpretation | None,
                   signoff: SignOff | None = None) -> np.ndarray:
    """RGB uint8 image: the annotated radiograph (left) and the results panel (right).

    `display` is the source image as uint8, bone bright, in source pixel geometry.
    """
    if display.ndim != 2 or display.dtype != np.uint8 or min(display.shape) < 2:
        raise ValueError(f"display must be a 2-D uint8 image, got {display.dtype} "
                         f"{display.shape}")
    rows, cols = display.shape
    # The radiograph's long side becomes CANVAS_HEIGHT; a landscape image is centred
    # vertically beside the full-height panel.
    scale = CANVAS_HEIGHT / max(rows, cols)
    width, height = max(1, round(cols * scale)), max(1, round(rows * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    radiograph = Image.fromarray(
        cv2.resize(display, (width, height), interpolation=interpolation)).convert("RGB")
    image_draw = ImageDraw.Draw(radiograph)
    # A rejected analysis may still list bones that passed their own QC (partial result).
    for bone in analysis.bones.values():
        _draw_bone(image_draw, bone, scale)
    if not analysis.ok:
        _draw_banner(image_draw, width, analysis)

    canvas = Image.new("RGB", (width + PANEL_WIDTH, CANVAS_HEIGHT), chart.PANEL)
    canvas.paste(radiograph, (0, (CANVAS_HEIGHT - height) // 2))
    _draw_panel(canvas, ImageDraw.Draw(canvas), width, analysis, interpretation, signoff)
    return np.asarray(canvas)


def _to_canvas(point: Point, scale: float) -> tuple[float, float]:
    """(row, col) pixel centre -> (x, y) on the scaled canvas."""
    row, col = point
    return ((col + 0.5) * scale - 0.5, (row + 0.5) * scale - 0.5)


def _draw_bone(draw: ImageDraw.ImageDraw, bone: BoneMeasurement, scale: float) -> None:
    line = max(2, round(3 * scale))
    roi = [_to_canvas(p, scale) for p in bone.roi_rc]
    _dashed_polygon(draw, roi, chart.ROI, width=max(2, line - 1))
    for segment, colour in ((bone.outer_edge_a_rc, chart.OUTER_EDGE),
                            (bone.outer_edge_b_rc, chart.OUTER_EDGE),
                            (bone.inner_edge_a_rc, chart.INNER_EDGE),
                            (bone.inner_edge_b_rc, chart.INNER_EDGE)):
        draw.line([_to_canvas(p, scale) for p in segment], fill=colour, width=line)

    # Label just distal of the ROI band, on the bone axis.
    theta = math.radians(bone.axis_angle_deg)
    along = (-math.sin(theta), math.cos(theta))  # (row, col), proximal -> distal
    r0, c0 = bone.center_rc
    reach = max((r - r0) * along[0] + (c - c0) * along[1] for r, c in bone.roi_rc)
    offset = reach + 34 / scale
    x, y = _to_canvas((r0 + along[0] * offset, c0 + along[1] * offset), scale)
    label_font = font(30, bold=True)
    label = f"{bone.name} (reader)" if bone.reader_positioned else bone.name
    box = draw.textbbox((x, y), label, font=label_font, anchor="mm")
    draw.rounded_rectangle([box[0] - 8, box[1] - 5, box[2] + 8, box[3] + 5], radius=6,
                           fill=(0, 0, 0), outline=chart.ROI, width=2)
    draw.text((x, y), label, fill=chart.TEXT, font=label_font, anchor="mm")


def _dashed_polygon(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]],
                    colour: tuple[int, int, int], width: int, dash: float = 12) -> None:
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True):
        length = math.hypot(x1 - x0, y1 - y0)
        steps = max(1, int(length // dash))
        for k in range(0, steps, 2):
            a, b = k / steps, min(1.0, (k + 1) / steps)
            draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a),
                       (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)], fill=colour, width=width)


def _draw_banner(draw: ImageDraw.ImageDraw, width: int, analysis: Analysis) -> None:
    """Rejected/failed analysis: say so across the image, in words a technologist acts on."""
    reason = analysis.reasons[0] if analysis.reasons else "no reason given"
    title = (f"Partial DXR result ({len(analysis.bones)} of 3 metacarpals):" if analysis.bones
             else "DXR analysis not possible:")
    lines = [title, *_wrap(reason, font(34), width - 2 * MARGIN)[:3]]
    height = 40 + 46 * len(lines)
    draw.rectangle([0, 0, width, height], fill=(120, 20, 20))
    y = 26
    for k, text in enumerate(lines):
        draw.text((MARGIN, y), text, fill=(255, 255, 255), font=font(36 if k == 0 else 34,
                                                                      bold=k == 0))
        y += 46


def _draw_panel(canvas: Image.Image, draw: ImageDraw.ImageDraw, x0: int, analysis: Analysis,
                interpretation: Interpretation | None, signoff: SignOff | None = None) -> None:
    left, right = x0 + MARGIN, x0 + PANEL_WIDTH - MARGIN
    y = MARGIN
    draw.text((left, y), "Digital X-ray radiogrammetry", fill=chart.TEXT, font=font(40, True))
    y += 56
    side = {"L": "left hand", "R": "right hand"}.get(
        hand_laterality(analysis, interpretation) or "", "hand")
    draw.text((left, y), f"Metacarpals II-IV · {side} · PA", fill=chart.MUTED, font=font(26))
    y += 50

    if not analysis.bones:
        y = _panel_rejected(draw, left, right, y, analysis)
    else:
        y = _panel_results(canvas, draw, left, right, y, analysis, interpretation)

    # Footer: algorithm, QC, and the review wording, always at the bottom.
    algorithm = f"{analysis.algorithm.get('name', 'dxr-node')} " \
                f"{analysis.algorithm.get('version', '')}".strip()
    qc = "; ".join([analysis.status, *analysis.reasons]) if analysis.ok else analysis.status
    review = [REVIEW_NOTE] if signoff is None else [signoff.line()]
    if any(b.reader_positioned for b in analysis.bones.values()):
        review.append("* and (reader): bone positioned by the reader.")
    footer = [*_wrap(f"QC: {qc}", font(22), right - left)[:3], f"Algorithm: {algorithm}",
              *(line for text in review for line in _wrap(text, font(22), right - left))]
    fy = CANVAS_HEIGHT - MARGIN - 30 * len(footer)
    if analysis.bones:
        _draw_legend(draw, left, fy - 70)
    draw.line([(left, fy - 16), (right, fy - 16)], fill=chart.RULE, width=2)
    for text in footer:
        draw.text((left, fy), text, fill=chart.MUTED, font=font(22))
        fy += 30


def _draw_legend(draw: ImageDraw.ImageDraw, left: int, y: int) -> None:
    x = left
    for colour, text, dashed in ((chart.OUTER_EDGE, "outer edge", False),
                                 (chart.INNER_EDGE, "inner (endosteal) edge", False),
                                 (chart.ROI, "measured band", True)):
        if dashed:
            for k in range(0, 44, 12):
                draw.line([(x + k, y + 14), (x + k + 6, y + 14)], fill=colour, width=3)
        else:
            draw.line([(x, y + 14), (x + 44, y + 14)], fill=colour, width=4)
        draw.text((x + 54, y + 14), text, fill=chart.MUTED, font=font(22), anchor="lm")
        x += 54 + int(font(22).getlength(text)) + 36


def _panel_rejected(draw: ImageDraw.ImageDraw, left: int, right: int, y: int,
                    analysis: Analysis) -> int:
    draw.rounded_rectangle([left, y, right, y + 70], radius=10, fill=chart.WARNING)
    draw.text((left + 20, y + 35), "DXR analysis not possible", fill=(255, 255, 255),
              font=font(34, True), anchor="lm")
    y += 100
    lines = [("• " if k == 0 else "   ") + text
             for reason in analysis.reasons or ("no reason given",)
             for k, text in enumerate(_wrap(reason, font(28), right - left - 30))]
    room = (CANVAS_HEIGHT - MARGIN - 400 - y) // 38  # keep the advice and footer clear
    for text in lines[:room]:
        draw.text((left, y), text, fill=chart.TEXT, font=font(28))
        y += 38
    y += 20
    advice = ("Check positioning (PA, hand flat, fingers straight and slightly spread, "
              "metacarpals fully in the field) and exposure, then re-acquire if appropriate.")
    for text in _wrap(advice, font(26), right - left):
        draw.text((left, y), text, fill=chart.MUTED, font=font(26))
        y += 36
    return y


def _panel_results(canvas: Image.Image, draw: ImageDraw.ImageDraw, left: int, right: int,
                   y: int, analysis: Analysis, interpretation: Interpretation | None) -> int:
    has_mm = analysis.pixel_spacing_mm is not None
    measured = [n for n in BONE_NAMES if n in analysis.bones]
    if billing_modifier(analysis) == BILLING_REDUCED:
        missing = ", ".join(n for n in BONE_NAMES if n not in analysis.bones)
        text = (f"Reduced: {len(measured)} of 3 metacarpals (not measured: {missing})"
                if missing else "Reduced: ratio measures only (no DXR-BMD)")
        draw.rounded_rectangle([left, y, right, y + 50], radius=8, fill=chart.CAUTION)
        draw.text((left + 16, y + 25), text, fill=(0, 0, 0), font=font(24, True), anchor="lm")
        y += 70

    # Per-bone table.
    columns = [("Bone", 0), ("T mm", 170), ("W mm", 310), ("MCI", 450), ("L mm", 580)]
    if not has_mm:
        columns = [("Bone", 0), ("MCI", 170)]
    for title, dx in columns:
        draw.text((left + dx, y), title, fill=chart.MUTED, font=font(24, True))
    y += 36
    draw.line([(left, y), (right, y)], fill=chart.RULE, width=2)
    y += 10
    for name in measured:
        bone = analysis.bones[name]
        shown = f"{name}*" if bone.reader_positioned else name
        values = [shown, _fmt(bone.cortical_thickness_mm, 2), _fmt(bone.width_mm, 2),
                  _fmt(bone.mci, 3), _fmt(bone.length_mm, 1)]
        if not has_mm:
            values = [shown, _fmt(bone.mci, 3)]
        for (_, dx), text in zip(columns, values, strict=True):
            draw.text((left + dx, y), text, fill=chart.TEXT, font=font(28))
        y += 40
    y += 16
    if not analysis.ok:
        return _panel_partial(draw, left, right, y, analysis)

    # Whole-hand indices, the headline numbers.
    if has_mm and _finite(analysis.dxr_bmd_g_cm2):
        draw.text((left, y), "DXR-BMD", fill=chart.MUTED, font=font(26))
        draw.text((left, y + 30), f"{analysis.dxr_bmd_g_cm2:.3f}", fill=chart.TEXT,
                  font=font(64, True))
        draw.text((left + 230, y + 62), "g/cm²", fill=chart.MUTED, font=font(28))
    small = [("MCI", _fmt(analysis.mci, 3))]
    if _finite(analysis.bhi):
        small.append(("BHI", _fmt(analysis.bhi, 2)))
    start = left + 400 if has_mm and _finite(analysis.dxr_bmd_g_cm2) else left
    for k, (title, text) in enumerate(small):
        x = start + 190 * k
        draw.text((x, y), title, fill=chart.MUTED, font=font(26))
        draw.text((x, y + 30), text, fill=chart.TEXT, font=font(52, True))
    y += 120
    if not has_mm:
        for text in _wrap("No pixel spacing in the image: millimetre values, DXR-BMD and "
                          "scores are not available; ratios only.", font(24), right - left):
            draw.text((left, y), text, fill=chart.CAUTION, font=font(24))
            y += 32
        y += 8

    if interpretation is not None:
        y = _panel_scores(canvas, draw, left, right, y, analysis, interpretation)
    return y


def _panel_partial(draw: ImageDraw.ImageDraw, left: int, right: int, y: int,
                   analysis: Analysis) -> int:
    """Rejected hand with some bones measured: their values stand, nothing else does."""
    notes = ["Partial result: only the metacarpals above passed quality control. No "
             "whole-hand index (DXR-BMD, MCI, BHI) and no scores."]
    for text in _wrap(notes[0], font(26, True), right - left):
        draw.text((left, y), text, fill=chart.CAUTION, font=font(26, True))
        y += 36
    y += 10
    lines = [("• " if k == 0 else "   ") + text for reason in analysis.reasons
             for k, text in enumerate(_wrap(reason, font(26), right - left - 30))]
    room = (CANVAS_HEIGHT - MARGIN - 400 - y) // 36
    for text in lines[:room]:
        draw.text((left, y), text, fill=chart.TEXT, font=font(26))
        y += 36
    return y


def _panel_scores(canvas: Image.Image, draw: ImageDraw.ImageDraw, left: int, right: int,
                  y: int, analysis: Analysis, interpretation: Interpretation) -> int:
    draw.line([(left, y), (right, y)], fill=chart.RULE, width=2)
    y += 18
    scores = [("T-score", _signed(interpretation.t_score)),
              ("Z-score", _signed(interpretation.z_score)),
              ("Hip fracture RR", _fmt(interpretation.relative_risk, 1, "×"))]
    for k, (title, text) in enumerate(scores):
        x = left + 270 * k
        draw.text((x, y), title, fill=chart.MUTED, font=font(26))
        draw.text((x, y + 30), text, fill=chart.TEXT, font=font(48, True))
    y += 100
    if interpretation.category:
        colour = chart.CATEGORY_COLOURS.get(interpretation.category, chart.RULE)
        label = f"{interpretation.category.capitalize()} (DXR-derived)"
        box = draw.textbbox((left + 18, y + 27), label, font=font(30, True), anchor="lm")
        draw.rounded_rectangle([left, y, box[2] + 18, y + 54], radius=10, fill=colour)
        draw.text((left + 18, y + 27), label, fill=(255, 255, 255), font=font(30, True),
                  anchor="lm")
        y += 70
    lines = []
    if interpretation.triage:
        lines.append(f"Triage: {interpretation.triage}")
    prior = interpretation.prior
    if prior is not None:
        date = f"{prior.date[:4]}-{prior.date[4:6]}-{prior.date[6:]}"
        verdict = "significant" if prior.significant else "within precision"
        lines.append(f"Since {date}: {prior.change_percent:+.1f} % ({verdict}, "
                     f"LSC {prior.least_significant_change_percent:.1f} %)")
    for line in lines:
        for text in _wrap(line, font(26), right - left):
            draw.text((left, y), text, fill=chart.TEXT, font=font(26))
            y += 36
    y += 10
    chart_height = min(560, CANVAS_HEIGHT - MARGIN - 170 - y)
    if chart_height >= 220:
        image = chart.render_reference_chart(interpretation, analysis.dxr_bmd_g_cm2,
                                             (right - left, chart_height))
        if image is not None:
            canvas.paste(image, (left, y))
            y += chart_height + 16
    # Why a score is missing, and caveats, in the space left above the legend.
    notes = [line for reason in interpretation.reasons
             for line in _wrap(f"• {reason}", font(21), right - left)]
    room = max(0, (CANVAS_HEIGHT - MARGIN - 230 - y) // 28)
    for text in notes[:room]:
        draw.text((left, y), text, fill=chart.MUTED, font=font(21))
        y += 28
    return y


def _wrap(text: str, text_font, width: int) -> list[str]:
    """Greedy word wrap to a pixel width."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and text_font.getlength(trial) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return lines + ([current] if current else [])


def _fmt(value: float | None, digits: int, suffix: str = "") -> str:
    return f"{value:.{digits}f}{suffix}" if _finite(value) else "–"


def _signed(value: float | None) -> str:
    return f"{value:+.1f}" if _finite(value) else "–"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
