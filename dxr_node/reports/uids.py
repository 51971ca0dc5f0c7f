"""Deterministic UIDs, so that re-analysing an image replaces its reports in PACS.

Every UID is a hash of the source SOP Instance UID, the algorithm version and the object
kind ("SR", "SC", "GSPS", "PDF"): the same inputs always give the same UIDs, a new
algorithm version gives new ones (a new result, not an overwrite of the old one).
"""

from __future__ import annotations

from pydicom.uid import generate_uid

# Series numbers of the derived objects, fixed per kind so that viewers sort them alike.
SERIES_NUMBERS = {"SR": 9001, "SC": 9002, "GSPS": 9003, "PDF": 9004}


def derived_uid(source_sop_instance_uid: str, algorithm_version: str, kind: str, role: str) -> str:
    """UID for one role ("instance", "series", or a tracking name) of one derived object."""
    if not source_sop_instance_uid:
        raise ValueError("the source dataset has no SOPInstanceUID")
    return str(generate_uid(entropy_srcs=[
        "dxr-node", source_sop_instance_uid, algorithm_version, kind, role,
    ]))
