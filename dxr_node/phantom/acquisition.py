"""How a hand is imaged: positioning, detector, exposure and processing (seeded, separate
from the anatomy so the same hand can be imaged repeatedly for precision studies)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dxr_node.phantom.anatomy import quad

SPACINGS_MM = (0.1, 0.1, 0.125, 0.139, 0.143, 0.148, 0.15, 0.16, 0.168, 0.175)
# Field of view (rows mm, cols mm) per variant; the hand is positioned near its centre.
FIELDS_MM = {"adult": (260.0, 210.0), "paediatric": (210.0, 170.0),
             "toddler": (150.0, 120.0), "non-hand": (430.0, 350.0)}


@dataclass(frozen=True)
class Acquisition:
    pixel_spacing_mm: float = 0.1  # in the object plane (what a calibration would give)
    field_mm: tuple[float, float] = (250.0, 200.0)  # rows x cols extent
    rotation_deg: float = 0.0  # counter-clockwise on screen
    fingers: str = "up"  # "up" | "down"
    laterality: str = "R"  # "L" | "R"
    offset_mm: tuple[float, float] = (0.0, 0.0)  # hand centre shift (right, up) in the image
    blur_sigma_mm: float = 0.1  # Gaussian system blur
    edge_sigma_mm: float = 0.0  # unsharp-mask radius; 0 = no edge enhancement
    edge_gain: float = 0.0
    counts_per_mm2: float = 1.0e6  # quanta reaching the detector unattenuated
    heel_gradient: float = 0.1  # relative intensity drop across the field
    scatter_fraction: float = 0.0  # scattered / primary intensity (broad veiling glare)
    heel_direction_deg: float = 90.0
    detector_gain: float = 900.0  # stored value per unit of attenuation (log images)
    detector_offset: float = 150.0
    modality: str = "DX"  # "DX" | "CR"
    photometric: str = "MONOCHROME2"
    for_processing: bool = False  # raw linear intensities (LIN) instead of log + processing
    collimation_mm: tuple[float, float, float, float] | None = None  # top, bottom, left, right
    collimation_angle_deg: float = 0.0
    marker: bool = True  # lead "L"/"R" letter in the field
    burned_in_text: bool = False
    magnification: float | None = None  # EstimatedRadiographicMagnificationFactor
    calibrated: bool = False  # also write PixelSpacing (object plane, GEOMETRY calibration)
    supersample: int = 2
    noise: bool = True
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if not 0.02 <= self.pixel_spacing_mm <= 1.0:
            raise ValueError(f"pixel spacing {self.pixel_spacing_mm} mm is out of range")
        if self.fingers not in ("up", "down"):
            raise ValueError(f"fingers must be 'up' or 'down', not {self.fingers!r}")
        if self.laterality not in ("L", "R"):
            raise ValueError(f"laterality must be 'L' or 'R', not {self.laterality!r}")
        if self.modality not in ("DX", "CR"):
            raise ValueError(f"modality must be 'DX' or 'CR', not {self.modality!r}")
        if self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError(f"unsupported photometric interpretation {self.photometric!r}")
        if self.for_processing and self.modality != "DX":
            raise ValueError("for_processing images exist for DX only")
        if self.supersample < 1:
            raise ValueError("supersample must be >= 1")

    @property
    def imager_pixel_spacing_mm(self) -> float:
        """Detector pixel pitch: object-plane spacing times the geometric magnification."""
        return self.pixel_spacing_mm * (self.magnification or 1.0)

    @classmethod
    def random(cls, rng: np.random.Generator, variant: str = "adult") -> Acquisition:
        """A typical clinical acquisition with seeded variety in every parameter."""
        rows_mm, cols_mm = FIELDS_MM[variant]
        scale = float(rng.uniform(0.95, 1.1))
        spacing = float(rng.choice(SPACINGS_MM))
        if variant == "non-hand":
            spacing = max(spacing, 0.15)
        enhance = rng.random() < 0.5
        collimated = rng.random() < 0.7
        return cls(
            pixel_spacing_mm=spacing,
            field_mm=(round(rows_mm * scale), round(cols_mm * scale)),
            rotation_deg=float(rng.uniform(-20, 20)),
            fingers="down" if rng.random() < 0.2 else "up",
            laterality="L" if rng.random() < 0.5 else "R",
            offset_mm=(float(rng.normal(0, 5)), float(rng.normal(0, 5))),
            blur_sigma_mm=float(rng.uniform(0.05, 0.15)),
            edge_sigma_mm=float(rng.uniform(1.0, 5.0)) if enhance else 0.0,
            edge_gain=float(rng.uniform(0.2, 1.0)) if enhance else 0.0,
            counts_per_mm2=float(np.exp(rng.uniform(np.log(3e5), np.log(3e6)))),
            heel_gradient=float(rng.uniform(0.05, 0.2)),
            heel_direction_deg=float(rng.choice([0.0, 90.0, 180.0, 270.0])),
            detector_gain=float(rng.uniform(700, 1000)),
            detector_offset=float(rng.uniform(50, 300)),
            modality="CR" if rng.random() < 0.35 else "DX",
            photometric="MONOCHROME1" if rng.random() < 0.4 else "MONOCHROME2",
            collimation_mm=quad(rng.uniform(3, 12, 4)) if collimated else None,
            collimation_angle_deg=float(rng.normal(0, 1.5)) if collimated else 0.0,
            marker=rng.random() < 0.9,
            burned_in_text=rng.random() < 0.6,
            magnification=float(rng.uniform(1.02, 1.08)) if rng.random() < 0.3 else None,
            noise_seed=int(rng.integers(0, 2**31)),
            # Drawn last so adding them kept every earlier parameter of a seed unchanged.
            scatter_fraction=float(rng.uniform(0.03, 0.15)),
            calibrated=rng.random() < 0.15,
            supersample=1 if variant == "non-hand" else 2,  # no fine edges to integrate
        )


def repositioned(base: Acquisition, rng: np.random.Generator) -> Acquisition:
    """The same device and protocol as ``base`` with the hand placed and exposed again:
    new rotation, position, collimation, exposure and noise (a short-term precision
    study repeats acquisitions like this)."""
    return replace(
        base,
        rotation_deg=float(np.clip(base.rotation_deg + rng.normal(0, 5), -20, 20)),
        offset_mm=(float(rng.normal(0, 5)), float(rng.normal(0, 5))),
        counts_per_mm2=base.counts_per_mm2 * float(np.exp(rng.normal(0, 0.2))),
        collimation_mm=(quad(rng.uniform(3, 12, 4))
                        if base.collimation_mm else None),
        noise_seed=int(rng.integers(0, 2**31)),
    )
