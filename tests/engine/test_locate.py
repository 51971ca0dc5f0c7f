"""Locating the hand, its laterality and metacarpals II-IV on phantoms and real images.

Phantom tests compare with the generator's truth; real-image tests compare with
eye-annotated mid-shaft centres (tests/data/realdata_landmarks.json) and skip when
../shared/realdata (not shipped with the project) is absent.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from dxr_node.engine import image, locate
from dxr_node.engine.locate import LocateError, locate_metacarpals
from dxr_node.engine.result import ProblemCode
from dxr_node.phantom import generate

# The module (the package re-exports its `render` function under the same name).
render = importlib.import_module("dxr_node.phantom.render")

REPO = Path(__file__).resolve().parents[2]
REALDATA = REPO / ".." / "shared" / "realdata"
LANDMARKS = json.loads((REPO / "tests" / "data" / "realdata_landmarks.json").read_text())
ANNOTATED = sorted(name for name in LANDMARKS if not name.startswith("_"))
BONES = ("MC2", "MC3", "MC4")

# Real images whose listed bones are still located on the wrong spot (children with open
# growth plates, where a physis is taken for the joint); kept visible as expected failures.
KNOWN_MISSES: dict[str, tuple[str, ...]] = {}


def _phantom_modules():
    return generate, render


def _render(seed: int, index: int, variant: str = "adult", **changes):
    """Bone-bright phantom pixels and their truth record."""
    generate, render = _phantom_modules()
    anatomy, acquisition, _ = generate.image_specs(seed, index, variant)
    acquisition = replace(acquisition, photometric="MONOCHROME2", for_processing=False,
                          **changes)
    pixels, truth = render.render(anatomy, acquisition)
    return pixels.astype(np.float32), truth


def _render_as_in_mixed_set(seed: int, index: int, variant: str = "adult"):
    """Image ``index`` of ``write_phantom_set(n, seed, variant=...)``: the set's mix of
    hands, finger directions, modalities and edge enhancement, rendered bone-bright."""
    generate, _ = _phantom_modules()
    _, acquisition, _ = generate.image_specs(seed, index, variant)
    enhance = index % 3 != 1
    return _render(seed, index, variant, laterality="LR"[index % 2],
                   fingers="down" if index % 4 == 3 else "up",
                   modality="CR" if index % 3 == 2 else "DX",
                   edge_sigma_mm=(acquisition.edge_sigma_mm or 2.5) if enhance else 0.0,
                   edge_gain=(acquisition.edge_gain or 0.5) if enhance else 0.0)


def _angle_difference(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _assert_matches_truth(found, truth, tolerance_px: float = 3.0) -> None:
    assert found.laterality == truth["laterality"]
    assert not found.problems, [p.text for p in found.problems]
    for name in BONES:
        bone, true = found.bones[name], truth["bones"][name]
        error = math.dist(bone.center_rc, true["midshaft_center_rc"])
        assert error <= tolerance_px, f"{name} centre {error:.1f} px from the truth"
        assert _angle_difference(bone.axis_angle_deg, true["axis_angle_deg"]) <= 3.0, name
        assert bone.length_px == pytest.approx(math.dist(true["proximal_rc"], true["distal_rc"]),
                                               rel=0.05)


@pytest.mark.parametrize(("rotation_deg", "fingers", "laterality"), [
    (0.0, "up", "R"),
    (0.0, "up", "L"),
    (20.0, "up", "R"),
    (-20.0, "up", "L"),
    (0.0, "down", "R"),
    (-15.0, "down", "L"),
])
def test_phantom_bones_found_at_their_true_place(rotation_deg, fingers, laterality):
    pixels, truth = _render(11, 0, rotation_deg=rotation_deg, fingers=fingers,
                            laterality=laterality)
    found = locate_metacarpals(pixels)
    _assert_matches_truth(found, truth)
    assert not found.paediatric


@pytest.mark.slow
def test_phantom_set_from_dicom_files(tmp_path):
    """A mixed set as the generator writes it (MONOCHROME1/2, DX/CR, edge enhancement)."""
    generate, _ = _phantom_modules()
    truth = generate.write_phantom_set(tmp_path, n=8, seed=5)
    centre_errors = []
    for name, record in truth.items():
        found = locate_metacarpals(image.load_radiograph(tmp_path / name).pixels)
        assert found.laterality == record["laterality"], name
        for bone in BONES:
            if bone in found.bones:
                true = record["bones"][bone]["midshaft_center_rc"]
                centre_errors.append(math.dist(found.bones[bone].center_rc, true))
            else:
                centre_errors.append(math.inf)
    centre_errors = np.array(centre_errors)
    assert np.mean(centre_errors <= 3.0) >= 0.75, np.round(centre_errors, 1)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_phantom_with_the_other_hands_header_is_never_measured_the_headers_way(index):
    """A wrong header laterality (or AP/PA mix-up): the hand must not be read from the
    thumb end the header implies (MC2 and MC4 swapped, MC5 on the thumb), nor measured
    against the header; the image's hand is kept, so image and header disagree."""
    pixels, truth = _render(11, index)
    other = {"L": "R", "R": "L"}[truth["laterality"]]
    found = locate_metacarpals(pixels, None, other)
    assert found.problems, "measured against the header"
    assert found.laterality in (None, truth["laterality"])


def test_phantom_bones_cut_by_the_image_edge_are_reported():
    pixels, truth = _render(11, 0, fingers="up", rotation_deg=0.0)
    bottom = int(truth["bones"]["MC3"]["midshaft_center_rc"][0]) + 150  # through the bases
    found = locate_metacarpals(pixels[:bottom])
    assert found.laterality == truth["laterality"]
    assert {(p.code, p.bone) for p in found.problems} == {(ProblemCode.BONE_CUT, b) for b in BONES}
    assert {p.text for p in found.problems} == {f"{b} shaft cut by the field edge" for b in BONES}
    assert not found.bones


def test_phantom_child_is_flagged_paediatric():
    pixels, _ = _render(11, 1, "paediatric")
    found = locate_metacarpals(pixels)
    assert found.paediatric
    assert ProblemCode.TODDLER not in {p.code for p in found.problems}


def test_phantom_toddler_is_rejected():
    pixels, truth = _render(11, 2, "toddler")
    found = locate_metacarpals(pixels, pixel_spacing_mm=truth["pixel_spacing_mm"])
    assert ProblemCode.TODDLER in {p.code for p in found.problems}
    assert found.paediatric


def test_phantom_non_hand_is_rejected():
    pixels, _ = _render(11, 3, "non-hand")
    found = locate_metacarpals(pixels)
    assert not found.bones
    assert found.laterality is None
    assert found.problems[0].code in (ProblemCode.NOT_A_HAND, ProblemCode.FINGER_RAYS)
    assert "not a hand radiograph" in found.problems[0].text


def test_blank_image_is_rejected():
    found = locate_metacarpals(np.full((400, 300), 100.0, np.float32))
    assert not found.bones
    assert found.problems


@pytest.mark.parametrize("bad", [np.zeros(100), np.zeros((20, 20)), np.zeros((3, 200, 200))])
def test_unusable_arrays_raise_a_clear_error(bad):
    with pytest.raises(LocateError, match="2-D greyscale image"):
        locate_metacarpals(bad)


def test_non_finite_pixels_raise_a_clear_error():
    pixels = np.zeros((200, 200), np.float32)
    pixels[5, 5] = np.nan
    with pytest.raises(LocateError, match="NaN"):
        locate_metacarpals(pixels)


def _real(name: str) -> np.ndarray:
    if not REALDATA.is_dir():
        pytest.skip(f"real images not available at {REALDATA}")
    pixels = cv2.imread(str(REALDATA / name), cv2.IMREAD_GRAYSCALE)
    assert pixels is not None, name
    return pixels.astype(np.float32)


@pytest.mark.parametrize("name", ANNOTATED)
def test_real_image_laterality_and_bones(name):
    found = locate_metacarpals(_real(name))
    annotation = LANDMARKS[name]
    assert found.laterality == annotation["laterality"]
    assert ProblemCode.TODDLER not in {p.code for p in found.problems}
    spacing = np.mean([math.dist(annotation["MC2"], annotation["MC3"]),
                       math.dist(annotation["MC3"], annotation["MC4"])])
    misses = []
    for bone in BONES:
        located = found.bones.get(bone)
        if located is None:
            misses.append(f"{bone} not located ({'; '.join(p.text for p in found.problems)})")
        elif math.dist(located.center_rc, annotation[bone]) > 0.35 * spacing:
            error = math.dist(located.center_rc, annotation[bone]) / spacing
            misses.append(f"{bone} off by {error:.2f} of the inter-metacarpal spacing")
    expected = KNOWN_MISSES.get(name, ())
    unexpected = [m for m in misses if m.split()[0] not in expected]
    assert not unexpected, unexpected
    if expected and misses:
        pytest.xfail(f"known misses: {misses}")


@pytest.mark.parametrize("name", ["shsnet_rsna_train_img21.png", "shsnet_rsna_train_img64.png"])
@pytest.mark.parametrize("change", ["mirror", "quarter turn"])
def test_real_image_mirrored_or_turned(name, change):
    """A mirrored image shows the other hand; a quarter turn changes nothing but the axes."""
    pixels = _real(name)
    rows, cols = pixels.shape
    annotation = LANDMARKS[name]
    if change == "mirror":
        pixels = np.ascontiguousarray(pixels[:, ::-1])
        expected = {"L": "R", "R": "L"}[annotation["laterality"]]
        where = {bone: (annotation[bone][0], cols - 1 - annotation[bone][1]) for bone in BONES}
    else:  # counter-clockwise: (row, col) -> (cols - 1 - col, row)
        pixels = np.ascontiguousarray(np.rot90(pixels))
        expected = annotation["laterality"]
        where = {bone: (cols - 1 - annotation[bone][1], annotation[bone][0]) for bone in BONES}
    found = locate_metacarpals(pixels)
    assert found.laterality == expected
    spacing = math.dist(where["MC2"], where["MC4"]) / 2
    for bone in BONES:
        assert math.dist(found.bones[bone].center_rc, where[bone]) <= 0.35 * spacing, bone


@pytest.mark.parametrize("name", ["radinf_rsna_6.png", "radinf_rsna_8.png"])
def test_real_toddlers_are_rejected(name):
    found = locate_metacarpals(_real(name))
    assert ProblemCode.TODDLER in {p.code for p in found.problems}
    assert found.paediatric


@pytest.mark.parametrize("name", ["shsnet_rsna_train_img64.png", "shsnet_rsna_train_img80.png",
                                  "k1101_dha_3147.jpg"])
def test_real_children_are_paediatric(name):
    found = locate_metacarpals(_real(name))
    assert found.paediatric
    assert len(found.details["open_physes"]) >= 2


def test_real_child_with_one_growth_plate_seen_is_not_called_a_child():
    """Open physes must show on two bones: img95's show clearly on one only (the others
    blur into the joint), and one band alone is also what an adult's joint texture gives
    (issue 9: no adult called a child). The header's age decides such a film."""
    found = locate_metacarpals(_real("shsnet_rsna_train_img95.png"))
    assert len(found.details["open_physes"]) == 1
    assert not found.paediatric


@pytest.mark.parametrize("name", ["shsnet_rsna_train_img1.png", "shsnet_rsna_train_img21.png",
                                  "shsnet_rsna_train_img23.png", "shsnet_rsna_train_img3.png"])
def test_real_fused_physes_are_not_paediatric(name):
    assert not locate_metacarpals(_real(name)).paediatric


@pytest.mark.slow
def test_phantom_precision_set_spread_hand_is_outlined_on_the_skin(tmp_path):
    """One spread hand imaged repeatedly (bench_engine's precision set): a threshold between
    soft tissue and bone also shows five smooth rays; the hand's outline must win, or
    the bones are taken for fingers and MC3/MC4 are lost."""
    generate, _ = _phantom_modules()
    truth = generate.write_phantom_set(tmp_path, n=4, seed=100, same_anatomy=True)
    for name, record in truth.items():
        found = locate_metacarpals(image.load_radiograph(tmp_path / name).pixels)
        _assert_matches_truth(found, record)
        assert not found.paediatric, name


@pytest.mark.parametrize(("seed", "index", "tolerance_px"), [
    (2026, 1, 3.0),  # MC2 base flaring long before its CMC gap: was cut 12 % short
    (2026, 12, 3.0),
    (11, 1, 3.0),
    (11, 13, 3.0),  # the same for MC3
    # MC4 base overlapping the hamate, its ridge running on into it: was 30 % too long
    # (dragging MC2/MC3 with it), or "out of line". No joint space shows on its axis, so
    # its base lies where MC2 and MC3 put it by the usual proportions (MC4/MC2 0.855;
    # this hand's is 0.823): its centre within 16 px (2.8 % of its length; 15.1 px on the
    # hand turned upright, 14.9 as it was stored).
    (1, 7, 16.0),
    (2026, 19, 5.0),
])
def test_phantom_metacarpal_base_ends_at_the_cmc_joint(seed, index, tolerance_px):
    pixels, truth = _render_as_in_mixed_set(seed, index)
    found = locate_metacarpals(pixels)
    _assert_matches_truth(found, truth, tolerance_px)
    assert not found.paediatric


@pytest.mark.parametrize(("seed", "index"), [(3, 9), (4, 2), (4, 3), (4, 5)])
def test_phantom_child_mcp_joint_is_the_first_gap_beyond_the_growth_plate(seed, index):
    """Beyond a metacarpal's growth plate comes the MCP joint, then the phalanx's own
    growth plate: the head ends at the first (MC4 was 8 % too long)."""
    pixels, truth = _render_as_in_mixed_set(seed, index, "paediatric")
    found = locate_metacarpals(pixels)
    assert found.paediatric
    bone, true = found.bones["MC4"], truth["bones"]["MC4"]
    assert math.dist(bone.center_rc, true["midshaft_center_rc"]) <= 3.0
    assert math.dist(bone.distal_rc, true["distal_rc"]) <= 6.0


def _rotated_with_padding(pixels: np.ndarray, angle_deg: float, points: dict):
    """The image turned by angle_deg (counter-clockwise) on a canvas holding all of it, the
    corners padded with 0 as cv2.warpAffine leaves them; the points moved alike."""
    rows, cols = pixels.shape
    matrix = cv2.getRotationMatrix2D((cols / 2, rows / 2), angle_deg, 1.0)
    corners = np.array([[0, 0], [cols, 0], [0, rows], [cols, rows]], float)
    mapped = corners @ matrix[:, :2].T + matrix[:, 2]
    matrix[:, 2] -= mapped.min(axis=0)
    width, height = np.ceil(mapped.max(axis=0) - mapped.min(axis=0)).astype(int)
    turned = cv2.warpAffine(pixels, matrix, (int(width), int(height)), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    moved = {name: tuple((np.array(rc[::-1]) @ matrix[:, :2].T + matrix[:, 2])[::-1])
             for name, rc in points.items()}
    return turned, moved


@pytest.mark.parametrize(("name", "angle_deg"), [
    ("shsnet_rsna_train_img80.png", -30.0),
    ("shsnet_rsna_train_img80.png", 45.0),
    ("shsnet_rsna_train_img95.png", -30.0),
    ("shsnet_rsna_train_img43.png", -120.0),
    ("shsnet_rsna_train_img43.png", -30.0),
    # img1 has black corners of its own: turned again, they join the new ones around the
    # border into one flat polygon of 12-13 sides, once left in the field as background.
    ("shsnet_rsna_train_img1.png", 7.0),
    ("shsnet_rsna_train_img1.png", -12.0),
])
def test_real_image_rotated_with_black_corners(name, angle_deg):
    """The black corners a rotation leaves are no background: taken for it, the whole
    picture became the "hand" and it was rejected as not a hand."""
    annotation = LANDMARKS[name]
    pixels, where = _rotated_with_padding(_real(name), angle_deg,
                                          {bone: annotation[bone] for bone in BONES})
    found = locate_metacarpals(pixels)
    assert found.laterality == annotation["laterality"], found.problems
    spacing = math.dist(where["MC2"], where["MC4"]) / 2
    for bone in BONES:
        assert math.dist(found.bones[bone].center_rc, where[bone]) <= 0.35 * spacing, bone


@pytest.mark.parametrize("angle_deg", [7.0, -12.0, 20.0])
def test_padding_turned_twice_is_found_as_one_polygon(angle_deg):
    """img1 (RSNA) has black corners of its own; turned again, they join the new ones
    around the border into one flat region of 12-13 straight sides (more than a corner's
    3-6): padding all the same, not background (the whole field became the "hand")."""
    turned, _ = _rotated_with_padding(_real("shsnet_rsna_train_img1.png"), angle_deg, {})
    padding = locate._padding(turned)
    content = cv2.erode((turned > 0).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert padding[turned == 0].mean() > 0.99
    assert not padding[content].any()


def _real_film(name: str, spacing_mm: float) -> image.Radiograph:
    """A film of ../shared/realdata-2 at an assumed spacing; the test skips without it."""
    path = REPO / ".." / "shared" / "realdata-2" / name
    if not path.is_file():
        pytest.skip(f"real image not available at {path}")
    return image.load_radiograph(path, spacing_mm)


@pytest.mark.parametrize("angle_deg", [12.0, -12.0, 20.0])
def test_a_thumb_read_as_the_little_finger_does_not_swap_the_labels(angle_deg):
    """dha_3270 (an adolescent's left hand, ../shared/realdata-2) turned a little: four
    rays are found, the thumb among them and the little finger not. Read with the ring
    finger as the index, the row of shafts counted MC1 as MC5 and the hand was reported
    ok with MC2 and MC4 swapped (laterality R). The thumb's metacarpal head lies half a
    length proximal of MC4's, no little finger's does. Centres: the unturned film's,
    looked at on its overlay."""
    film = _real_film("dha_3270.jpg", 0.1)
    upright = {"MC2": (1157, 769), "MC3": (1108, 601), "MC4": (1154, 465)}  # (row, col)
    pixels, where = _rotated_with_padding(film.pixels, angle_deg, upright)
    found = locate_metacarpals(pixels, 0.1)
    spacing = math.dist(where["MC2"], where["MC4"]) / 2
    for name, bone in found.bones.items():  # on its own bone (a child's ends vary along it)
        nearest = min(where, key=lambda other: math.dist(bone.center_rc, where[other]))
        assert nearest == name and math.dist(bone.center_rc, where[name]) <= 0.5 * spacing, (
            name, nearest, found.laterality)
    assert set(found.bones) == set(upright) and found.laterality == "L", found.problems


def test_real_image_base_overlapping_the_carpus_keeps_its_length():
    """img43's MC2 base overlaps the trapezoid with no joint space on the axis: a faint dip
    in the cancellous base cut it 12 % short (centre 0.25 of the spacing off). Searched as
    far as the hand's longest ray implies, MC2's axis also shows a carpal joint 1.21 ray
    lengths from its head, deeper than MC3's CMC gap: taken, it put MC3's base in the
    carpus past that CMC gap, which now costs the gap's depth."""
    name = "shsnet_rsna_train_img43.png"
    found = locate_metacarpals(_real(name))
    annotation = LANDMARKS[name]
    spacing = math.dist(annotation["MC2"], annotation["MC4"]) / 2
    assert math.dist(found.bones["MC2"].center_rc, annotation["MC2"]) <= 0.15 * spacing
    assert found.bones["MC2"].length_px >= 0.95 * found.bones["MC3"].length_px


@pytest.mark.slow
def test_phantom_for_processing_bases_end_at_the_carpus(tmp_path):
    """"For processing" images (linear, no edge enhancement): MC2 bases were cut up to 18 %
    short and an MC4 ran 29 % into the carpus (images 0, 2 and 3 of this set)."""
    generate, _ = _phantom_modules()
    truth = generate.write_phantom_set(tmp_path, n=4, seed=8, for_processing=True)
    for name, record in truth.items():
        found = locate_metacarpals(image.load_radiograph(tmp_path / name).pixels)
        _assert_matches_truth(found, record)


def _refined(name: str, bases: list[tuple[float, float]], ray_length: float = 100.0):
    from dxr_node.engine.locate import _Refined

    return _Refined(name, np.array([50.0, 10.0]), np.array([0.0, 1.0]), 12.0, ray_length,
                    ray_length, bases)


def test_bases_follow_the_proportions_of_the_metacarpals_not_the_deepest_gap():
    """A carpal joint beyond MC2's base is the deepest gap on its axis; the CMC gaps of all
    three bones, less deep but in the usual proportions (MC3 4 %, MC4 15 % shorter than
    MC2), win. A bone with no gap on its axis takes the length the others imply."""
    from dxr_node.engine.locate import LENGTH_RATIO, _choose_bases

    chosen = _choose_bases({
        "MC2": _refined("MC2", [(130.0, 1.0), (100.0, 0.5)]),
        "MC3": _refined("MC3", [(95.5, 0.5)]),
        "MC4": _refined("MC4", [], ray_length=70.0),
    })
    assert chosen["MC2"].length_px == pytest.approx(100.0)
    assert chosen["MC3"].length_px == pytest.approx(95.5)
    implied = math.exp(np.mean(np.log([100.0 / LENGTH_RATIO["MC2"],
                                       95.5 / LENGTH_RATIO["MC3"]]))) * LENGTH_RATIO["MC4"]
    assert chosen["MC4"].length_px == pytest.approx(implied, rel=1e-6)
    # The head stays where it was found; only the base moves along the axis.
    assert chosen["MC4"].distal_rc == pytest.approx((10.0, 50.0))
    assert chosen["MC4"].proximal_rc == pytest.approx((10.0 + implied, 50.0))


def test_ripples_of_one_dip_are_one_base_and_leave_room_for_the_next_gap():
    """Gaps found deepest first; those ending at the same bone edge (within the tolerance)
    are one base. Four copies of one base once filled every slot, and a CMC gap further
    on, kept at another image scale, never reached the choice."""
    from dxr_node.engine.locate import MAX_BASES, _distinct_bases

    found = [(361.0, 0.73), (361.4, 0.61), (360.8, 0.59), (361.0, 0.56), (443.0, 0.53),
             (479.0, 0.39)]
    assert _distinct_bases(found, 10.0) == [(361.0, 0.73), (443.0, 0.53), (479.0, 0.39)]
    spread = [(100.0 + 20 * k, 1.0 - 0.1 * k) for k in range(MAX_BASES + 2)]
    assert _distinct_bases(spread, 10.0) == spread[:MAX_BASES]


def test_a_bone_alone_keeps_the_ray_end_when_its_axis_shows_no_gap():
    from dxr_node.engine.locate import _choose_bases

    chosen = _choose_bases({"MC3": _refined("MC3", [], ray_length=88.0)})
    assert chosen["MC3"].length_px == pytest.approx(88.0)


def _canonical(proximal: tuple[float, float], distal: tuple[float, float]):
    from dxr_node.engine.locate import _CanonicalBone

    proximal_xy, distal_xy = np.array(proximal), np.array(distal)
    return _CanonicalBone(distal_xy, proximal_xy, 0.5 * (proximal_xy + distal_xy), 10.0, 1.0)


def test_metacarpals_side_by_side_and_fanning_out_are_not_splayed():
    from dxr_node.engine.locate import _splayed

    fan = {"MC2": _canonical((100, 300), (80, 100)), "MC3": _canonical((130, 300), (130, 95)),
           "MC4": _canonical((160, 300), (180, 110))}
    assert not _splayed(fan)


@pytest.mark.parametrize("bones", [
    # two axes crossing in the carpus (wide_2026_009 before the whole hand's mask)
    {"MC2": _canonical((100, 300), (160, 200)), "MC3": _canonical((160, 300), (100, 200))},
    # one bone across the others (wide_2026_020: carpal rows taken for metacarpals)
    {"MC3": _canonical((130, 300), (130, 200)), "MC4": _canonical((140, 250), (240, 250))},
])
def test_bones_that_cross_or_splay_are_no_metacarpals(bones):
    from dxr_node.engine.locate import _splayed

    assert _splayed(bones)


def test_adolescent_hand_turned_a_quarter_is_not_called_a_toddler():
    """dha_3183 (an adolescent's hand, ../shared/realdata-2) turned 90 degrees: two bones
    were found short (segments of their shafts) beside a whole MC4 of an adult's shape,
    and the short ones' median made the hand "too small to measure (toddler)"."""
    from dxr_node.evaluation import realworld

    film = _real_film("dha_3183.jpg", 0.1)
    radiograph, _ = realworld.transformed(film, "rot90")
    found = locate_metacarpals(radiograph.pixels, radiograph.pixel_spacing_mm)
    assert ProblemCode.TODDLER not in {p.code for p in found.problems}


def test_a_base_is_looked_for_as_far_as_the_hands_longest_ray_implies():
    """dha_3236 (../shared/realdata-2): the rays of MC3 and MC4 were found 13-20 % short
    at the working scale and their CMC gaps lay beyond the reach of their own lengths,
    so all three bases were placed inside the bases (MC3/MC2 0.86 where the usual
    proportion is 0.955). The bases looked at on the film lie at the CMC joints below."""
    film = _real_film("dha_3236.jpg", 0.1)
    found = locate_metacarpals(film.pixels, 0.1)
    cmc_joints = {"MC2": (1666, 739), "MC3": (1620, 643), "MC4": (1612, 552)}  # (row, col)
    for name, joint in cmc_joints.items():
        bone = found.bones[name]
        assert math.dist(bone.proximal_rc, joint) <= 0.04 * bone.length_px, name


def test_an_adult_head_ends_at_the_mcp_joint_not_in_the_phalanx_base():
    """scaph_20067963_R_30F (a 30-year-old, ../shared/realdata-2): against a bone's length
    the pale zone under each proximal phalanx's subchondral plate dipped deeper than the
    narrow MCP joint gap, so the heads were put 28-41 px into the phalanges and every
    band lay distal of mid-shaft. The joints looked at on 3x crops of the film are below."""
    film = _real_film("scaph_20067963_R_30F.jpg", 0.14)
    found = locate_metacarpals(film.pixels, 0.14)
    mcp_joints = {"MC2": (411, 1025), "MC3": (401, 836), "MC4": (432, 704)}  # (row, col)
    for name, joint in mcp_joints.items():
        assert math.dist(found.bones[name].distal_rc, joint) <= 15.0, name


def test_no_physis_is_read_beside_a_joint_found_far_from_the_bone_end():
    """scaph_20016083_L_22M (a 22-year-old, ../shared/realdata-2): MC4's deepest band near
    its head lay 2.2 widths inside the shaft from the end found, so the band taken for the
    joint was not the joint; a band beside it was read as a physis, and with MC3's the
    adult was called a child."""
    film = _real_film("scaph_20016083_L_22M.jpg", 0.14)
    found = locate_metacarpals(film.pixels, 0.14)
    assert "MC4" not in found.details["open_physes"]
    assert not found.paediatric


def test_growth_plates_of_different_kinds_on_two_bones_make_no_child():
    """scaph_20077762_L_22F (a 22-year-old, ../shared/realdata-2): MC4 showed a band beyond
    its MCP joint (the pale zone under the phalanx's subchondral plate) and MC2 one before
    its deepest band (that band in the phalanx base): two bones with a "physis" each, so
    the adult was called a child. A child's physes of one kind (under the metacarpal heads,
    or at the phalanges' bases) are open on all rays together."""
    film = _real_film("scaph_20077762_L_22F.jpg", 0.14)
    found = locate_metacarpals(film.pixels, 0.14)
    assert not found.problems
    assert len(found.details["open_physes"]) <= 1
    assert not found.paediatric


def test_a_base_implied_by_the_others_is_not_put_past_a_clear_gap_of_its_own():
    """MC2 shows one deep gap far out (a carpal joint); MC3 shows its CMC gap where the
    usual proportions put MC2's base short of that joint. Taking MC2's deep gap would
    put MC3's base in the carpus past its own visible joint: MC3's gap wins."""
    from dxr_node.engine.locate import LENGTH_RATIO, _choose_bases

    chosen = _choose_bases({
        "MC2": _refined("MC2", [(121.0, 0.74)]),
        "MC3": _refined("MC3", [(95.5, 0.53)]),
        "MC4": _refined("MC4", []),
    })
    assert chosen["MC3"].length_px == pytest.approx(95.5)
    assert chosen["MC2"].length_px == pytest.approx(95.5 / LENGTH_RATIO["MC3"], rel=1e-6)


def _bone_between(name: str, proximal_rc: tuple[float, float],
                  distal_rc: tuple[float, float]) -> locate.LocatedBone:
    length = math.dist(proximal_rc, distal_rc)
    centre = ((proximal_rc[0] + distal_rc[0]) / 2, (proximal_rc[1] + distal_rc[1]) / 2)
    return locate.LocatedBone(name, centre, 90.0, proximal_rc, distal_rc, length, 40.0)


@pytest.mark.parametrize(("mc4_head_row", "lags"), [(150.0, False), (230.0, True)])
def test_mc4s_head_far_behind_mc3s_is_not_a_row_of_mcp_joints(mc4_head_row, lags):
    """Fingers up, lengths 400 px: MC4's head 0.125 lengths behind MC3's is a hand's arc of
    MCP joints; 0.325 lengths is one set of heads found in the phalanges."""
    bones = {"MC2": _bone_between("MC2", (520.0, 300.0), (110.0, 300.0)),
             "MC3": _bone_between("MC3", (500.0, 400.0), (100.0, 400.0)),
             "MC4": _bone_between("MC4", (mc4_head_row + 340.0, 500.0), (mc4_head_row, 500.0))}
    assert locate._mc4_head_lags(bones) is lags
