"""Grayscale Softcopy Presentation State: the DXR graphics as a non-destructive overlay
on the source image (ROI bands, edge lines, bone labels, a one-line summary)."""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
import pydicom

from dxr_node.clinical.result import Interpretation
from dxr_node.engine.result import Analysis, Point
from dxr_node.reports import chart
from dxr_node.reports.identity import DerivedIdentity, copy_patient_study
from dxr_node.reports.review import SignOff
from dxr_node.reports.sr import image_coordinates

GSPS_SERIES_DESCRIPTION = "DXR graphics (presentation state)"
CONTENT_LABEL = "DXR"
LABEL_HALF_SIZE_PX = (40.0, 18.0)  # half width/height of a bone label box, source pixels


def _layer(name: str, order: int, description: str, rgb: tuple[int, int, int]
           ) -> hd.pr.GraphicLayer:
    return hd.pr.GraphicLayer(layer_name=name, order=order, description=description,
                              display_color=hd.color.CIELabColor.from_rgb(*rgb))


def build_gsps(source: pydicom.Dataset, analysis: Analysis,
               interpretation: Interpretation | None, identity: DerivedIdentity,
               signoff: SignOff | None = None) -> hd.pr.GrayscaleSoftcopyPresentationState:
    roi_layer = _layer("DXR_ROI", 1, "DXR measured bands and bone labels", chart.ROI)
    outer_layer = _layer("DXR_OUTER_EDGES", 2, "DXR outer (periosteal) edges",
                         chart.OUTER_EDGE)
    inner_layer = _layer("DXR_INNER_EDGES", 3, "DXR inner (endosteal) edges",
                         chart.INNER_EDGE)
    text_layer = _layer("DXR_SUMMARY", 4, "DXR result summary", chart.TEXT)

    roi_graphics, outer_graphics, inner_graphics, labels = [], [], [], []
    # A rejected analysis may still list bones that passed their own QC (partial result).
    for name, bone in analysis.bones.items():
        roi_graphics.append(_polyline([*bone.roi_rc, bone.roi_rc[0]]))
        outer_graphics += [_polyline(bone.outer_edge_a_rc),
                           _polyline(bone.outer_edge_b_rc)]
        inner_graphics += [_polyline(bone.inner_edge_a_rc),
                           _polyline(bone.inner_edge_b_rc)]
        label = f"{name} (reader)" if bone.reader_positioned else name
        labels.append(_bone_label(label, bone.roi_rc, source))
    summary = hd.pr.TextObject(
        text_value=summary_line(analysis, interpretation, signoff)[:1024],
        units=hd.pr.AnnotationUnitsValues.DISPLAY,
        bounding_box=(0.02, 0.01, 0.98, 0.06),
        text_justification=hd.pr.TextJustificationValues.LEFT,
    )

    annotations = [hd.pr.GraphicAnnotation(referenced_images=[source],
                                           graphic_layer=text_layer, text_objects=[summary])]
    for layer, graphics, texts in ((roi_layer, roi_graphics, labels),
                                   (outer_layer, outer_graphics, []),
                                   (inner_layer, inner_graphics, [])):
        if graphics or texts:
            annotations.append(hd.pr.GraphicAnnotation(
                referenced_images=[source], graphic_layer=layer,
                graphic_objects=graphics or None, text_objects=texts or None))

    # MONOCHROME1 stores bone dark: invert in the presentation LUT so the state shows
    # the image in its intended polarity.
    inverse = source.get("PhotometricInterpretation") == "MONOCHROME1"
    shape = (hd.PresentationLUTShapeValues.INVERSE if inverse
             else hd.PresentationLUTShapeValues.IDENTITY)
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=identity.series_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        manufacturer=identity.manufacturer,
        manufacturer_model_name=identity.algorithm_name,
        software_versions=identity.software_version,
        device_serial_number="none",
        content_label=CONTENT_LABEL,
        content_description="DXR metacarpal measurements",
        graphic_annotations=annotations,
        graphic_layers=[roi_layer, outer_layer, inner_layer, text_layer],
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=shape),
        series_description=GSPS_SERIES_DESCRIPTION,
        specific_character_set=identity.character_set,
    )
    gsps.Laterality = identity.laterality or ""  # Type 2C for paired body parts: empty if unknown
    copy_patient_study(source, gsps)
    return gsps


def _polyline(points: tuple[Point, ...] | list[Point]) -> hd.pr.GraphicObject:
    return hd.pr.GraphicObject(graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                               graphic_data=image_coordinates(points),
                               units=hd.pr.AnnotationUnitsValues.PIXEL)


def _bone_label(name: str, roi_rc: tuple[Point, ...], source: pydicom.Dataset
                ) -> hd.pr.TextObject:
    """Bone name just above the band's topmost corner, kept inside the image."""
    rows, cols = int(source.Rows), int(source.Columns)
    top = min(roi_rc, key=lambda p: p[0])
    centre_col = float(np.mean([c for _, c in roi_rc]))
    half_w, half_h = max(LABEL_HALF_SIZE_PX[0], 7.0 * len(name)), LABEL_HALF_SIZE_PX[1]
    x = min(max(centre_col + 0.5, half_w + 1), cols - half_w - 1)
    y = min(max(top[0] + 0.5 - half_h - 8, half_h + 1), rows - half_h - 1)
    return hd.pr.TextObject(text_value=name, units=hd.pr.AnnotationUnitsValues.PIXEL,
                            bounding_box=(x - half_w, y - half_h, x + half_w, y + half_h))


def summary_line(analysis: Analysis, interpretation: Interpretation | None,
                 signoff: SignOff | None = None) -> str:
    """One line for the presentation state (and any other terse display)."""
    if signoff is not None and signoff.rejection:
        return f"DXR: no result issued ({signoff.rejection}); {signoff.line()}"
    if not analysis.ok:
        reason = analysis.reasons[0] if analysis.reasons else "no reason given"
        if analysis.bones:
            return (f"DXR partial result ({', '.join(analysis.bones)} only, no whole-hand "
                    f"index or scores): {reason}")
        return f"DXR analysis not possible: {reason}"
    parts = []
    if _finite(analysis.dxr_bmd_g_cm2):
        parts.append(f"DXR-BMD {analysis.dxr_bmd_g_cm2:.3f} g/cm2")
    if _finite(analysis.mci):
        parts.append(f"MCI {analysis.mci:.3f}")
    if _finite(analysis.bhi):
        parts.append(f"BHI {analysis.bhi:.2f}")
    if interpretation is not None:
        if _finite(interpretation.t_score):
            parts.append(f"T {interpretation.t_score:+.1f}")
        if _finite(interpretation.z_score):
            parts.append(f"Z {interpretation.z_score:+.1f}")
        if interpretation.category:
            parts.append(interpretation.category)
    parts.append("for clinical review" if signoff is None else signoff.line())
    return "DXR: " + ", ".join(parts)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
