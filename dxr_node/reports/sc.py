"""Secondary-capture overlay: the rendered result image as an RGB SC instance."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom

from dxr_node.reports.identity import DerivedIdentity, copy_patient_study
from dxr_node.reports.review import SignOff

SC_SERIES_DESCRIPTION = "DXR result overlay (for clinical review)"


def build_sc(source: pydicom.Dataset, overlay_rgb: np.ndarray,
             identity: DerivedIdentity, signoff: SignOff | None = None) -> hd.sc.SCImage:
    """Wrap an RGB uint8 overlay in a Secondary Capture Image in the source's study."""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=overlay_rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=identity.series_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=1,
        manufacturer=identity.manufacturer,
        # highdicom validates orientation letters; the source's value (possibly empty
        # or multi-letter) is copied verbatim below instead.
        patient_orientation=("L", "F"),
        laterality=identity.laterality,
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        series_description=SC_SERIES_DESCRIPTION,
        software_versions=identity.software_version,
        specific_character_set=identity.character_set,
    )
    sc.PatientOrientation = source.get("PatientOrientation", "")
    sc.Laterality = identity.laterality or ""  # Type 2C for paired body parts: empty if unknown
    sc.BurnedInAnnotation = "YES"  # results text and graphics are in the pixels
    sc.ConversionType = "WSD"  # rendered by a workstation, not digitised
    sc.DerivationDescription = "DXR measurement overlay rendered from the source radiograph"
    source_item = pydicom.Dataset()
    source_item.ReferencedSOPClassUID = source.SOPClassUID
    source_item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [source_item]
    if signoff is not None and signoff.replaced("SC"):
        # The overlay(s) this reader-verified one replaces.
        sc.ReferencedImageSequence = []
        for replaced in signoff.replaced("SC"):
            item = pydicom.Dataset()
            item.ReferencedSOPClassUID = replaced.sop_class_uid
            item.ReferencedSOPInstanceUID = replaced.sop_instance_uid
            sc.ReferencedImageSequence.append(item)
        sc.DerivationDescription += "; replaces the preliminary overlay after reader review"
    copy_patient_study(source, sc)
    return sc
