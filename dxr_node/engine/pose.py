"""The upright pose: a lossless quarter turn (and mirror) that brings a hand's fingers up
and its thumb to the image right before the bones are looked for.

Finding the bones resamples the image at arbitrary angles and scales, so it is only
nearly invariant under rotation: a film turned by 90 degrees is downscaled and sampled on
a different grid, and a borderline bone can tip from measured to rejected. Turning every
hand upright first by whole quarter turns and a mirror (a permutation of pixels: nothing
is interpolated) gives the same pixels, hence the same bones, whichever way the film was
stored. Only the coarse pose (which quarter the fingers point to, which side the thumb
is on) must agree between copies, and it is far from any decision boundary for hands
held within 45 degrees of one of the four directions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Point = tuple[float, float]


@dataclass(frozen=True)
class Pose:
    """``upright = mirror(rot90(input, quarter_turns))``; rot90 turns counter-clockwise
    on screen, the mirror flips left and right."""

    quarter_turns: int  # 0..3
    mirrored: bool
    input_shape: tuple[int, int]  # rows, columns

    @property
    def identity(self) -> bool:
        return self.quarter_turns == 0 and not self.mirrored

    def upright(self, image: np.ndarray) -> np.ndarray:
        turned = np.rot90(image, self.quarter_turns)
        return np.ascontiguousarray(turned[:, ::-1] if self.mirrored else turned)

    def to_input(self, point_rc: Point) -> Point:
        """An upright-image point (row, column) in the input image."""
        rows, cols = self.input_shape
        turned_cols = cols if self.quarter_turns % 2 == 0 else rows
        r, c = point_rc
        if self.mirrored:
            c = turned_cols - 1 - c
        # Undo one counter-clockwise turn at a time, innermost last: the image before the
        # i-th turn had shape (rows, cols) for even i, (cols, rows) for odd i.
        for i in reversed(range(self.quarter_turns)):
            width_before = cols if i % 2 == 0 else rows
            r, c = c, width_before - 1 - r
        return float(r), float(c)

    def angle_to_input(self, angle_deg: float) -> float:
        """A direction (degrees counter-clockwise from +column, rows down) in the input."""
        if self.mirrored:
            angle_deg = 180.0 - angle_deg
        return (angle_deg - 90.0 * self.quarter_turns) % 360.0

    def rotation_to_input(self, rotation_deg: float) -> float:
        """A hand rotation (fingers up 0, clockwise positive) in the input."""
        if self.mirrored:
            rotation_deg = -rotation_deg
        return (rotation_deg + 90.0 * self.quarter_turns + 180.0) % 360.0 - 180.0

    def laterality_in_upright(self, laterality: str | None) -> str | None:
        """The thumb side ("L"/"R" as the locator reports it) after the mirror."""
        if not self.mirrored or laterality not in ("L", "R"):
            return laterality
        return other_hand(laterality)

    laterality_to_input = laterality_in_upright  # a mirror is its own inverse


def other_hand(laterality: str) -> str:
    """"R" for "L" and "L" for "R": a mirror, or the same film seen AP instead of PA."""
    return "R" if laterality == "L" else "L"


def upright_pose(input_shape: tuple[int, int], fingers_xy: np.ndarray | None,
                 thumb_xy: np.ndarray | None) -> Pose:
    """The pose that turns ``fingers_xy`` (the fingers' direction, image x right, y down)
    closest to up and puts ``thumb_xy`` (thumb tip minus palm centre) on the right.
    Without a direction the input is kept; without a thumb it is not mirrored."""
    shape = (int(input_shape[0]), int(input_shape[1]))
    if fingers_xy is None:
        return Pose(0, False, shape)
    turns, direction = 0, np.asarray(fingers_xy, dtype=np.float64)
    best_turns, best_up = 0, -np.inf
    for turns in range(4):
        up = -direction[1]  # how far the turned direction points up
        if up > best_up + 1e-9:
            best_turns, best_up = turns, up
        direction = np.array([direction[1], -direction[0]])  # one counter-clockwise turn
    mirrored = False
    if thumb_xy is not None:
        thumb = np.asarray(thumb_xy, dtype=np.float64)
        for _ in range(best_turns):
            thumb = np.array([thumb[1], -thumb[0]])
        mirrored = bool(thumb[0] < 0)
    return Pose(best_turns, mirrored, shape)
