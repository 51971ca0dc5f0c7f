"""What every derived object shares: deterministic UIDs, laterality, device naming."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pydicom

from dxr_node.clinical.interpreter import exam_laterality
from dxr_node.clinical.result import Interpretation
from dxr_node.engine.result import Analysis
from dxr_node.reports.uids import SERIES_NUMBERS, derived_uid

MANUFACTURER = "dxr-node project"
CHARACTER_SET = "ISO_IR 192"  # UTF-8: patient names in any script survive the copy

# Copied from the source so that every derived object files with its patient and study.
PATIENT_STUDY_ATTRIBUTES = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientAge", "OtherPatientIDsSequence", "StudyInstanceUID", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription",
    "IssuerOfAccessionNumberSequence",
)


@dataclass(frozen=True)
class DerivedIdentity:
    kind: str  # "SR" | "SC" | "GSPS" | "PDF"
    source_sop_instance_uid: str
    algorithm_name: str
    algorithm_version: str
    laterality: str | None  # "L" | "R" | None

    manufacturer: str = MANUFACTURER
    character_set: str = CHARACTER_SET
    # A reader's re-issue ("" for the preliminary objects): a new instance UID, same
    # series and tracking UIDs (the same findings, tracked across the versions).
    revision: str = ""
    content: str = ""  # content_digest of what the object states (in the instance UID)

    @classmethod
    def for_kind(cls, kind: str, source: pydicom.Dataset, analysis: Analysis,
                 interpretation: Interpretation | None = None) -> DerivedIdentity:
        return cls(
            kind=kind,
            source_sop_instance_uid=str(source.get("SOPInstanceUID", "")),
            algorithm_name=analysis.algorithm.get("name") or "dxr-node",
            algorithm_version=analysis.algorithm.get("version") or "unknown",
            laterality=hand_laterality(analysis, interpretation),
            content=content_digest(source, analysis, interpretation),
        )

    def uid(self, role: str) -> str:
        return derived_uid(self.source_sop_instance_uid, self.algorithm_version, self.kind, role)

    @property
    def sop_instance_uid(self) -> str:
        role = f"instance-{self.revision}" if self.revision else "instance"
        return derived_uid(self.source_sop_instance_uid, self.algorithm_version, self.kind,
                           role, self.content)

    @property
    def series_uid(self) -> str:
        return self.uid("series")

    @property
    def series_number(self) -> int:
        return SERIES_NUMBERS[self.kind]

    @property
    def software_version(self) -> str:
        return f"{self.algorithm_name} {self.algorithm_version}"


# Fields of the Analysis that describe the run, not the result.
_RUN_FIELDS = ("source", "elapsed_ms")


def content_digest(source: pydicom.Dataset, analysis: Analysis,
                   interpretation: Interpretation | None) -> str:
    """A digest of everything a derived object states: the analysis (measurements, QC
    findings, algorithm), the interpretation (scores, the reference table's name, version
    and values used, the priors compared) and the patient/study attributes copied from
    the source. The run's file path and duration are left out."""
    result = {k: v for k, v in analysis.to_dict().items() if k not in _RUN_FIELDS}
    clinical = interpretation.to_dict() if interpretation is not None else None
    header = {k: str(source[k].value) for k in PATIENT_STUDY_ATTRIBUTES if k in source}
    text = json.dumps([result, clinical, header], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def hand_laterality(analysis: Analysis, interpretation: Interpretation | None) -> str | None:
    """The hand every report object names: the Interpretation's exam laterality, or the
    same rule (``clinical.exam_laterality``) when there is no Interpretation. A conflict
    between header and image gives None (Laterality left empty)."""
    if interpretation is not None:
        return interpretation.exam_laterality
    return exam_laterality(analysis)[0]


def copy_patient_study(source: pydicom.Dataset, target: pydicom.Dataset) -> None:
    """Fill in patient/study attributes the builder did not copy (e.g. Patient's Age and
    Study Description on highdicom's SC)."""
    for keyword in PATIENT_STUDY_ATTRIBUTES:
        if keyword in source and keyword not in target:
            target[keyword] = source[keyword]
