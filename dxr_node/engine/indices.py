"""Radiogrammetric indices from cortical thickness T, outer width W and length L.

Formulas, constants and references are documented in docs/method.md.
"""

from __future__ import annotations

import math

# Nominal young-adult female metacarpal geometry (MC2, MC3, MC4): outer width and
# cortical thickness in mm. The DXR-BMD constant is chosen so that this anatomy gives
# the published young-adult female DXR-BMD (0.598 g/cm2, Black et al. 2001).
REFERENCE_YOUNG_FEMALE_MM = {"MC2": (8.5, 2.3), "MC3": (8.2, 2.2), "MC4": (7.0, 1.9)}
YOUNG_ADULT_FEMALE_DXR_BMD_G_CM2 = 0.598

# BHI: pi*T*(1-T/W) / (L*W)^0.33 with T, W, L in mm, times 10. The factor 10 is inferred
# (not published): it reproduces BoneXpert's published magnitudes, e.g. T 0.74, W 3.2,
# L 16.4 mm -> BHI 4.8 (Thodberg et al., ICCBH 2019 abstract).
BHI_EXPONENT = 0.33
BHI_SCALE = 10.0


def vpa_mm(thickness_mm: float, width_mm: float) -> float:
    """Cortical 'volume per area': pi*T*(1 - T/W), in mm (cortical area / width)."""
    return math.pi * thickness_mm * (1.0 - thickness_mm / width_mm)


def metacarpal_index(thickness: float, width: float) -> float:
    """MCI = 2T/W, any consistent unit."""
    return 2.0 * thickness / width


def bone_health_index(thickness_mm: float, width_mm: float, length_mm: float) -> float:
    return BHI_SCALE * vpa_mm(thickness_mm, width_mm) / (length_mm * width_mm) ** BHI_EXPONENT


def _reference_vpa_cm() -> float:
    values = [vpa_mm(t, w) for w, t in REFERENCE_YOUNG_FEMALE_MM.values()]
    return sum(values) / len(values) / 10.0


# g/cm3: DXR-BMD (g/cm2) = C * VPA (cm) * (1 - porosity); about 1.22, a plausible
# apparent mineral density of cortical bone.
DXR_BMD_CONSTANT_G_CM3 = YOUNG_ADULT_FEMALE_DXR_BMD_G_CM2 / _reference_vpa_cm()


def dxr_bmd_g_cm2(mean_vpa_mm: float, porosity: float = 0.0) -> float:
    return DXR_BMD_CONSTANT_G_CM3 * (mean_vpa_mm / 10.0) * (1.0 - porosity)
