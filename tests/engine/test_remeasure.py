"""Re-measuring a bone at a reader's ends: the same fit and QC as the automatic path,
the hand's indices rebuilt, exclusions made partial, and the stored JSON read back."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dxr_node.engine.analyze import analyze
from dxr_node.engine.image import load_radiograph
from dxr_node.engine.remeasure import (
    EXCLUDED_NOTE,
    RemeasureError,
    analysis_from_dict,
    radial_direction,
    remeasure_bone,
    with_bones,
)
from dxr_node.engine.result import STATUS_OK, STATUS_REJECTED, Problem, ProblemCode


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    from dxr_node.phantom.generate import write_phantom_set

    out = tmp_path_factory.mktemp("remeasure")
    write_phantom_set(out, 1, seed=5)
    truth = json.loads((out / "truth.json").read_text())["phantom_0000.dcm"]
    radiograph = load_radiograph(out / "phantom_0000.dcm")
    return radiograph, analyze(radiograph), truth


@pytest.mark.parametrize("bone", ["MC2", "MC3", "MC4"])
def test_the_truth_ends_give_the_truth_within_0_03_mm(hand, bone):
    radiograph, analysis, truth = hand
    expected = truth["bones"][bone]
    done = remeasure_bone(radiograph.pixels, radiograph.pixel_spacing_mm, bone,
                          tuple(expected["proximal_rc"]), tuple(expected["distal_rc"]),
                          radial_rc=radial_direction(analysis))
    measured = done.bone
    assert measured.reader_positioned and measured.name == bone
    assert measured.cortical_thickness_mm == pytest.approx(expected["cortical_thickness_mm"],
                                                           abs=0.03)
    assert measured.width_mm == pytest.approx(expected["width_mm"], abs=0.03)
    assert measured.length_mm == pytest.approx(expected["length_mm"], abs=0.1)
    # The same fit as the engine's own (located) measurement of that bone.
    automatic = analysis.bones[bone]
    assert measured.cortical_thickness_mm == pytest.approx(automatic.cortical_thickness_mm,
                                                           abs=0.01)
    # Side "a" is the radial side, as in the automatic result.
    assert (measured.outer_edge_a_rc[0][1] - automatic.outer_edge_a_rc[0][1]) ** 2 < 25
    assert done.seconds > 0


def test_ends_between_two_bones_are_refused_with_the_qc_reason(hand):
    radiograph, analysis, truth = hand
    mc3, mc4 = truth["bones"]["MC3"], truth["bones"]["MC4"]

    def between(key: str) -> tuple[float, float]:
        return tuple((a + b) / 2 for a, b in zip(mc3[key], mc4[key], strict=True))

    with pytest.raises(RemeasureError, match="^MC3: "):
        remeasure_bone(radiograph.pixels, radiograph.pixel_spacing_mm, "MC3",
                       between("proximal_rc"), between("distal_rc"))
    with pytest.raises(RemeasureError, match="outside the image"):
        remeasure_bone(radiograph.pixels, 0.1, "MC3", (-5, 10), (400, 10))
    with pytest.raises(RemeasureError, match="too coarse"):
        remeasure_bone(radiograph.pixels, 0.3, "MC3", tuple(mc3["proximal_rc"]),
                       tuple(mc3["distal_rc"]))
    with pytest.raises(RemeasureError, match="apart"):
        remeasure_bone(radiograph.pixels, 0.1, "MC3", (500, 500), (510, 500))


def test_the_hand_is_rebuilt_and_an_excluded_bone_makes_it_partial(hand):
    radiograph, analysis, truth = hand
    expected = truth["bones"]["MC3"]
    moved = remeasure_bone(radiograph.pixels, radiograph.pixel_spacing_mm, "MC3",
                           tuple(expected["proximal_rc"]), tuple(expected["distal_rc"])).bone
    # A result whose MC3 the engine lost: the reader's placement completes the hand.
    lost = replace(analysis, status=STATUS_REJECTED, dxr_bmd_g_cm2=None,
                   bones={k: v for k, v in analysis.bones.items() if k != "MC3"},
                   problems=(Problem.of(ProblemCode.BONE_NOT_FOUND, "MC3 not found", "MC3"),))
    rebuilt = with_bones(lost, {**lost.bones, "MC3": moved})
    assert rebuilt.status == STATUS_OK and rebuilt.reasons == ()
    assert rebuilt.dxr_bmd_g_cm2 == pytest.approx(analysis.dxr_bmd_g_cm2, rel=0.01)
    partial = with_bones(analysis, {k: v for k, v in analysis.bones.items() if k != "MC4"},
                         excluded=("MC4",))
    assert partial.status == STATUS_REJECTED and partial.dxr_bmd_g_cm2 is None
    assert f"MC4: {EXCLUDED_NOTE}" in partial.reasons
    assert partial.has(ProblemCode.READER_EXCLUDED, "MC4")


def test_the_stored_json_reads_back_to_the_same_analysis(hand):
    _, analysis, _ = hand
    again = analysis_from_dict(json.loads(json.dumps(analysis.to_dict())))
    assert again.to_dict() == analysis.to_dict()
