"""Coded concepts used by the report objects.

Standard codes come from DICOM (DCM), SNOMED CT (SCT), LOINC (LN) and UCUM. DXR has no
standard concepts for its indices (cortical thickness of a metacarpal, DXR-BMD, metacarpal
index, Bone Health Index, T-score, the DXR category and triage), so those are local codes
in the private coding scheme ``99DXR``, declared in every SR through the Coding Scheme
Identification Sequence and listed in docs/dicom-conformance.md.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dxr_node.engine.result import ProblemCode, Severity

LOCAL_SCHEME = "99DXR"
# The engine's QC findings (ProblemCode): a scheme of their own, so that its values (the
# codes' identifiers) never clash with the concepts above.
PROBLEM_SCHEME = "99DXRQC"

CODING_SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator=LOCAL_SCHEME,
    name="dxr-node local codes for digital X-ray radiogrammetry",
    responsible_organization="dxr-node project",
)
PROBLEM_CODING_SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator=PROBLEM_SCHEME,
    name="dxr-node quality control findings (rejections and notes)",
    responsible_organization="dxr-node project",
)
CODING_SCHEMES = [CODING_SCHEME, PROBLEM_CODING_SCHEME]


def _local(value: str, meaning: str) -> Code:
    return Code(value, LOCAL_SCHEME, meaning)


# Procedure Reported: CID 100 has no hand or DXR procedure; LOINC 43468-8 "XR unspecified
# body region" is the CID 100 member that names the modality (36669-6 "XR Hand" is not
# in CID 100 and is rejected by SR validators).
PROCEDURE_REPORTED = codes.cid100.XRUnspecifiedBodyRegion

# Anatomy. SNOMED CT has per-metacarpal concepts, but none is in pydicom's dictionary
# and we could not verify their identifiers, so every bone uses "Bone structure of
# metacarpal" and the tracking identifier names the bone.
METACARPAL = codes.SCT.BoneStructureOfMetacarpal
HAND = codes.SCT.Hand
LATERALITY = {"L": codes.SCT.Left, "R": codes.SCT.Right}
BONE_LABELS = {
    "MC2": "MC2 second metacarpal (index finger)",
    "MC3": "MC3 third metacarpal (middle finger)",
    "MC4": "MC4 fourth metacarpal (ring finger)",
}
WHOLE_HAND_LABEL = "DXR whole hand (MC2-MC4)"
PARTIAL_LABEL = "partial result (analysis rejected)"

# Measurement names.
OUTER_WIDTH = codes.SCT.Width  # outer (periosteal) width of the bone at mid-shaft
LENGTH = codes.SCT.Length
Z_SCORE = codes.DCM.ZScore
CORTICAL_THICKNESS = _local("CT", "Cortical thickness")
MEDULLARY_WIDTH = _local("MW", "Medullary width")
METACARPAL_INDEX = _local("MCI", "Metacarpal index")
VPA = _local("VPA", "Cortical volume per area")
DXR_BMD = _local("BMD", "DXR bone mineral density")
BONE_HEALTH_INDEX = _local("BHI", "Bone Health Index")
T_SCORE = _local("TSC", "T-score")
RELATIVE_RISK = _local("RR", "Hip fracture relative risk")
# Follow-up against the prior exam: the prior value, the change in g/cm2, percent and
# percent per year, and the least significant change (2.77 x CV) with the CV it came from.
PRIOR_DXR_BMD = _local("PRIORBMD", "Prior DXR bone mineral density")
CHANGE_SINCE_PRIOR_G_CM2 = _local("CHGABS", "DXR-BMD absolute change since prior")
CHANGE_SINCE_PRIOR = _local("CHG", "DXR-BMD change since prior")
CHANGE_PER_YEAR = _local("CHGYR", "DXR-BMD annualised change since prior")
LEAST_SIGNIFICANT_CHANGE = _local("LSC", "DXR-BMD least significant change")
PRECISION_CV = _local("CV", "DXR-BMD precision coefficient of variation")

# Qualitative evaluations.
ANALYSIS_STATUS = _local("STATUS", "DXR analysis status")
STATUS_VALUES = {
    "ok": _local("OK", "Analysis completed"),
    "rejected": _local("REJ", "Analysis not possible"),
    "error": _local("ERR", "Analysis failed"),
}
QC_REASON = _local("REASON", "DXR quality control reason")
# Each engine finding: a CODE item named by its severity, valued by its ProblemCode.
QC_FINDING = {
    Severity.REJECTION: _local("QCREJ", "DXR quality control rejection"),
    Severity.NOTE: _local("QCNOTE", "DXR quality control note"),
}


def problem_code(code: ProblemCode) -> Code:
    return Code(code.value, PROBLEM_SCHEME, code.meaning)


CATEGORY = _local("CAT", "DXR-BMD category")
CATEGORY_VALUES = {
    "normal": _local("NORMAL", "Normal"),
    "low bone mass": _local("LOW", "Low bone mass"),
    "osteoporosis range": _local("OSTEO", "Osteoporosis range"),
}
CHANGE_SIGNIFICANCE = _local("CHGSIG", "Significance of DXR-BMD change since prior")
SIGNIFICANCE_VALUES = {
    True: _local("SIG", "Change exceeds the least significant change"),
    False: _local("NOTSIG", "Change within the least significant change"),
}
TRIAGE = _local("TRIAGE", "DXR triage for DXA referral")
INTERPRETATION_REMARK = _local("REMARK", "DXR interpretation remark")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
# Reader review: who placed a bone's measurement, and the outcome of the review.
BONE_POSITIONING = _local("POS", "Metacarpal position source")
POSITIONING_VALUES = {
    True: _local("READER", "Positioned by the reader"),
    False: _local("AUTO", "Positioned by the algorithm"),
}
REVIEW_OUTCOME = _local("REVIEW", "DXR reader review outcome")
REVIEW_VALUES = {
    True: _local("APPROVED", "Result verified by the reader"),
    False: _local("NORESULT", "No result issued (rejected by the reader)"),
}
REVIEW_REMARK = _local("REVREMARK", "DXR reader review remark")

# Units (UCUM).
MM = codes.UCUM.Millimeter
RATIO = codes.UCUM.Ratio
NO_UNITS = codes.UCUM.NoUnits
PERCENT = codes.UCUM.Percent
PERCENT_PER_YEAR = Code("%/a", "UCUM", "percent per year")
G_PER_CM2 = Code("g/cm2", "UCUM", "gram per square centimeter")
STANDARD_DEVIATION = Code("{SD}", "UCUM", "standard deviation")

# Procedure code on the PDF (and its billing modifiers).
CPT_DXR = Code("0750T", "CPT", "DXR-BMD analysis, single-view digital X-ray")
MODIFIER_TEXT = {
    "52": "Modifier 52 (reduced service)",
    "53": "Modifier 53 (discontinued service): no DXR result could be produced.",
}
