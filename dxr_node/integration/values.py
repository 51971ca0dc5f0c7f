"""The reported values of one result, in the SR's codes, units and number formatting.

ORU^R01 OBX segments and FHIR Observations are built from this one list, so every
channel states the same numbers as the SR: numbers are formatted as the SR's Decimal
String (``DS(value, auto_format=True)``, what highdicom writes), codes are the SR's (the
local scheme ``99DXR`` where no standard concept exists; docs/hl7-fhir.md has the table
and the nearest LOINC concepts, which are *related*, never equivalent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydicom.sr.coding import Code
from pydicom.valuerep import DS

from dxr_node.clinical.result import Interpretation
from dxr_node.engine.result import Analysis
from dxr_node.reports import codes

HAND = "HAND"  # sub-id of the whole-hand values; bones use their names (MC2, MC3, MC4)

# Nearest LOINC concepts (DXA of the forearm): shown as "related" only, see the docs.
RELATED_LOINC = {
    codes.DXR_BMD.value: ("24890-6", "DXA Radius and Ulna [Mass/Area] Bone density"),
    codes.T_SCORE.value: ("38265-5", "DXA Radius and Ulna [T-score] Bone density"),
    codes.Z_SCORE.value: ("80932-7", "DXA Radius and Ulna [Z-score] Bone density"),
}


@dataclass(frozen=True)
class ReportedValue:
    sub_id: str  # HAND or the bone
    concept: Code
    numeric: str | None = None  # the SR's DS text
    unit: Code | None = None
    coded: Code | None = None  # for categorical values (category)

    @property
    def value_type(self) -> str:
        return "NM" if self.numeric is not None else "CWE"


def _ds(value: float | None) -> str | None:
    if value is None or not math.isfinite(value):
        return None
    return str(DS(value, auto_format=True))


def reported_values(analysis: Analysis,
                    interpretation: Interpretation | None) -> list[ReportedValue]:
    """Per bone: cortical thickness, width, MCI; for the hand (only when the analysis is
    ok, as in the SR): DXR-BMD, MCI, BHI, T, Z, category, relative risk and the change
    since the prior exam. Values that cannot be stated are left out, as in the SR."""
    out: list[ReportedValue] = []
    for name, bone in analysis.bones.items():
        for concept, value, unit in (
            (codes.CORTICAL_THICKNESS, bone.cortical_thickness_mm, codes.MM),
            (codes.OUTER_WIDTH, bone.width_mm, codes.MM),
            (codes.METACARPAL_INDEX, bone.mci, codes.RATIO),
        ):
            if (text := _ds(value)) is not None:
                out.append(ReportedValue(name, concept, text, unit))
    if not analysis.ok:
        return out
    hand: list[tuple[Code, float | None, Code]] = [
        (codes.DXR_BMD, analysis.dxr_bmd_g_cm2, codes.G_PER_CM2),
        (codes.METACARPAL_INDEX, analysis.mci, codes.RATIO),
        (codes.BONE_HEALTH_INDEX, analysis.bhi, codes.NO_UNITS),
    ]
    if interpretation is not None:
        hand += [
            (codes.T_SCORE, interpretation.t_score, codes.STANDARD_DEVIATION),
            (codes.Z_SCORE, interpretation.z_score, codes.STANDARD_DEVIATION),
            (codes.RELATIVE_RISK, interpretation.relative_risk, codes.RATIO),
        ]
        if interpretation.prior is not None:
            hand += [
                (codes.CHANGE_SINCE_PRIOR_G_CM2, interpretation.prior.change_g_cm2,
                 codes.G_PER_CM2),
                (codes.CHANGE_SINCE_PRIOR, interpretation.prior.change_percent,
                 codes.PERCENT),
            ]
    for concept, value, unit in hand:
        if (text := _ds(value)) is not None:
            out.append(ReportedValue(HAND, concept, text, unit))
    category = interpretation.category if interpretation is not None else None
    if category in codes.CATEGORY_VALUES:
        out.append(ReportedValue(HAND, codes.CATEGORY, coded=codes.CATEGORY_VALUES[category]))
    return out
