"""Phantom radiographs through the real engine and clinical wing into valid report objects."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from PIL import Image

from dxr_node.engine.image import to_display_uint8
from dxr_node.phantom import write_phantom_set
from dxr_node.pipeline import process_file
from dxr_node.reports import KINDS, build_reports, render_overlay, write_objects

PREVIEWS = Path(__file__).resolve().parents[2] / "artifacts" / "reports"


@pytest.mark.slow
def test_phantoms_give_valid_objects_with_the_engine_numbers(tmp_path):
    dciodvfy = shutil.which("dciodvfy")
    truth = write_phantom_set(tmp_path / "src", n=3, seed=5)
    for name in sorted(truth):
        result = process_file(tmp_path / "src" / name, kinds=())
        display = to_display_uint8(result.radiograph.pixels)
        objects = build_reports(result.radiograph.dataset, result.analysis,
                                result.interpretation, display, kinds=KINDS)
        paths = write_objects(objects, tmp_path / name)
        PREVIEWS.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_overlay(display, result.analysis, result.interpretation)).save(
            PREVIEWS / f"overlay_phantom_{name.removesuffix('.dcm')}.png")

        by_modality = {pydicom.dcmread(p, stop_before_pixels=True).Modality: p for p in paths}
        assert set(by_modality) == {"SR", "OT", "PR", "DOC"}
        if dciodvfy:
            for path in paths:
                out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
                assert not [line for line in (out.stdout + out.stderr).splitlines()
                            if line.startswith("Error")], path
        if not result.analysis.ok:
            continue
        sr = hd.sr.srread(by_modality["SR"])
        groups = {g.tracking_identifier.split()[0]: g
                  for g in sr.content.get_image_measurement_groups()}
        assert set(groups) == {*result.analysis.bones, "DXR"}
        for bone_name, bone in result.analysis.bones.items():
            values = {m.name.meaning: m.value for m in groups[bone_name].get_measurements()}
            assert values["Metacarpal index"] == pytest.approx(bone.mci, rel=1e-12)
            if bone.cortical_thickness_mm is not None:
                assert values["Cortical thickness"] == pytest.approx(
                    bone.cortical_thickness_mm, rel=1e-12)
        hand = {m.name.meaning: m.value for m in groups["DXR"].get_measurements()}
        if result.analysis.dxr_bmd_g_cm2 is not None:
            assert hand["DXR bone mineral density"] == pytest.approx(
                result.analysis.dxr_bmd_g_cm2, rel=1e-12)
