"""TID 1500 Measurement Report (Comprehensive SR) of one DXR analysis.

Layout of the content tree:
- one TID 1501 measurement group per measured metacarpal: tracking identifier and UID,
  finding site (metacarpal, with laterality), numeric measurements with UCUM units, each
  carrying its image coordinates (ROI band, edge lines, bone axis) and the algorithm;
- one TID 1501 group for the whole hand: indices, scores, category, analysis status;
- the TID 1500 "Qualitative Evaluations" container: analysis status, each QC finding
  coded (rejection or note, valued from the private scheme 99DXRQC, its text attached)
  and clinical remarks as text.
A rejected analysis keeps the groups of the metacarpals that passed their own QC (a
partial result: their tracking identifiers say so), but its whole-hand group has no
numbers, only the status; a failed analysis has only the status and the reasons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeGuard

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.sr.coding import Code

from dxr_node.clinical.result import Interpretation
from dxr_node.engine.result import Analysis, BoneMeasurement, Point, Problem
from dxr_node.reports import codes
from dxr_node.reports.identity import DerivedIdentity, copy_patient_study
from dxr_node.reports.review import ReplacedObject, SignOff

SR_SERIES_DESCRIPTION = "DXR measurements (SR)"


def build_sr(source: pydicom.Dataset, analysis: Analysis,
             interpretation: Interpretation | None,
             identity: DerivedIdentity, signoff: SignOff | None = None,
             replaces: Sequence[ReplacedObject] = ()) -> hd.sr.ComprehensiveSR:
    """Build the measurement report; `identity` gives UIDs and common attributes;
    `signoff` makes it the reader-verified final version. Its Predecessor Documents are
    the sign-off's SRs and those of its own series (this image and algorithm version)
    among `replaces`, other than itself: the earlier results it replaces."""
    algorithm = hd.sr.AlgorithmIdentification(
        name=identity.algorithm_name, version=identity.algorithm_version)
    region_ref = hd.sr.SourceImageForRegion.from_source_image(source)
    group_ref = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    laterality = codes.LATERALITY.get(identity.laterality or "")

    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations] = []
    # The engine lists only bones that passed their own QC, also in a rejected analysis.
    for name, bone in analysis.bones.items():
        label = codes.BONE_LABELS.get(name, name)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=identity.uid(f"tracking-{name}"),
                identifier=label if analysis.ok else f"{label}, {codes.PARTIAL_LABEL}"),
            finding_sites=[hd.sr.FindingSite(codes.METACARPAL, laterality=laterality)],
            algorithm_id=algorithm,
            source_images=[group_ref],
            measurements=_bone_measurements(bone, algorithm, region_ref),
            # A reviewed report says, per bone, who placed the measurement.
            qualitative_evaluations=None if signoff is None else [hd.sr.QualitativeEvaluation(
                codes.BONE_POSITIONING, codes.POSITIONING_VALUES[bone.reader_positioned])],
        ))
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=identity.uid("tracking-hand"), identifier=codes.WHOLE_HAND_LABEL),
        finding_sites=[hd.sr.FindingSite(codes.HAND, laterality=laterality)],
        algorithm_id=algorithm,
        source_images=[group_ref],
        measurements=_hand_measurements(analysis, interpretation, algorithm) or None,
        qualitative_evaluations=_hand_evaluations(analysis, interpretation, signoff),
    ))

    observer = hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.uid("device"), name=identity.algorithm_name,
            manufacturer_name=identity.manufacturer, model_name=identity.algorithm_name,
        ),
    )
    person = None
    if signoff is not None:
        person = hd.sr.ObserverContext(
            observer_type=dicom_codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=signoff.reader_name,
                organization_name=verifying_organisation(source, signoff)))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=person,
                                                     observer_device_context=observer),
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=groups,
        referenced_images=[source] if _library_ready(source) else None,
    )
    root = report[0]
    content = root.ContentSequence
    content.append(_remarks_container(analysis, interpretation, signoff))

    # Given the full tree, highdicom deep-copies and searches it to collect the evidence
    # (about 0.08 s CPU for three bones, 3x the rest of this function), yet the evidence
    # is only the source image: hand it an empty root and attach the tree, already built
    # and checked by the templates, afterwards.
    root.ContentSequence = []
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=root,
        series_instance_uid=identity.series_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        manufacturer=identity.manufacturer,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
        coding_schemes=codes.CODING_SCHEMES,
        specific_character_set=identity.character_set,
        software_versions=identity.software_version,
    )
    root.ContentSequence = content
    sr.ContentSequence = content
    sr._content = report  # highdicom's parsed view (`sr.content`), same tree as written
    copy_patient_study(source, sr)
    if signoff is not None:
        _verify(sr, source, signoff)
    earlier = [r for r in replaces if r.series_instance_uid == identity.series_uid]
    predecessors = [r for r in (*(signoff.replaces if signoff else ()), *earlier)
                    if r.kind == "SR" and r.sop_instance_uid != identity.sop_instance_uid]
    if predecessors:
        sr.PredecessorDocumentsSequence = [_study_reference(source, predecessors)]
    if requests := referenced_requests(source):
        sr.ReferencedRequestSequence = requests
    return sr


def verifying_organisation(source: pydicom.Dataset, signoff: SignOff) -> str:
    """Verifying Organization is Type 1: the configured one, else the source's
    institution."""
    return signoff.organisation or str(source.get("InstitutionName", "") or "") or "unknown"


def _verify(sr: pydicom.Dataset, source: pydicom.Dataset, signoff: SignOff) -> None:
    """SR Document General module of a reader-verified, final document that replaces
    the preliminary one(s) (PS3.3 C.17.2)."""
    sr.CompletionFlag = "COMPLETE"
    sr.PreliminaryFlag = "FINAL"
    sr.VerificationFlag = "VERIFIED"
    observer = pydicom.Dataset()
    observer.VerifyingObserverName = signoff.reader_name
    observer.VerifyingObserverIdentificationCodeSequence = []
    observer.VerifyingOrganization = verifying_organisation(source, signoff)
    observer.VerificationDateTime = signoff.at.strftime("%Y%m%d%H%M%S")
    sr.VerifyingObserverSequence = [observer]


def _study_reference(source: pydicom.Dataset,
                     objects: Sequence[ReplacedObject]) -> pydicom.Dataset:
    """A Predecessor Documents Sequence item (SOP Instance Reference Macro by series)."""
    series: dict[str, list[pydicom.Dataset]] = {}
    for replaced in objects:
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID = replaced.sop_class_uid
        item.ReferencedSOPInstanceUID = replaced.sop_instance_uid
        series.setdefault(replaced.series_instance_uid, []).append(item)
    study = pydicom.Dataset()
    study.StudyInstanceUID = source.StudyInstanceUID
    study.ReferencedSeriesSequence = []
    for series_uid, items in series.items():
        entry = pydicom.Dataset()
        entry.SeriesInstanceUID = series_uid
        entry.ReferencedSOPSequence = items
        study.ReferencedSeriesSequence.append(entry)
    return study




def referenced_requests(source: pydicom.Dataset) -> list[pydicom.Dataset]:
    """The SR's Referenced Request Sequence (SR Document General module) when the image
    names its request: order numbers and the reason for it (e.g. ICD-10 Z13.820), from
    the header or from the HL7 order the node matched to the image."""
    requests = list(source.get("RequestAttributesSequence", []))
    placer = source.get("PlacerOrderNumberImagingServiceRequest")
    if not requests and not placer:
        return []
    out = []
    for request in requests or [pydicom.Dataset()]:
        item = pydicom.Dataset()
        item.StudyInstanceUID = source.StudyInstanceUID
        item.ReferencedStudySequence = []  # Type 2: no separate study object
        item.AccessionNumber = source.get("AccessionNumber", "")
        item.PlacerOrderNumberImagingServiceRequest = placer or ""
        item.FillerOrderNumberImagingServiceRequest = source.get(
            "FillerOrderNumberImagingServiceRequest", "")
        item.RequestedProcedureID = request.get("RequestedProcedureID", "")
        item.RequestedProcedureDescription = source.get("RequestedProcedureDescription", "")
        item.RequestedProcedureCodeSequence = list(source.get("RequestedProcedureCodeSequence",
                                                              []))
        if request.get("ReasonForTheRequestedProcedure"):
            item.ReasonForTheRequestedProcedure = request.ReasonForTheRequestedProcedure
        if request.get("ReasonForRequestedProcedureCodeSequence"):
            item.ReasonForRequestedProcedureCodeSequence = list(
                request.ReasonForRequestedProcedureCodeSequence)
        out.append(item)
    return out


def _library_ready(source: pydicom.Dataset) -> bool:
    """highdicom's TID 1600 Image Library entry for a radiograph (modality, size,
    orientation, spacing) needs Patient Orientation and Imager Pixel Spacing."""
    return bool(source.get("PatientOrientation")) and bool(source.get("ImagerPixelSpacing"))


def _bone_measurements(bone: BoneMeasurement, algorithm: hd.sr.AlgorithmIdentification,
                       region_ref: hd.sr.SourceImageForRegion) -> list[hd.sr.Measurement]:
    def polyline(*points: Point) -> hd.sr.CoordinatesForMeasurement:
        return hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=image_coordinates(points), source_image=region_ref)

    roi = polyline(*bone.roi_rc, bone.roi_rc[0])
    outer = [polyline(*bone.outer_edge_a_rc), polyline(*bone.outer_edge_b_rc)]
    inner = [polyline(*bone.inner_edge_a_rc), polyline(*bone.inner_edge_b_rc)]
    axis = polyline(bone.proximal_rc, bone.distal_rc)

    def measure(name: Code, value: float | None, unit: Code,
                coordinates: list[hd.sr.CoordinatesForMeasurement]) -> hd.sr.Measurement | None:
        if not _finite(value):
            return None
        return hd.sr.Measurement(name=name, value=value, unit=unit, algorithm_id=algorithm,
                                 referenced_coordinates=coordinates)

    # Each measurement points at the geometry it comes from: the edge lines for the
    # widths and thickness, the bone axis for the length, the ROI band for the index.
    items = [
        measure(codes.CORTICAL_THICKNESS, bone.cortical_thickness_mm, codes.MM,
                [*outer, *inner]),
        measure(codes.OUTER_WIDTH, bone.width_mm, codes.MM, outer),
        measure(codes.MEDULLARY_WIDTH, bone.medullary_width_mm, codes.MM, inner),
        measure(codes.LENGTH, bone.length_mm, codes.MM, [axis]),
        measure(codes.METACARPAL_INDEX, bone.mci, codes.RATIO, [roi]),
    ]
    return [item for item in items if item is not None]


def _hand_measurements(analysis: Analysis, interpretation: Interpretation | None,
                       algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    if not analysis.ok:
        return []
    values: list[tuple[Code, float | None, Code]] = [
        (codes.CORTICAL_THICKNESS, analysis.cortical_thickness_mm, codes.MM),
        (codes.OUTER_WIDTH, analysis.width_mm, codes.MM),
        (codes.METACARPAL_INDEX, analysis.mci, codes.RATIO),
        (codes.VPA, analysis.vpa_mm, codes.MM),
        (codes.DXR_BMD, analysis.dxr_bmd_g_cm2, codes.G_PER_CM2),
        (codes.BONE_HEALTH_INDEX, analysis.bhi, codes.NO_UNITS),
    ]
    if interpretation is not None:
        values += [
            (codes.T_SCORE, interpretation.t_score, codes.STANDARD_DEVIATION),
            (codes.Z_SCORE, interpretation.z_score, codes.STANDARD_DEVIATION),
            (codes.RELATIVE_RISK, interpretation.relative_risk, codes.RATIO),
        ]
        prior = interpretation.prior
        if prior is not None:
            values += [
                (codes.PRIOR_DXR_BMD, prior.dxr_bmd_g_cm2, codes.G_PER_CM2),
                (codes.CHANGE_SINCE_PRIOR_G_CM2, prior.change_g_cm2, codes.G_PER_CM2),
                (codes.CHANGE_SINCE_PRIOR, prior.change_percent, codes.PERCENT),
                (codes.CHANGE_PER_YEAR, prior.change_percent_per_year,
                 codes.PERCENT_PER_YEAR),
                (codes.LEAST_SIGNIFICANT_CHANGE, prior.least_significant_change_percent,
                 codes.PERCENT),
                (codes.PRECISION_CV, prior.precision_cv_percent, codes.PERCENT),
            ]
    return [hd.sr.Measurement(name=name, value=value, unit=unit, algorithm_id=algorithm)
            for name, value, unit in values if _finite(value)]


def _finite(value: float | None) -> TypeGuard[float]:
    """Numbers that can be stated (a NaN from a failed fit is left out, not written)."""
    return value is not None and math.isfinite(value)


def _hand_evaluations(analysis: Analysis, interpretation: Interpretation | None,
                      signoff: SignOff | None = None) -> list[hd.sr.QualitativeEvaluation]:
    status = codes.STATUS_VALUES.get(analysis.status, codes.STATUS_VALUES["error"])
    evaluations = [hd.sr.QualitativeEvaluation(codes.ANALYSIS_STATUS, status)]
    if signoff is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(
            codes.REVIEW_OUTCOME, codes.REVIEW_VALUES[signoff.approved]))
    category = interpretation.category if interpretation and analysis.ok else None
    if category in codes.CATEGORY_VALUES:
        evaluations.append(hd.sr.QualitativeEvaluation(
            codes.CATEGORY, codes.CATEGORY_VALUES[category]))
    prior = interpretation.prior if interpretation and analysis.ok else None
    if prior is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(
            codes.CHANGE_SIGNIFICANCE, codes.SIGNIFICANCE_VALUES[prior.significant]))
    return evaluations


def _remarks_container(analysis: Analysis, interpretation: Interpretation | None,
                       signoff: SignOff | None = None) -> hd.sr.ContainerContentItem:
    """TID 1500 row "Qualitative Evaluations": the analysis status, each QC finding (a
    CODE rejection or note with its text as a property), the triage and the
    interpretation's remarks, as CODE and TEXT items."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    status = codes.STATUS_VALUES.get(analysis.status, codes.STATUS_VALUES["error"])
    items: list[pydicom.Dataset] = [hd.sr.CodeContentItem(
        name=codes.ANALYSIS_STATUS, value=status, relationship_type=contains)]
    items += [_finding(problem) for problem in analysis.problems]
    texts: list[tuple[Code, str]] = []
    if signoff is not None:
        texts += [(codes.REVIEW_REMARK, text) for text in review_remarks(analysis, signoff)]
    if interpretation is not None:
        if analysis.ok and interpretation.category and (
                interpretation.category not in codes.CATEGORY_VALUES):
            texts.append((codes.CATEGORY, interpretation.category))
        if analysis.ok and interpretation.triage:
            texts.append((codes.TRIAGE, interpretation.triage))
        texts += [(codes.INTERPRETATION_REMARK, r) for r in interpretation.reasons]
    for name, text in texts:
        if text:
            items.append(hd.sr.TextContentItem(name=name, value=_sr_text(text),
                                               relationship_type=contains))
    container.ContentSequence = pydicom.Sequence(items)
    return container


def _finding(problem: Problem) -> hd.sr.CodeContentItem:
    item = hd.sr.CodeContentItem(name=codes.QC_FINDING[problem.severity],
                                 value=codes.problem_code(problem.code),
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    item.ContentSequence = pydicom.Sequence([hd.sr.TextContentItem(
        name=codes.QC_REASON, value=_sr_text(problem.text) or problem.code.meaning,
        relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)])
    return item


def review_remarks(analysis: Analysis, signoff: SignOff) -> list[str]:
    """The review's remarks: who signed, which bones the reader placed or excluded, why
    a result was rejected and the modifier of the service given."""
    from dxr_node.clinical.interpreter import billing_modifier

    out = [signoff.line()]
    placed = [name for name, bone in analysis.bones.items() if bone.reader_positioned]
    if placed:
        out.append(f"Measurement position set by the reader: {', '.join(placed)}")
    if signoff.rejection:
        out.append(f"No DXR result was issued: {signoff.rejection}")
    modifier = "53" if signoff.rejection else billing_modifier(analysis)
    if modifier in codes.MODIFIER_TEXT:
        out.append(codes.MODIFIER_TEXT[modifier])
    return out


def _sr_text(text: str) -> str:
    # TEXT content items are UT; keep one line per remark for readable dumps.
    return " ".join(text.split())[:1024]


def image_coordinates(points_rc: Sequence[Point]) -> np.ndarray:
    """(row, col) pixel centres to DICOM (column, row) image coordinates.

    DICOM puts 0.0\\0.0 at the top-left corner of the top-left pixel, so the centre of
    pixel [r, c] is (c + 0.5, r + 0.5).
    """
    return np.array([[c + 0.5, r + 0.5] for r, c in points_rc], dtype=np.float64)
