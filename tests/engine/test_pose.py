"""The upright pose: quarter turns and a mirror that bring the fingers up and the thumb to
the right, and back again. A film stored turned or mirrored must give the same bones."""
from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from dxr_node.engine.analyze import analyze
from dxr_node.engine.image import load_radiograph, radiograph_from_dataset
from dxr_node.engine.locate import locate_metacarpals
from dxr_node.engine.pose import Pose, upright_pose
from dxr_node.phantom.generate import phantom_dataset

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared"

POSES = list(itertools.product(range(4), (False, True)))


@pytest.mark.parametrize(("turns", "mirrored"), POSES)
def test_points_and_angles_map_back_to_the_input(turns, mirrored):
    image = np.arange(7 * 11, dtype=np.float32).reshape(7, 11)
    pose = Pose(turns, mirrored, image.shape)
    upright = pose.upright(image)
    for r, c in itertools.product(range(upright.shape[0]), range(upright.shape[1])):
        ri, ci = pose.to_input((r, c))
        assert image[int(ri), int(ci)] == upright[r, c]
    # A direction from one pixel to another maps as the pixels do.
    a, b = (1.0, 2.0), (5.0, 3.0)
    angle_up = math.degrees(math.atan2(-(b[0] - a[0]), b[1] - a[1])) % 360
    ai, bi = pose.to_input(a), pose.to_input(b)
    angle_in = math.degrees(math.atan2(-(bi[0] - ai[0]), bi[1] - ai[1])) % 360
    assert pose.angle_to_input(angle_up) == pytest.approx(angle_in)


@pytest.mark.parametrize(("fingers", "thumb", "turns", "mirrored"), [
    ((0.0, -1.0), (1.0, 0.0), 0, False),   # fingers up, thumb right: as it is
    ((0.0, -1.0), (-1.0, 0.0), 0, True),   # thumb left: mirrored
    ((1.0, 0.2), (0.0, 1.0), 1, False),    # fingers right, thumb down: a quarter turn
    ((0.1, 1.0), (-1.0, 0.0), 2, False),   # fingers down, thumb on the left: half a turn
    ((-1.0, 0.0), None, 3, False),         # fingers left, thumb unknown: never mirrored
])
def test_pose_puts_fingers_up_and_thumb_right(fingers, thumb, turns, mirrored):
    pose = upright_pose((100, 80), np.array(fingers), None if thumb is None else np.array(thumb))
    assert (pose.quarter_turns, pose.mirrored) == (turns, mirrored)


def test_hand_rotation_is_reported_in_the_input():
    # Fingers right (clockwise 90 from up) turned upright: 0 there, 90 in the input.
    assert Pose(1, False, (10, 10)).rotation_to_input(0.0) == pytest.approx(90.0)
    assert Pose(0, True, (10, 10)).rotation_to_input(10.0) == pytest.approx(-10.0)
    assert Pose(2, False, (10, 10)).rotation_to_input(5.0) == pytest.approx(-175.0)


def _stored(pixels: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    turned = np.rot90(pixels, turns)
    return np.ascontiguousarray(turned[:, ::-1] if mirrored else turned)


@pytest.mark.parametrize("name", ["realdata/shsnet_rsna_train_img13.png",
                                  "realdata-2/scaph_14962613_L_36F.jpg"])
def test_a_film_stored_turned_or_mirrored_gives_the_same_bones(name):
    """All eight ways of storing a real film: the same bones at the same anatomical place
    (mapped back to the original's pixels to within a hundredth of a pixel), the same
    laterality once a mirror is accounted for, and the same MCI."""
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"real image not available at {path}")
    original = load_radiograph(path, 0.1)
    reference = analyze(original)
    assert reference.status == "ok"
    located_there = locate_metacarpals(original.pixels).bones
    rows, cols = original.pixels.shape
    for turns, mirrored in POSES[1:]:
        stored = Pose(turns, mirrored, (rows, cols))
        pixels = stored.upright(original.pixels)
        found = locate_metacarpals(pixels)
        other = {"L": "R", "R": "L"}[reference.laterality]
        assert found.laterality == (other if mirrored else reference.laterality)
        assert found.bones.keys() == located_there.keys()
        for bone, located in found.bones.items():
            # The stored copy's pixels are the original's through ``stored``.
            back = stored.to_input(located.center_rc)
            assert math.dist(back, located_there[bone].center_rc) < 0.01, (turns, mirrored)
        copy = analyze(replace(original, pixels=pixels))
        assert copy.status == reference.status
        assert copy.mci == pytest.approx(reference.mci, abs=1e-4)


@pytest.mark.slow  # sixteen analyses
@pytest.mark.parametrize("index", [0, 3])
def test_a_phantom_stored_turned_or_mirrored_gives_the_same_result(index):
    """The same check on the project's own phantoms (no ../shared needed): every way of
    storing the film gives the same status and bones, each bone's T and W to a
    thousandth of a pixel and its centre mapped back to within a hundredth. A mirrored
    copy shows the other hand, and its header says so."""
    original = radiograph_from_dataset(phantom_dataset(seed=5, index=index), "phantom")
    reference = analyze(original)
    assert reference.status == "ok", reference.reasons
    other_hand = {"L": "R", "R": "L"}[original.laterality_tag]
    rows, cols = original.pixels.shape
    for turns, mirrored in POSES[1:]:
        stored = Pose(turns, mirrored, (rows, cols))
        copy = analyze(replace(original, pixels=stored.upright(original.pixels),
                               laterality_tag=other_hand if mirrored
                               else original.laterality_tag))
        assert copy.status == reference.status, (turns, mirrored, copy.reasons)
        assert copy.laterality == (other_hand if mirrored else reference.laterality)
        assert copy.bones.keys() == reference.bones.keys()
        for name, bone in copy.bones.items():
            there = reference.bones[name]
            assert bone.cortical_thickness_px == pytest.approx(there.cortical_thickness_px,
                                                               abs=1e-3), (turns, mirrored)
            assert bone.width_px == pytest.approx(there.width_px, abs=1e-3), (turns, mirrored)
            back = stored.to_input(bone.center_rc)
            assert math.dist(back, there.center_rc) < 0.01, (name, turns, mirrored)


def test_a_laterality_disagreement_names_the_hand_the_image_shows_in_the_headers_view():
    """An AP header with the hand a PA reading shows: seen AP, the image is the other hand.
    The note once read "image shows L, header says L (AP view)"."""
    dataset = phantom_dataset(seed=5, index=0)
    original = radiograph_from_dataset(dataset, "phantom")
    assert analyze(original).status == "ok"
    dataset.ViewPosition = "AP"
    analysis = analyze(radiograph_from_dataset(dataset, "phantom"))
    hand = original.laterality_tag
    other = {"L": "R", "R": "L"}[hand]
    assert analysis.status != "ok"
    assert (f"laterality disagreement: image shows {other} (AP view), header says {hand}"
            in analysis.reasons), analysis.reasons


def test_an_image_with_no_hand_keeps_its_pose():
    noise = np.random.default_rng(3).normal(100, 5, (200, 300)).astype(np.float32)
    assert upright_pose(noise.shape, None, None).identity
    found = locate_metacarpals(cv2.GaussianBlur(noise, (0, 0), 3))
    assert not found.bones
