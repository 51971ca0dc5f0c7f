"""Deterministic UIDs, so that re-analysing an image gives each result its own UIDs.

Every UID is a hash of the source SOP Instance UID, the algorithm version, the object
kind ("SR", "SC", "GSPS", "PDF") and its role. A SOP Instance UID also hashes the
content (``reports.identity.content_digest``: the measurements, QC findings, scores,
reference table and priors used, the copied patient/study attributes): an identical
re-run gives the same UIDs (a crashed worker's re-run replaces its own files), any
change of content gives new ones, so PACS never keeps an old result under a new one's
UID. Series and tracking UIDs leave the content out: the versions of a result share its
series and follow the same findings.
"""

from __future__ import annotations

from pydicom.uid import generate_uid

# Series numbers of the derived objects, fixed per kind so that viewers sort them alike.
SERIES_NUMBERS = {"SR": 9001, "SC": 9002, "GSPS": 9003, "PDF": 9004}


def derived_uid(source_sop_instance_uid: str, algorithm_version: str, kind: str, role: str,
                content: str = "") -> str:
    """UID for one role ("instance", "series", or a tracking name) of one derived object;
    ``content`` (a digest) is hashed in when given."""
    if not source_sop_instance_uid:
        raise ValueError("the source dataset has no SOPInstanceUID")
    entropy = ["dxr-node", source_sop_instance_uid, algorithm_version, kind, role]
    return str(generate_uid(entropy_srcs=entropy + ([content] if content else [])))
