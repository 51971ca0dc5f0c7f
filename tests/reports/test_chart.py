"""The reference chart draws the table the Interpretation was scored against."""

from __future__ import annotations

import json

import numpy as np
from conftest import make_analysis, make_source

from dxr_node.clinical import interpret, load_reference
from dxr_node.clinical.reference import DEFAULT_REFERENCE_PATH
from dxr_node.reports import chart

SIZE = (800, 400)


def _site_table(tmp_path, name: str, shift_g_cm2: float):
    data = json.loads(DEFAULT_REFERENCE_PATH.read_text())
    data["name"] = name
    for point in data["sexes"]["F"]["age_matched"]:
        point["mean_g_cm2"] = round(point["mean_g_cm2"] + shift_g_cm2, 4)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return load_reference(path)


def _band_columns(image) -> int:
    """How many columns of the chart show the +-1 SD band (dark theme colour)."""
    pixels = np.asarray(image).astype(int)
    band = np.all(np.abs(pixels - (40, 110, 70)) <= 2, axis=-1)
    return int(band.any(axis=0).sum())


def test_site_table_curve_is_drawn_whatever_its_name(tmp_path):
    analysis, source = make_analysis(), make_source()
    packaged = interpret(analysis, source)
    for name in (packaged.reference.name, "Site table"):  # same name and another name
        site = _site_table(tmp_path, name, -0.08)
        interpretation = interpret(analysis, source, reference=site)
        expected = [(p.age_years, p.mean_g_cm2, p.sd_g_cm2)
                    for p in site.sexes["F"].age_matched]
        assert chart.reference_curve(interpretation) == expected
        drawn = chart.render_reference_chart(interpretation, analysis.dxr_bmd_g_cm2, SIZE)
        default = chart.render_reference_chart(packaged, analysis.dxr_bmd_g_cm2, SIZE)
        assert _band_columns(drawn) > SIZE[0] // 2  # a curve, not a single point
        assert not np.array_equal(np.asarray(drawn), np.asarray(default))
