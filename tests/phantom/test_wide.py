"""The wide phantom family: its specs cover the variations issue 9 lists, and its truth is
where the bones are drawn."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dxr_node.phantom.wide import (
    SCENARIOS,
    THUMB_MODES,
    WideHand,
    WideSetup,
    case_specs,
    render_case,
    scenario,
)


def test_specs_cover_the_listed_variations():
    specs = [case_specs(1, i) for i in range(48)]
    hands = [hand for hand, _ in specs]
    setups = [setup for _, setup in specs]
    assert {h.thumb_mode for h in hands} == set(THUMB_MODES)
    spreads = [h.finger_spread_deg for h in hands]
    assert min(spreads) < 3 and max(spreads) > 20
    assert any(any(h.flexed) for h in hands) and any(h.crossing for h in hands)
    assert any(h.ulnar_deviation_deg > 15 for h in hands)
    assert max(h.scale for h in hands) / min(h.scale for h in hands) > 1.25
    assert max(abs(s.rotation_deg) for s in setups) > 90  # any rotation, fingers down too
    for flag in ("ring_finger", "ruler", "burned_in", "second_hand", "fingers_cut", "marker"):
        assert any(getattr(s, flag) for s in setups), flag
    # One variation per case, then pairs: every scenario alone at least once.
    assert {next(iter(scenario(i))) for i in range(len(SCENARIOS))} == set(SCENARIOS)
    hard, _ = case_specs(3, 0, hard=True)
    assert hard.depth_ratio < 1 and hard.pronation_deg > 0 and hard.roughness_mm > 0


def test_truth_is_where_the_bones_are_drawn():
    hand = WideHand.random(np.random.default_rng([5, 0, 0, 0]), 5)
    setup = WideSetup(rotation_deg=137.0, laterality="L", pixel_spacing_mm=0.2,
                      noise_seed=1, marker=False)
    case = render_case("t", hand, setup)
    image = ndimage.gaussian_filter(case.pixels.astype(np.float32), 1.0)
    bones = case.truth["bones"]
    for name in ("MC2", "MC3", "MC4"):
        centre = np.asarray(bones[name]["midshaft_center_rc"])
        axis = np.subtract(bones[name]["distal_rc"], bones[name]["proximal_rc"])
        across = np.array([axis[1], -axis[0]]) / np.linalg.norm(axis)
        half = bones[name]["width_mm"] / 2 / case.truth["pixel_spacing_mm"]
        # Attenuation peaks under the cortices and drops to soft tissue outside the bone.
        inside = max(image[tuple(np.round(centre + f * half * across).astype(int))]
                     for f in (-0.8, 0.8))
        outside = max(image[tuple(np.round(centre + f * half * across).astype(int))]
                      for f in (-1.6, 1.6))
        assert inside > outside + 40, (name, inside, outside)


def test_cases_are_reproducible():
    hand = WideHand.random(np.random.default_rng([9, 1, 0, 0]), 9)
    setup = WideSetup.random(np.random.default_rng([9, 1, 1, 0]), hand)
    coarse = WideSetup(**{**setup.__dict__, "pixel_spacing_mm": 0.2})  # fast
    a, b = render_case("a", hand, coarse), render_case("a", hand, coarse)
    assert a.truth == b.truth and np.array_equal(a.pixels, b.pixels)
