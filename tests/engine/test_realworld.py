"""The engine on every real radiograph in ../shared/realdata and ../shared/realdata-2, judged
by the measuring instruments of dxr_node.evaluation (issue 9): per-source measured and
rejected counts, no adult called a child, ZERO wrong bones reported ok on the annotated
images (tests/data/realdata*_landmarks.json), and (slow) the same result on rotated,
mirrored, rescaled and cropped copies.

The goals are the issue's; where the current engine does not reach one yet, the test is
marked xfail(strict=False) with the measured baseline as its reason, to be tightened once
the new locator lands. Skips cleanly when ../shared is absent.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import defaultdict
from pathlib import Path

import pytest

from dxr_node.evaluation import realworld as rw

REPO = Path(__file__).resolve().parents[2]
FOLDERS = (REPO.parent / "shared" / "realdata", REPO.parent / "shared" / "realdata-2")
# Every test here needs the whole real set analysed (~90 images): minutes, not seconds.
pytestmark = pytest.mark.slow

LANDMARK_FILES = (REPO / "tests" / "data" / "realdata_landmarks.json",
                  REPO / "tests" / "data" / "realdata2_landmarks.json")
MEASURED_SHARE_GOAL = 0.9  # issue 9: >= 90 % of the real corpus measured

# Where the engine stands (scripts/bench_realworld, the locator with the row-of-shafts
# identity check): floors that a regression breaks, below the goals. The goals
# themselves stay as xfail(strict=False) tests until they are met.
MEASURED_FLOOR = {"dha": 20, "dhapayer": 3, "k1101": 1, "mura": 1, "ra2": 1, "scaph": 16,
                  "shsnet": 9}
GOAL_NOT_MET_SOURCES = {
    "dha": "20/23 measured (goal 90 %)",
    "dhapayer": "3/4 measured (dhapayer_7232: no shaft's blur can be fitted)",
    "ra2": "1/2 measured (LH: MC4 profile groups disagree: its band lies off mid-shaft)",
    "scaph": "16/36 measured (goal 90 %): finger rays, identity and shaft checks reject",
}
BASELINE_WRONG_BONES = {
    "scaph_04574217_L_76F.jpg": "rejected now; when measured, the right bone but the MC2 "
                                "band ~75 px distal of the annotated mid-shaft (its axis "
                                "runs on into the phalanx)",
}
_NOT_MEASURED = "rejected ({})"
BASELINE_NOT_MEASURED_ANNOTATED = {
    "ra2_UAB001-LH.jpg": _NOT_MEASURED.format("MC4 profile groups disagree (RA hand)"),
    "scaph_06117033_R_61F.jpg": _NOT_MEASURED.format("7 finger rays"),
    "scaph_17494507_L_25M.jpg": _NOT_MEASURED.format("bone identity uncertain"),
    "scaph_19487986_R_78F.jpg": _NOT_MEASURED.format("bone identity uncertain"),
    "scaph_20071298_L_19M.jpg": _NOT_MEASURED.format("bone identity uncertain"),
    "scaph_20085361_R_16F.jpg": _NOT_MEASURED.format("4 finger rays, thumb along the index"),
    "scaph_04574217_L_76F.jpg": _NOT_MEASURED.format("MC4 profile groups disagree"),
    "scaph_06902573_L_52F.jpg": _NOT_MEASURED.format("MC2 profile groups disagree"),
    "scaph_02765799_L_85M.jpg": _NOT_MEASURED.format(
        "MC3's edge at the search window's border; measured with OpenCV 5.1"),
}


def _landmarks() -> dict:
    marks = {}
    for path in LANDMARK_FILES:
        marks.update({k: v for k, v in json.loads(path.read_text()).items()
                      if not k.startswith("_")})
    return marks


LANDMARKS = _landmarks()
FILES = rw.list_images(FOLDERS)


def _job(path: str) -> dict:
    return rw.run_image(Path(path), landmarks=LANDMARKS.get(Path(path).name))


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    """Every real image analysed once (two processes), keyed by file name."""
    if not FILES:
        pytest.skip(f"real radiographs not available ({', '.join(map(str, FOLDERS))} absent)")
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_job, [str(p) for p in FILES], chunksize=1)
    return {r["file"]: r for r in results}


def _by_source(records: dict[str, dict]) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for record in records.values():
        groups[record["source"]].append(record)
    return groups


def _xfail_if(condition: bool, reason: str) -> list:
    return [pytest.mark.xfail(condition, reason=reason, strict=False)]


SOURCES = sorted({rw.source_prefix(p.name) for p in FILES} - {"radinf"})


@pytest.mark.parametrize("source", SOURCES)
def test_no_source_measures_fewer_than_before(records, source):
    rows = _by_source(records)[source]
    measured = [r for r in rows if r["status"] == "ok"]
    rejected = {r["file"]: r["cause"] for r in rows if r["status"] != "ok"}
    assert len(measured) >= MEASURED_FLOOR.get(source, len(rows)), (
        f"{source}: {len(measured)}/{len(rows)} measured; rejected: {rejected}")


@pytest.mark.parametrize("source", [
    pytest.param(s, marks=_xfail_if(s in GOAL_NOT_MET_SOURCES, GOAL_NOT_MET_SOURCES.get(s, "")))
    for s in SOURCES])
def test_most_of_each_source_is_measured(records, source):
    rows = _by_source(records)[source]
    measured = [r for r in rows if r["status"] == "ok"]
    rejected = {r["file"]: r["cause"] for r in rows if r["status"] != "ok"}
    assert len(measured) >= MEASURED_SHARE_GOAL * len(rows), (
        f"{source}: {len(measured)}/{len(rows)} measured; rejected: {rejected}")


def test_toddlers_are_all_rejected_with_a_reason(records):
    rows = _by_source(records).get("radinf", [])
    if not rows:
        pytest.skip("no radinf_ images")
    assert all(r["status"] == "rejected" and r["reasons"] for r in rows), [
        (r["file"], r["status"]) for r in rows]


def test_no_adult_is_called_a_child(records):
    """Issue 9's goal, met since growth plates must be of one kind on two bones
    (scaph_20077762_L, 22, showed one before the joint on MC2 and one beyond it on MC4;
    scaph_20016083_L, 22, a joint found 2.2 widths from MC4's end, which is no joint)."""
    adults = [r for r in records.values() if rw.is_adult(r["file"])]
    called = [r["file"] for r in adults if r["paediatric"]]
    assert not called, f"{len(called)}/{len(adults)} adults called paediatric: {called}"


ANNOTATED = sorted(name for name in LANDMARKS if any((f / name).is_file() for f in FOLDERS))


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=_xfail_if(n in BASELINE_WRONG_BONES, BASELINE_WRONG_BONES.get(n, "")))
    for n in ANNOTATED])
def test_no_wrong_bone_is_reported_ok(records, name):
    """A bone of an ok result must lie on its annotated bone (centre within half the
    inter-metacarpal spacing and nearest to it): a wrong bone reported ok reaches the
    radiologist as a diagnosis."""
    record = records[name]
    check = record["landmarks"]
    assert not check["wrong"], (f"{name}: {check['wrong']} reported ok on the wrong bone; "
                                f"centres {record['bones']}")
    if record["status"] == "ok":
        assert check["laterality_ok"], (name, record["laterality"],
                                        check["laterality_expected"])


# Bands more than a tenth of the bone's length from the annotated mid-shaft, on ok
# results: where the engine stands, not a goal. mura (MC3, MC4, a 356x512 px film).
# (scaph_20067963 no longer: its heads were put in the phalanx bases, docs/method.md.)
BANDS_FAR_FROM_MID_SHAFT_CEILING = 2


def test_bands_lie_near_the_annotated_mid_shafts(records):
    offsets = {(name, bone): abs(offset)
               for name in ANNOTATED if records[name]["status"] == "ok"
               for bone, offset in records[name]["landmarks"]["band_offsets"].items()
               if offset is not None}
    far = sorted(key for key, offset in offsets.items() if offset > 0.10)
    assert len(offsets) >= 60, len(offsets)
    assert len(far) <= BANDS_FAR_FROM_MID_SHAFT_CEILING, far


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=_xfail_if(n in BASELINE_NOT_MEASURED_ANNOTATED,
                                    BASELINE_NOT_MEASURED_ANNOTATED.get(n, "")))
    for n in ANNOTATED])
def test_annotated_image_is_measured(records, name):
    """Every annotated image shows MC2-4 clearly enough to be measured (issue 9 goal:
    all annotated real hands measured on the annotated bones)."""
    record = records[name]
    assert record["status"] == "ok", (name, record["reasons"])
    assert all(record["landmarks"]["on_bone"].values()), record["landmarks"]


def _metamorphic_job(args: tuple[str, str | None]) -> dict:
    path, transform = args
    return rw.run_image_or_crash(Path(path), transform)


@pytest.fixture(scope="module")
def transformed_records() -> tuple[dict[str, dict], list[dict]]:
    """Every real image and its 8 transformed copies analysed once (about 730 analyses):
    (originals by file name, copies)."""
    if not FILES:
        pytest.skip("real radiographs not available")
    jobs = [(str(p), t) for p in FILES for t in (None, *rw.TRANSFORMS)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_metamorphic_job, jobs, chunksize=1)
    originals = {r["file"]: r for r in results if r["transform"] == "original"}
    return originals, [r for r in results if r["transform"] != "original"]


def _disagreements(transformed_records, transforms) -> list[str]:
    originals, copies = transformed_records
    found = []
    for record in copies:
        if record["transform"] in transforms:
            same, why = rw.agreement(originals[record["file"]], record)
            if not same:
                found.append(f"{record['file']} {record['transform']}: {why}")
    return found


# Quarter turns and mirrors permute pixels: the upright pose makes those copies identical
# to the original once the coarse pose (fingers' quarter, thumb side) reads the same, as
# it does for all but one or two films per transform (scripts/bench_realworld
# --metamorphic): scaph_00952402 (measured since heads end at the MCP joint) refused on its
# mirrored copies, scaph_20047064 on its rot270 and mirror+rot90 copies, scaph_19939694
# measured on its rot90 copy only.
LOSSLESS = ("rot90", "rot180", "rot270", "mirror", "mirror_rot90")
LOSSLESS_DISAGREEMENTS_CEILING = 2  # per transform, of 81


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("transform", LOSSLESS)
def test_turned_or_mirrored_copies_give_the_same_result(transformed_records, transform):
    disagreements = _disagreements(transformed_records, (transform,))
    assert len(disagreements) <= LOSSLESS_DISAGREEMENTS_CEILING, "\n".join(disagreements)


@pytest.mark.timeout(3600)
@pytest.mark.xfail(strict=False, reason="goal not met: 573/648 transformed copies agree "
                                        "(scripts/bench_realworld --metamorphic)")
def test_transformed_copies_give_the_same_result(transformed_records):
    """Rotated (90/180/270/12 degrees), mirrored, mirrored+rotated, 0.8x rescaled and 6 %
    cropped copies of every real image: same status, same bones at the same place (within
    a quarter of the bone's width), hand MCI within 0.01."""
    disagreements = _disagreements(transformed_records, tuple(rw.TRANSFORMS))
    assert not disagreements, (f"{len(disagreements)}/{len(transformed_records[1])} copies "
                               f"disagree:\n" + "\n".join(disagreements))
