"""The phantom's truth matches what it renders, its DICOM is valid, seeds reproduce."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pydicom
import pytest

from dxr_node.cli import main
from dxr_node.phantom.acquisition import Acquisition
from dxr_node.phantom.anatomy import METACARPALS, MU_CORTEX, MU_MARROW, HandAnatomy
from dxr_node.phantom.dicom import Patient, to_dataset, write_dataset
from dxr_node.phantom.generate import write_phantom_set
from dxr_node.phantom.render import render

# An ideal detector: no noise, blur, heel effect, collimator, marker or processing.
IDEAL = Acquisition(pixel_spacing_mm=0.125, blur_sigma_mm=0.0, noise=False, heel_gradient=0.0,
                    marker=False, supersample=1, detector_offset=100.0, detector_gain=1000.0)


def _without_bone(anatomy: HandAnatomy, name: str) -> HandAnatomy:
    bones = tuple(replace(b, outer_radius_mm=0.0, inner_radius_mm=0.0) if b.name == name else b
                  for b in anatomy.long_bones)
    return replace(anatomy, long_bones=bones)


def _analytic_tube(d: np.ndarray, outer: float, inner: float) -> np.ndarray:
    outer_path = 2 * np.sqrt(np.clip(outer**2 - d**2, 0, None))
    canal_path = 2 * np.sqrt(np.clip(inner**2 - d**2, 0, None))
    return MU_CORTEX * (outer_path - canal_path) + MU_MARROW * canal_path


@pytest.mark.parametrize(("rotation", "laterality", "fingers"),
                         [(0.0, "R", "up"), (17.0, "L", "up"), (-12.0, "R", "down")])
def test_midshaft_profile_matches_analytic_tube(rotation, laterality, fingers):
    anatomy = HandAnatomy.random(np.random.default_rng(5))
    acquisition = replace(IDEAL, rotation_deg=rotation, laterality=laterality, fingers=fingers)
    for name in ("MC2", "MC4"):
        with_bone, truth = render(anatomy, acquisition)
        without_bone, _ = render(_without_bone(anatomy, name), acquisition)
        bone_attenuation = (with_bone.astype(float) - without_bone) / acquisition.detector_gain
        if acquisition.photometric == "MONOCHROME1":
            bone_attenuation = -bone_attenuation
        record = truth["bones"][name]
        center = np.array(record["midshaft_center_rc"])
        angle = math.radians(record["axis_angle_deg"])
        along = np.array([-math.sin(angle), math.cos(angle)])  # (row, col) unit vector
        across = np.array([along[1], -along[0]])
        rows, cols = np.mgrid[-60:61, -60:61]
        offsets = np.stack([rows, cols], -1) + np.round(center) - center
        t = offsets @ along * acquisition.pixel_spacing_mm
        d = offsets @ across * acquisition.pixel_spacing_mm
        near_mid = np.abs(t) < 0.1 * record["length_mm"]
        r0, c0 = np.round(center).astype(int)
        measured = bone_attenuation[r0 - 60:r0 + 61, c0 - 60:c0 + 61][near_mid]
        expected = _analytic_tube(d[near_mid], record["outer_radius_mm"],
                                  record["inner_radius_mm"])
        assert np.abs(measured - expected).max() < 2.5 / acquisition.detector_gain
        assert expected.max() > 0.5  # the profile really crossed the bone
        assert record["width_mm"] == pytest.approx(2 * record["outer_radius_mm"])
        assert record["cortical_thickness_mm"] == pytest.approx(
            record["outer_radius_mm"] - record["inner_radius_mm"])


def test_truth_geometry_follows_hand_and_orientation():
    anatomy = HandAnatomy.random(np.random.default_rng(11))
    _, up_right = render(anatomy, replace(IDEAL, laterality="R"))
    _, up_left = render(anatomy, replace(IDEAL, laterality="L"))
    _, down_right = render(anatomy, replace(IDEAL, laterality="R", fingers="down"))
    mc2, mc5 = up_right["bones"]["MC2"], up_right["bones"]["MC5"]
    # Right hand, fingers up: thumb side (MC2) on the image left, axes point up.
    assert mc2["midshaft_center_rc"][1] < mc5["midshaft_center_rc"][1]
    assert up_left["bones"]["MC2"]["midshaft_center_rc"][1] > up_left["bones"]["MC5"][
        "midshaft_center_rc"][1]
    for name in METACARPALS:
        assert 70 < up_right["bones"][name]["axis_angle_deg"] < 110
        assert -110 < down_right["bones"][name]["axis_angle_deg"] < -70
        assert up_right["bones"][name]["distal_rc"][0] < up_right["bones"][name]["proximal_rc"][0]
    centers = [np.array(up_right["bones"][n]["midshaft_center_rc"]) for n in METACARPALS]
    spacing_mm = [np.linalg.norm(a - b) * IDEAL.pixel_spacing_mm
                  for a, b in zip(centers, centers[1:], strict=False)]
    assert all(14.0 < s < 19.5 for s in spacing_mm)


def test_adult_anatomy_is_plausible_and_seeded():
    for seed in range(20):
        anatomy = HandAnatomy.random(np.random.default_rng(seed))
        again = HandAnatomy.random(np.random.default_rng(seed))
        assert anatomy == again
        for name in ("MC2", "MC3", "MC4"):
            bone = anatomy.bone(name)
            assert 5.5 < 2 * bone.outer_radius_mm < 10.5
            assert 0.9 < bone.cortical_thickness_mm < 3.2
            assert 45 < bone.length_mm < 80
            assert bone.inner_radius_mm > 0.5
    osteoporotic = HandAnatomy.random(np.random.default_rng(1), osteoporotic=True)
    assert all(1.0 <= osteoporotic.bone(n).cortical_thickness_mm <= 1.6 for n in METACARPALS)


def _dciodvfy_errors(path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("Error")]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("kind", ["dx", "dx-mono1-magnified", "dx-processing", "cr",
                                  "cr-calibrated-magnified", "non-hand"])
def test_dicom_is_valid(tmp_path, kind):
    rng = np.random.default_rng(3)
    variant = "non-hand" if kind == "non-hand" else "adult"
    anatomy = HandAnatomy.random(rng, variant)
    acquisition = Acquisition(
        pixel_spacing_mm=0.175 if variant == "adult" else 0.35,
        field_mm=(250.0, 200.0) if variant == "adult" else (430.0, 350.0),
        modality="CR" if kind.startswith("cr") else "DX",
        photometric="MONOCHROME1" if "mono1" in kind else "MONOCHROME2",
        for_processing=kind == "dx-processing",
        magnification=1.05 if "magnified" in kind else None,
        calibrated="calibrated" in kind,
        burned_in_text=True, collimation_mm=(10.0, 10.0, 10.0, 10.0))
    pixels, _ = render(anatomy, acquisition)
    patient = Patient.random(np.random.default_rng(7), variant)
    patient = replace(patient, name="Müller^Anna")  # needs ISO_IR 192
    ds = to_dataset(pixels, acquisition, patient, f"valid-{kind}", variant=variant)
    path = tmp_path / "image.dcm"
    write_dataset(ds, path)
    assert _dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.PatientName == "Müller^Anna"
    assert back.SpecificCharacterSet == "ISO_IR 192"
    np.testing.assert_array_equal(back.pixel_array, pixels)
    if "magnified" in kind:
        assert float(back.ImagerPixelSpacing[0]) == pytest.approx(0.175 * 1.05, rel=1e-9)
    if "calibrated" in kind:
        assert float(back.PixelSpacing[0]) == pytest.approx(0.175, rel=1e-9)


@pytest.mark.slow
def test_phantom_sets_are_reproducible(tmp_path):
    first = write_phantom_set(tmp_path / "a", n=1, seed=4)
    second = write_phantom_set(tmp_path / "b", n=1, seed=4)
    other = write_phantom_set(tmp_path / "c", n=1, seed=5)
    assert first == second
    assert first != other
    for name in first:
        a = pydicom.dcmread(tmp_path / "a" / name)
        b = pydicom.dcmread(tmp_path / "b" / name)
        assert a.PixelData == b.PixelData
        assert a.SOPInstanceUID == b.SOPInstanceUID


@pytest.mark.slow
def test_cli_writes_files_and_truth(tmp_path, capsys):
    assert main(["phantom", str(tmp_path), "--n", "2", "--seed", "2"]) == 0
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert sorted(truth) == ["phantom_0000.dcm", "phantom_0001.dcm"]
    assert {t["laterality"] for t in truth.values()} == {"L", "R"}
    for name, record in truth.items():
        ds = pydicom.dcmread(tmp_path / name)
        assert ds.Rows == record["rows"] and ds.Columns == record["cols"]
        assert record["variant"] == "adult"
        assert set(record["bones"]) == set(METACARPALS)
        for bone in record["bones"].values():
            r, c = bone["midshaft_center_rc"]
            assert 0 <= r < ds.Rows and 0 <= c < ds.Columns
    assert "wrote 2 phantom(s)" in capsys.readouterr().out


def test_cli_rejects_bad_options(tmp_path, capsys):
    assert main(["phantom", str(tmp_path), "--transfer-syntax", "jpeg-3000"]) == 2
    assert "unknown transfer syntax" in capsys.readouterr().err
    assert main(["phantom", str(tmp_path), "--n", "0"]) == 2


def test_same_anatomy_set_varies_only_the_acquisition(tmp_path):
    truth = write_phantom_set(tmp_path, n=3, seed=9, same_anatomy=True)
    records = list(truth.values())
    assert len({r["anatomy_id"] for r in records}) == 1
    assert len({r["acquisition"]["noise_seed"] for r in records}) == 3
    assert len({round(r["rotation_deg"], 6) for r in records}) == 3
    widths = {round(r["bones"]["MC2"]["width_mm"], 9) for r in records}
    assert len(widths) == 1
    # Same device and protocol, repositioned: spacing and processing stay.
    assert len({(r["pixel_spacing_mm"], r["photometric"], r["modality"]) for r in records}) == 1
    assert len({r["laterality"] for r in records}) == 1
    assert len({pydicom.dcmread(tmp_path / name).PatientID for name in truth}) == 1


@pytest.mark.parametrize("variant", ["paediatric", "toddler", "non-hand"])
def test_variants(variant):
    anatomy = HandAnatomy.random(np.random.default_rng(2), variant)
    pixels, truth = render(anatomy, Acquisition.random(np.random.default_rng(2), variant))
    assert truth["variant"] == variant and pixels.dtype == np.uint16
    assert pixels.max() > pixels.min() + 500
    if variant == "non-hand":
        assert truth["bones"] == {}
        return
    adult = HandAnatomy.random(np.random.default_rng(2))
    assert anatomy.bone("MC3").length_mm < 0.85 * adult.bone("MC3").length_mm
    assert all(anatomy.bone(n).physis == "distal" for n in METACARPALS)  # open growth plates


def test_phantom_dataset_one_liner():
    from dxr_node.phantom import phantom_dataset

    ds = phantom_dataset(seed=7, variant="toddler", pixel_spacing_mm=0.175)
    assert ds.Modality in ("DX", "CR") and ds.BodyPartExamined == "HAND"
    assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(
        0.175 * float(ds.get("EstimatedRadiographicMagnificationFactor", 1.0)))


@pytest.mark.skipif(shutil.which("dcmcjpls") is None, reason="dcmtk not installed")
def test_cli_transfer_syntax_via_dcmtk(tmp_path):
    assert main(["phantom", str(tmp_path), "--n", "1", "--transfer-syntax", "jpeg-ls"]) == 0
    ds = pydicom.dcmread(tmp_path / "phantom_0000.dcm")
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns)


def test_default_set_mixes_acquisitions():
    from dxr_node.phantom.generate import _mixed, image_specs

    specs = [image_specs(0, i) for i in range(10)]
    acquisitions = [_mixed(acq, i) for i, (_, acq, _) in enumerate(specs)]
    assert {a.laterality for a in acquisitions} == {"L", "R"}
    assert {a.fingers for a in acquisitions} == {"up", "down"}
    assert {a.modality for a in acquisitions} == {"DX", "CR"}
    assert {a.photometric for a in acquisitions} == {"MONOCHROME1", "MONOCHROME2"}
    assert {a.edge_gain > 0 for a in acquisitions} == {True, False}
    assert len({a.pixel_spacing_mm for a in acquisitions}) >= 3
    assert min(a.rotation_deg for a in acquisitions) < -5 < 5 < max(
        a.rotation_deg for a in acquisitions)
    assert all(0.05 <= a.blur_sigma_mm <= 0.15 for a in acquisitions)
    assert {anatomy.variant for anatomy, _, _ in specs} == {"adult"}


def test_follow_up_of_the_same_hand_with_thinner_cortex():
    from dxr_node.phantom.anatomy import with_cortical_thickness

    anatomy = HandAnatomy.random(np.random.default_rng(4), osteoporotic=False)
    later = with_cortical_thickness(anatomy, 0.9)
    for name in METACARPALS:
        assert later.bone(name).outer_radius_mm == anatomy.bone(name).outer_radius_mm
        assert later.bone(name).cortical_thickness_mm == pytest.approx(
            0.9 * anatomy.bone(name).cortical_thickness_mm)
    acquisition = replace(IDEAL, pixel_spacing_mm=0.175)
    pixels, _ = render(later, acquisition)
    patient = Patient.random(np.random.default_rng(4))
    first = to_dataset(pixels, acquisition, patient, "visit-1")
    second = to_dataset(pixels, acquisition, patient, "visit-2",
                        study_uid=first.StudyInstanceUID)
    assert second.StudyInstanceUID == first.StudyInstanceUID
    assert second.SOPInstanceUID != first.SOPInstanceUID
