"""End-to-end accuracy gate on the WIDE phantom family (issue 9): ``analyze()`` against the
truth of hands the engine was not tuned on, per case: no wrong bone reported ok, T and W
close to the truth on every measured bone, DXR-BMD close to the BMD the true geometry
gives; and most cases measured.

Goals, not the current engine's figures: where the current engine misses one, the test is
xfail(strict=False) with the engine's figure as its reason (scripts/bench_wide).
"""

from __future__ import annotations

import multiprocessing

import pytest

from dxr_node.evaluation import phantoms
from dxr_node.phantom.wide import wide_case

pytestmark = pytest.mark.slow  # renders and analyses a set of wide-variety phantoms

SEED = 77  # not the seed scripts/bench_wide reports (2026)
N = 6
T_TOLERANCE_MM = 0.08
W_TOLERANCE_MM = 0.15
BMD_TOLERANCE_PERCENT = 3.0
BAND_OFFSET_TOLERANCE = 0.05  # share of the bone's length
MEASURED_GOAL = N  # issue 9: 24/24 on the wide family (>= 22/24 on the hard level)

BASELINE_MEASURED = ("baseline 4/6: thumb across and thumb out rejected as "
                     "'4 finger rays found, need 5'")
BASELINE_WRONG_BONES = ""


def _case(index: int) -> dict:
    return phantoms.run_case(wide_case(SEED, index))


@pytest.fixture(scope="module")
def records() -> list[dict]:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return pool.map(_case, range(N), chunksize=1)


@pytest.mark.xfail(bool(BASELINE_WRONG_BONES), reason=BASELINE_WRONG_BONES, strict=False)
def test_no_wrong_bone_is_reported_ok(records):
    wrong = {r["name"]: (r["wrong"], r["features"]) for r in records if r["wrong"]}
    assert not wrong, wrong


def test_measured_bones_match_the_truth(records):
    """On every bone of a measured case that lies on its true shaft: T within 0.08 mm,
    W within 0.15 mm; DXR-BMD within 3 % of the truth's."""
    problems = []
    for record in records:
        if record["status"] != "ok":
            continue
        for name, error in record["errors"].items():
            if abs(error["T"]) > T_TOLERANCE_MM or abs(error["W"]) > W_TOLERANCE_MM:
                problems.append((record["name"], name, round(error["T"], 3),
                                 round(error["W"], 3)))
        if record["dxr_bmd_error"] is not None:
            percent = record["dxr_bmd_error"] / record["dxr_bmd_true"] * 100
            if abs(percent) > BMD_TOLERANCE_PERCENT:
                problems.append((record["name"], "DXR-BMD", round(percent, 2)))
    assert not problems, problems


def test_measured_bands_lie_at_the_mid_shaft(records):
    """The band of every measured bone on its true shaft is centred within 5 % of the
    bone's length of its true mid-shaft: its ends were found, not guessed."""
    off = [(r["name"], name, round(error["along"], 3)) for r in records
           if r["status"] == "ok" for name, error in r["errors"].items()
           if abs(error["along"]) > BAND_OFFSET_TOLERANCE]
    assert not off, off


@pytest.mark.xfail(bool(BASELINE_MEASURED), reason=BASELINE_MEASURED, strict=False)
def test_most_cases_are_measured(records):
    measured = [r for r in records if r["status"] == "ok"]
    rejected = {r["name"]: (r["cause"], r["features"]) for r in records if r["status"] != "ok"}
    assert len(measured) >= MEASURED_GOAL, rejected


def test_adducted_thumb_taken_for_the_little_finger_is_not_reported_as_the_other_hand():
    """wide_2026_002 (scripts/bench_wide): the thumb lies along the index, so the ray set
    apart by the wider gap is the little finger; read from that end, MC2 and MC4 swapped
    and the result was reported ok with a laterality disagreement. Now a hand whose
    thumb and header disagree is measured only if it reads the header's way alone (here
    it reads both ways, as a wrong header would also make it: rejected)."""
    record = phantoms.run_case(wide_case(2026, 2))
    assert not record["wrong"], record["wrong"]
    assert record["status"] == "ok" or record["cause"] == "bone_identity", record["cause"]


@pytest.mark.parametrize("index", [
    6,  # a finger crossing its neighbour: the bones' outline won (five "rays" on MC1-MC5),
    #     its "palm" was the forearm, as wide as the whole hand's palm, which was then
    #     never tried; the whole hand's mask (four rays) finds the row of metacarpals
    9,  # fingers held together: the bones' own outline won as "the hand" (five rays that
    #     were MC1-MC5) and the palm was the carpus; the whole hand's mask finds them
    13,  # a narrow palm for its bones: the right metacarpals were found, but the identity
    #      check's ridge map (at the palm's scale) showed each cortex as a shaft of its own
    17,  # flexed fingers: the proximal phalanges were taken for the metacarpals
])
def test_hands_found_on_a_second_reading_are_measured_on_the_right_bones(index):
    record = phantoms.run_case(wide_case(2026, index))
    assert not record["wrong"], record["wrong"]
    assert record["status"] == "ok", record["cause"]


def test_a_row_of_proximal_phalanges_is_passed_over_for_the_metacarpals_beyond_it():
    """wide_hard_2026_002: the rays' bases lay at the fingers' middle joints, so the row of
    shafts found first was the proximal phalanges (rejected: they run on into further
    long bones); the row is looked for once more beyond it, where MC2-MC5 lie."""
    record = phantoms.run_case(wide_case(2026, 2, hard=True))
    assert not record["wrong"], record["wrong"]
    assert record["status"] == "ok", record["cause"]


@pytest.mark.parametrize("index", [
    9,  # before the whole hand's mask: three "metacarpals" crossing in the carpus
    20,  # fingers cut: carpal rows taken for metacarpals, one of them lying across
])
def test_adults_are_not_called_toddlers_from_bones_that_are_no_metacarpals(index):
    """Short bones found in the carpus (crossing, splayed or out of line) are wrong
    segments: the hand is an adult's, and no rejection may call it a toddler's."""
    record = phantoms.run_case(wide_case(2026, index))
    assert not record["paediatric"], record["cause"]
    assert record["cause"] != "toddler"


def test_a_phalanx_beyond_the_row_is_not_taken_for_a_metacarpal():
    """repos_2026_0_4 (wide hand 0, fifth repositioning; hand turned upright by a quarter
    turn and mirrored): three of four rays were spurious, the frame's "up" ran 40 degrees
    off the metacarpals, and MC4 was placed on the ring finger's proximal phalanx, level
    with MC2 and MC3 across that frame but 0.7 lengths beyond them along the bones."""
    from dxr_node.phantom.wide import repositioned_cases

    record = phantoms.run_case(repositioned_cases(2026, 0, 5)[4])
    assert not record["wrong"], record["wrong"]


def test_heads_found_in_the_phalanges_of_flexed_fingers_are_not_measured():
    """wide_2026_005 (flexed fingers, turned 31 degrees): MC2's and MC3's heads were found
    in the proximal phalanges and MC4's base was put in the carpus to keep the usual
    proportions: reported ok with every band 14-19 % of a length off mid-shaft. MC4's
    head then lies 0.37 lengths proximal of MC3's, where the MCP joints lie in a row."""
    record = phantoms.run_case(wide_case(2026, 5))
    far = {name: round(error["along"], 3) for name, error in record["errors"].items()
           if abs(error["along"]) > 0.1}
    assert record["status"] != "ok" or not far, far
