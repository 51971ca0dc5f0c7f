"""Clinical wing: reference data, T/Z-scores, categories, fracture risk and follow-up.

Imports engine results only; never the node, the web console or the network.
"""

from dxr_node.clinical.followup import PRECISION_CV_PERCENT
from dxr_node.clinical.interpreter import billing_modifier, exam_laterality, interpret
from dxr_node.clinical.reference import ReferenceTable, ReferenceTableError, load_reference
from dxr_node.clinical.result import Interpretation, PriorComparison, PriorResult, ReferenceInfo

__all__ = [
    "PRECISION_CV_PERCENT",
    "Interpretation",
    "PriorComparison",
    "PriorResult",
    "ReferenceInfo",
    "ReferenceTable",
    "ReferenceTableError",
    "billing_modifier",
    "exam_laterality",
    "interpret",
    "load_reference",
]
