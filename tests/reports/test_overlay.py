"""The overlay shows what was measured; previews go to artifacts/reports/ for a person."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_analysis, make_interpretation, make_rejected
from PIL import Image

from dxr_node.reports import chart, render_overlay
from dxr_node.reports.overlay import CANVAS_HEIGHT, PANEL_WIDTH

PREVIEWS = Path(__file__).resolve().parents[2] / "artifacts" / "reports"


def _save(rgb: np.ndarray, name: str) -> None:
    PREVIEWS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(PREVIEWS / f"overlay_{name}.png")


def _near(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - colour) <= tolerance))


@pytest.mark.parametrize("case", ["full", "engine-partial", "no-spacing",
                                  "right-no-interpretation"])
def test_overlay_draws_edges_labels_and_panel(display, engine_partial, case):
    if case == "engine-partial":
        _, display, analysis, interpretation = engine_partial
    else:
        analysis = {"full": make_analysis(), "no-spacing": make_analysis(spacing_mm=None),
                    "right-no-interpretation": make_analysis(laterality="R")}[case]
        interpretation = make_interpretation() if case == "full" else None
    rgb = render_overlay(display, analysis, interpretation)
    _save(rgb, case)

    rows, cols = display.shape
    scale = CANVAS_HEIGHT / rows
    assert rgb.dtype == np.uint8
    assert rgb.shape == (CANVAS_HEIGHT, round(cols * scale) + PANEL_WIDTH, 3)
    for bone in analysis.bones.values():
        for segment, colour in ((bone.outer_edge_a_rc, chart.OUTER_EDGE),
                                (bone.inner_edge_b_rc, chart.INNER_EDGE)):
            (r0, c0), (r1, c1) = segment
            row, col = (r0 + r1) / 2, (c0 + c1) / 2
            x, y = round((col + 0.5) * scale - 0.5), round((row + 0.5) * scale - 0.5)
            assert _near(rgb[y, x], colour), (bone.name, rgb[y, x])
    panel = rgb[:, -PANEL_WIDTH:]
    assert (panel == chart.PANEL).all(axis=-1).mean() > 0.5  # mostly background
    assert (panel > 200).all(axis=-1).any()  # and white text


def test_partial_result_shows_its_bones_a_banner_and_the_reduced_note(engine_partial):
    _, display, analysis, interpretation = engine_partial
    rgb = render_overlay(display, analysis, interpretation)
    banner = rgb[5:60, 5:400]
    assert _near(banner.reshape(-1, 3).mean(axis=0), (120, 20, 20), tolerance=60)
    panel = rgb[:400, -PANEL_WIDTH:].reshape(-1, 3)
    assert any(_near(p, chart.CAUTION, 10) for p in panel[::7])  # the "Reduced" note
    assert not any(_near(p, chart.WARNING, 10) for p in panel[::7])  # not "not possible"


def test_landscape_image_keeps_its_long_side_readable(display):
    landscape = np.ascontiguousarray(display[:1000, :1600])  # 1600 wide -> 1800 wide
    rgb = render_overlay(landscape, make_rejected(), None)
    assert rgb.shape == (CANVAS_HEIGHT, CANVAS_HEIGHT + PANEL_WIDTH, 3)
    top = (CANVAS_HEIGHT - round(1000 * CANVAS_HEIGHT / 1600)) // 2
    assert _near(rgb[top - 5, 100], chart.PANEL, 0)  # background above the image
    assert _near(rgb[top + 5, 5], (120, 20, 20), 5)  # the banner starts with the image


def test_rejected_overlay_says_analysis_not_possible(display):
    rgb = render_overlay(display, make_rejected("hand not found: image is mostly empty"), None)
    _save(rgb, "rejected")
    banner = rgb[5:60, 5:400]
    assert _near(banner.reshape(-1, 3).mean(axis=0), (120, 20, 20), tolerance=60)
    warning = rgb[:400, -PANEL_WIDTH:].reshape(-1, 3)
    assert any(_near(p, chart.WARNING, 10) for p in warning[::7])


def test_overlay_rejects_a_non_image(display):
    with pytest.raises(ValueError, match="2-D uint8"):
        render_overlay(display.astype(np.float32), make_analysis(), None)
    with pytest.raises(ValueError, match="2-D uint8"):
        render_overlay(np.zeros((10, 10, 3), np.uint8), make_analysis(), None)
