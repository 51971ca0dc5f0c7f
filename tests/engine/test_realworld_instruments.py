"""The measuring instruments themselves (no real images needed): transformed copies map
points back exactly, the landmark judge tells a right bone from its neighbour, the
agreement check notices a moved bone or MCI."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dxr_node.evaluation import realworld as rw


@pytest.mark.parametrize("name", sorted({**rw.TRANSFORMS, **rw.TURNED}))
def test_transform_maps_a_point_where_its_pixel_went(name):
    rows, cols = 300, 220
    pixels = np.zeros((rows, cols), np.float32)
    point = np.array([70.0, 150.0])
    yy, xx = np.mgrid[0:rows, 0:cols]
    pixels += np.exp(-((yy - point[0]) ** 2 + (xx - point[1]) ** 2) / (2 * 4.0**2))
    moved, spacing, matrix = {**rw.TRANSFORMS, **rw.TURNED}[name](pixels, 0.1)
    where = matrix @ np.array([*point, 1.0])
    # The blob's intensity-weighted centre in the transformed image is where M says.
    weights = moved / moved.sum()
    yy, xx = np.mgrid[0:moved.shape[0], 0:moved.shape[1]]
    centre = np.array([(weights * yy).sum(), (weights * xx).sum()])
    assert np.allclose(centre, where[:2], atol=0.6), (centre, where)
    scale = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    assert spacing == pytest.approx(0.1 / scale, rel=0.01)


def _record(status="ok", centres=None, mci=0.5, width=60.0):
    centres = centres or {"MC2": (500, 700), "MC3": (500, 600), "MC4": (510, 500)}
    return {"status": status, "cause": None if status == "ok" else "x", "mci": mci,
            "laterality": "L",
            "bones": {n: {"center_rc": list(c), "width_px": width, "mci": mci}
                      for n, c in centres.items()}}


MARKS = {"laterality": "L", "MC2": [500, 700], "MC3": [500, 600], "MC4": [510, 500]}


def test_landmark_judge_accepts_the_annotated_bones_and_flags_a_shift_by_one():
    assert rw.landmark_check(_record(), MARKS)["wrong"] == []
    shifted = _record(centres={"MC2": (500, 600), "MC3": (510, 500), "MC4": (520, 400)})
    assert rw.landmark_check(shifted, MARKS)["wrong"] == ["MC2", "MC3", "MC4"]
    # A rejected analysis reports nothing ok, so nothing is a wrong bone reported ok.
    shifted["status"] = "rejected"
    assert rw.landmark_check(shifted, MARKS)["wrong"] == []


def test_a_band_moved_along_its_own_bone_is_told_from_a_wrong_bone():
    """Bones up the image, 400 px long, 100 px apart: MC2's band 120 px distal is judged
    wrong (not the mid-shaft measurement) yet lies on MC2 across the axis; a band between
    MC2 and MC3 lies on neither."""
    def record_with(mc2_centre):
        record = _record(centres={"MC2": mc2_centre, "MC3": (500, 600), "MC4": (510, 500)})
        for bone in record["bones"].values():
            bone.update(length_px=400.0, axis_rc=[-1.0, 0.0])
        return record

    along = record_with((380, 700))
    assert rw.landmark_check(along, MARKS)["wrong"] == ["MC2"]
    assert rw.across_own_bone(along, MARKS, "MC2")
    assert not rw.across_own_bone(record_with((500, 640)), MARKS, "MC2")


def test_landmark_judge_measures_how_far_along_its_bone_a_band_lies():
    """Bones running up the image (fingers up, axis along -rows), 400 px long: a band
    20 px distal of the annotated mid-shaft is 5 % off; a sideways shift is not counted."""
    record = _record(centres={"MC2": (480, 700), "MC3": (500, 610), "MC4": (510, 500)})
    for bone in record["bones"].values():
        bone.update(length_px=400.0, axis_rc=[-1.0, 0.0])
    offsets = rw.landmark_check(record, MARKS)["band_offsets"]
    assert offsets == pytest.approx({"MC2": 0.05, "MC3": 0.0, "MC4": 0.0})


def test_agreement_notices_status_bones_position_and_mci():
    base = _record()
    assert rw.agreement(base, _record()) == (True, "")
    assert not rw.agreement(base, _record(status="rejected"))[0]
    assert not rw.agreement(base, _record(centres={"MC2": (500, 700), "MC3": (500, 600)}))[0]
    moved = _record(centres={"MC2": (500, 730), "MC3": (500, 600), "MC4": (510, 500)})
    assert "MC2 centre moved" in rw.agreement(base, moved)[1]
    assert "MCI" in rw.agreement(base, _record(mci=0.52))[1]


@pytest.mark.parametrize(("name", "adult", "spacing"), [
    ("scaph_20085361_R_16F.jpg", False, 0.14), ("scaph_09662574_L_18F.jpg", True, 0.14),
    ("ra2_UAB001-LH.jpg", True, 0.14), ("mura_aashish900_HAND.png", True, 0.14),
    ("dha_3170.jpg", False, 0.1), ("shsnet_rsna_train_img1.png", False, 0.1)])
def test_sources_ages_and_assumed_spacing(name, adult, spacing):
    assert rw.is_adult(name) is adult
    assert rw.assumed_spacing_mm(name) == spacing


@pytest.mark.parametrize(("name", "header"), [
    ("scaph_19559003_L_30M.jpg", ("L", "AP")),  # the scaphoid series is AP (README)
    ("scaph_182504260_R_28F.jpg", ("R", "AP")),
    ("ra2_UAB001-LH.jpg", ("L", "PA")),
    ("dha_3170.jpg", None),  # the name does not tell the hand
    ("mura_aashish900_HAND.png", None),
])
def test_header_implied_by_the_file_name(name, header):
    assert rw.header_for(name) == header


def test_implied_header_reaches_the_engine_as_a_dicom_header_would():
    from dxr_node.engine.analyze import _image_laterality
    from dxr_node.engine.image import Radiograph

    radiograph = Radiograph(np.zeros((64, 64), np.float32), None, None, None, None, "x", None)
    ap_left = rw.with_header(radiograph, "L", "AP")
    assert ap_left.laterality_tag == "L"
    assert _image_laterality(ap_left) == "R"  # AP: the thumb lies where a PA right hand's does
    assert _image_laterality(rw.with_header(radiograph, "L", "PA")) == "L"
