"""Header-only triage: is a received instance something the engine should analyse?

Conservative on purpose: only instances that are clearly not a projection radiograph of
a hand (another SOP class, a multi-frame or colour image, a named other body part, a
lateral or oblique view) are skipped. Anything that might be a PA hand goes to the
engine, which rejects it with reasons (and an SR saying why) if it is not one.
Skipping every non-image class also keeps the node from analysing its own SR, overlay
or GSPS if a PACS routes them back.
"""

from __future__ import annotations

import re

from pydicom import Dataset

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
ANALYSABLE_SOP_CLASSES = {
    CR_IMAGE: "CR",
    DX_FOR_PRESENTATION: "DX for presentation",
    DX_FOR_PROCESSING: "DX for processing",
}

# BodyPartExamined is often free text ("HAND LEFT", "L HAND", "HAND_L", "MANO", "MAIN"):
# any value naming a hand, finger or wrist is analysed, and so is any value not known to
# be another part. Only CID 4031 terms (and their common spellings) for other parts skip.
HAND_WORDS = ("HAND", "FINGER", "WRIST", "MANO", "MAIN")
NON_HAND_BODY_PARTS = {
    "ABDOMEN", "ABDOMENPELVIS", "ANKLE", "BREAST", "BRAIN", "CALCANEUS", "CHEST",
    "CHESTABDOMEN", "CLAVICLE", "COCCYX", "CSPINE", "ELBOW", "FACE", "FEMUR", "FIBULA",
    "FOOT", "HEAD", "HEEL", "HIP", "HUMERUS", "JAW", "KNEE", "LSPINE", "MANDIBLE", "NECK",
    "ORBIT", "PATELLA", "PELVIS", "RIB", "RIBS", "SACRUM", "SCAPULA", "SHOULDER", "SINUS",
    "SKULL", "SPINE", "SSPINE", "STERNUM", "THORAX", "TIBIA", "TMJ", "TOE", "TSPINE",
    "ZYGOMA",
}

# ViewPosition values that are not a PA/AP projection.
NON_PA_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LLO", "RLO", "OBL", "OBLIQUE"}


def skip_reason(dataset: Dataset, sop_class_uid: str) -> str | None:
    """Why this instance will not be analysed, or None when it should be.

    ``dataset`` needs only the header (read with ``stop_before_pixels=True``).
    """
    if sop_class_uid not in ANALYSABLE_SOP_CLASSES:
        return f"not a CR/DX image (SOP class {sop_class_uid})"
    frames = dataset.get("NumberOfFrames")
    try:
        if frames not in (None, "") and int(frames) > 1:
            return f"multi-frame image ({int(frames)} frames)"
    except (TypeError, ValueError):
        return f"unreadable NumberOfFrames {frames!r}"
    samples = dataset.get("SamplesPerPixel", 1)
    if samples not in (None, "", 1):
        return f"not a greyscale image (SamplesPerPixel {samples})"
    body_part = str(dataset.get("BodyPartExamined", "") or "").strip().upper()
    if _names_another_body_part(body_part):
        return f"body part {body_part} is not a hand"
    view = str(dataset.get("ViewPosition", "") or "").strip().upper()
    if view in NON_PA_VIEWS:
        return f"view position {view} is not a PA hand projection"
    return None


def _names_another_body_part(body_part: str) -> bool:
    """True for a value such as "CHEST" or "L FOOT"; False for any hand word or unknown text."""
    if any(word in body_part for word in HAND_WORDS):
        return False
    return any(word in NON_HAND_BODY_PARTS for word in re.split(r"[^A-Z]+", body_part))
