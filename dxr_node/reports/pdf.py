"""One-page PDF report, and its Encapsulated PDF DICOM instance in the source's study."""

from __future__ import annotations

import datetime
import logging
import math

import pydicom
from fpdf import FPDF
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dxr_node.clinical.interpreter import billing_modifier
from dxr_node.clinical.result import Interpretation
from dxr_node.engine.result import BONE_NAMES, Analysis
from dxr_node.reports import chart, codes
from dxr_node.reports.identity import DerivedIdentity, copy_patient_study, hand_laterality
from dxr_node.reports.review import SignOff

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


class _NoMissingGlyphList(logging.Filter):
    """fpdf2 logs the characters a font lacks, i.e. pieces of patient names: drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "missing the following glyphs" not in str(record.msg)


logging.getLogger("fpdf.output").addFilter(_NoMissingGlyphList())
PDF_SERIES_DESCRIPTION = "DXR report (PDF)"
DOCUMENT_TITLE = "Digital X-ray radiogrammetry (DXR) report"
FOOTER_MM = 24  # footer height from the bottom of the page
REVIEW_NOTE = ("For clinical review. DXR-BMD is an estimate from a hand radiograph; it supports, "
               "and does not replace, DXA and clinical judgement.")

TYPE2_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def render_pdf(source: pydicom.Dataset, analysis: Analysis,
               interpretation: Interpretation | None, signoff: SignOff | None = None) -> bytes:
    """The one-page A4 report as PDF bytes."""
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_auto_page_break(False)
    pdf.set_title(DOCUMENT_TITLE)
    pdf.set_creator("dxr-node")
    pdf.set_margins(16, 14, 16)
    regular, bold = chart.pdf_font_path(), chart.pdf_font_path(bold=True)
    if regular and bold:
        pdf.add_font("Body", "", str(regular))
        pdf.add_font("Body", "B", str(bold))
        family = "Body"
    else:  # core font: Latin-1 only, so non-Latin names degrade to '?'
        family = "Helvetica"
    if family == "Body" and _beyond_cyrillic(str(source.get("PatientName", ""))):
        # The body font covers Latin, Greek and Cyrillic; larger fonts for other scripts
        # are loaded only when a name needs them.
        names = []
        for k, path in enumerate(chart.fallback_font_paths()):
            names.append(f"Fallback{k}")
            pdf.add_font(names[-1], "", str(path))
        pdf.set_fallback_fonts(names, exact_match=False)
    pdf.add_page()
    writer = _Writer(pdf, family)

    writer.title(DOCUMENT_TITLE)
    if signoff is None:
        writer.line("For clinical review", size=9, colour=(110, 110, 110))
    else:
        writer.line(f"Final report. {signoff.line()}.", size=9.5, bold=True)
    writer.gap(2)
    writer.pairs(_identification(source, hand_laterality(analysis, interpretation)), columns=2)
    writer.gap(1)
    writer.pairs([("Procedure", f"CPT {codes.CPT_DXR.value}: {codes.CPT_DXR.meaning}"),
                  ("Indication", _indication(source) or "not given")], columns=1)
    modifier = (interpretation.billing_modifier if interpretation is not None
                else billing_modifier(analysis))
    if signoff is not None and signoff.rejection:
        modifier = "53"  # the reader issued no result
    if modifier in codes.MODIFIER_TEXT:
        writer.line(_modifier_line(modifier, analysis), bold=True, colour=(150, 60, 0))
    writer.rule()

    if signoff is not None and signoff.rejection:
        writer.heading("No DXR result issued")
        writer.line(f"Rejected at review: {_text(signoff.rejection, family)}")
    elif not analysis.bones:
        writer.heading("DXR analysis not possible")
        for reason in analysis.reasons or ("no reason given",):
            writer.line(f"• {_text(reason, family)}")
        writer.line("No measurements were made. Re-acquire the PA hand radiograph if "
                    "appropriate.", colour=(110, 110, 110))
    else:
        _results(writer, analysis, interpretation)

    # Triage and category are in the table above; the remarks are the reasons only.
    remarks = list(analysis.reasons) if analysis.bones else []
    if interpretation is not None:
        remarks += [r for r in interpretation.reasons if r not in remarks]
    if remarks:
        writer.heading("Remarks")
        for remark in remarks:
            if pdf.get_y() > pdf.h - FOOTER_MM - 10:  # one page: the rest is in the SR
                writer.line("• further remarks: see the DXR structured report", size=8.5)
                break
            writer.line(f"• {_text(remark, family)}", size=8.5)

    # Footer.
    pdf.set_y(-FOOTER_MM)
    writer.rule()
    algorithm = " ".join(filter(None, (analysis.algorithm.get("name"),
                                       analysis.algorithm.get("version"))))
    writer.line(f"QC status: {analysis.status}. Algorithm: {algorithm or 'unknown'}. "
                f"Source image: {source.get('SOPInstanceUID', '')}", size=7.5,
                colour=(110, 110, 110))
    writer.line(REVIEW_NOTE, size=7.5, colour=(110, 110, 110))
    return bytes(pdf.output())


def _modifier_line(modifier: str, analysis: Analysis) -> str:
    """The documentation line of a billing modifier, saying why the service was reduced."""
    text = codes.MODIFIER_TEXT[modifier]
    if modifier != "52":
        return text
    missing = [name for name in BONE_NAMES if name not in analysis.bones]
    if missing:
        return (f"{text}: {3 - len(missing)} of 3 metacarpals measured "
                f"(not measured: {', '.join(missing)}).")
    return f"{text}: ratio measures only (no usable pixel spacing, so no DXR-BMD)."


def _results(writer: _Writer, analysis: Analysis,
             interpretation: Interpretation | None) -> None:
    has_mm = analysis.pixel_spacing_mm is not None
    writer.heading("Metacarpals II-IV (mid-shaft)" if analysis.ok
                   else "Metacarpals II-IV (mid-shaft): partial result")
    header = ["Bone", "T (mm)", "W (mm)", "Medullary (mm)", "MCI", "Length (mm)"]
    rows = []
    for name in BONE_NAMES:
        bone = analysis.bones.get(name)
        if bone is None:
            rows.append([name, "not measured", "", "", "", ""])
            continue
        shown = f"{name}*" if bone.reader_positioned else name
        rows.append([shown, _fmt(bone.cortical_thickness_mm, 2), _fmt(bone.width_mm, 2),
                     _fmt(bone.medullary_width_mm, 2), _fmt(bone.mci, 3),
                     _fmt(bone.length_mm, 1)])
    writer.table(header, rows, widths=(22, 30, 30, 34, 26, 30))
    writer.line("T: cortical thickness; W: outer width; MCI: metacarpal index 2T/W."
                + (" *: measurement positioned by the reader."
                   if any(b.reader_positioned for b in analysis.bones.values()) else ""),
                size=7.5, colour=(110, 110, 110))
    if not has_mm:
        writer.line("No pixel spacing in the image: millimetre values, DXR-BMD, BHI and "
                    "scores are not available (ratios only).", colour=(150, 60, 0))
    writer.gap(2)
    if not analysis.ok:
        writer.heading("Partial result")
        writer.line(f"Analysis {analysis.status}: only the metacarpals above passed quality "
                    "control. No whole-hand index (DXR-BMD, MCI, BHI) and no scores are "
                    "given; the reasons are listed below.", colour=(150, 60, 0))
        return

    writer.heading("Indices and scores")
    pairs = [("DXR-BMD", _fmt(analysis.dxr_bmd_g_cm2, 3, " g/cm²")),
             ("Metacarpal index (MCI)", _fmt(analysis.mci, 3)),
             ("Bone Health Index (BHI)", _fmt(analysis.bhi, 2))]
    if interpretation is not None:
        prior = interpretation.prior
        change = "no prior result"
        if prior is not None:
            verdict = "significant" if prior.significant else "within precision"
            change = (f"{prior.change_percent:+.1f} % since {_date(prior.date)} ({verdict}; "
                      f"LSC {prior.least_significant_change_percent:.1f} %)")
        pairs += [("T-score", _fmt(interpretation.t_score, 1, signed=True)),
                  ("Z-score", _fmt(interpretation.z_score, 1, signed=True)),
                  ("Category (DXR-derived)", interpretation.category or "–"),
                  ("Triage for DXA", interpretation.triage or "–"),
                  ("Hip fracture relative risk", _fmt(interpretation.relative_risk, 1, "×")),
                  ("Change since prior", change)]
        if interpretation.reference is not None:
            pairs.append(("Reference", f"{interpretation.reference.name} "
                                       f"v{interpretation.reference.version}"))
    writer.pairs(pairs, columns=1, key_width=52)

    if interpretation is not None:
        image = chart.render_reference_chart(interpretation, analysis.dxr_bmd_g_cm2,
                                             (1100, 520), dark=False)
        if image is not None:
            writer.gap(2)
            writer.image(image, width=150)


class _Writer:
    """A cursor over the page with the few text styles the report uses."""

    def __init__(self, pdf: FPDF, family: str) -> None:
        self.pdf, self.family = pdf, family
        self.width = pdf.w - pdf.l_margin - pdf.r_margin

    def _style(self, size: float, bold: bool = False,
               colour: tuple[int, int, int] = (20, 20, 20)) -> None:
        self.pdf.set_font(self.family, "B" if bold else "", size)
        self.pdf.set_text_color(*colour)

    def title(self, text: str) -> None:
        self._style(16, bold=True)
        self.pdf.cell(self.width, 8, text, new_x="LMARGIN", new_y="NEXT")

    def heading(self, text: str) -> None:
        self.gap(1.5)
        self._style(11, bold=True, colour=(30, 60, 110))
        self.pdf.cell(self.width, 6.5, text, new_x="LMARGIN", new_y="NEXT")

    def line(self, text: str, size: float = 9.5, bold: bool = False,
             colour: tuple[int, int, int] = (20, 20, 20)) -> None:
        self._style(size, bold, colour)
        self.pdf.multi_cell(self.width, size * 0.5, _text(text, self.family), align="L",
                            new_x="LMARGIN", new_y="NEXT")

    def pairs(self, pairs: list[tuple[str, str]], columns: int, key_width: float = 30) -> None:
        column_width = self.width / columns
        for start in range(0, len(pairs), columns):
            y = self.pdf.get_y()
            bottom = y
            for k, (key, value) in enumerate(pairs[start:start + columns]):
                x = self.pdf.l_margin + k * column_width
                self.pdf.set_xy(x, y)
                self._style(9, colour=(100, 100, 100))
                self.pdf.cell(key_width, 5, key)
                self._style(9.5, bold=True)
                self.pdf.multi_cell(column_width - key_width - 2, 5,
                                    _text(value, self.family), align="L", new_x="LEFT",
                                    new_y="NEXT")
                bottom = max(bottom, self.pdf.get_y())
            self.pdf.set_xy(self.pdf.l_margin, bottom)

    def table(self, header: list[str], rows: list[list[str]], widths: tuple[float, ...]) -> None:
        self._style(8.5, bold=True, colour=(80, 80, 80))
        self.pdf.set_fill_color(235, 239, 245)
        for text, width in zip(header, widths, strict=True):
            self.pdf.cell(width, 7, text, border="B", fill=True)
        self.pdf.ln(7)
        for row in rows:
            for k, (text, width) in enumerate(zip(row, widths, strict=True)):
                self._style(9.5, bold=k == 0)
                self.pdf.cell(width, 6.5, text, border="B")
            self.pdf.ln(6.5)

    def image(self, image, width: float) -> None:
        self.pdf.image(image, x=self.pdf.l_margin, w=width)

    def rule(self) -> None:
        y = self.pdf.get_y() + 1.5
        self.pdf.set_draw_color(190, 190, 190)
        self.pdf.line(self.pdf.l_margin, y, self.pdf.l_margin + self.width, y)
        self.pdf.set_y(y + 2)

    def gap(self, mm: float) -> None:
        self.pdf.set_y(self.pdf.get_y() + mm)


def _identification(source: pydicom.Dataset, laterality: str | None) -> list[tuple[str, str]]:
    name = str(source.get("PatientName", "") or "").replace("^", " ").strip()
    return [
        ("Patient", name or "–"), ("Study date", _date(source.get("StudyDate", ""))),
        ("Patient ID", str(source.get("PatientID", "") or "–")),
        ("Accession", str(source.get("AccessionNumber", "") or "–")),
        ("Birth date", _date(source.get("PatientBirthDate", ""))),
        ("Referrer", str(source.get("ReferringPhysicianName", "") or "–").replace("^", " ")),
        ("Sex", str(source.get("PatientSex", "") or "–")),
        ("Laterality", {"L": "left hand", "R": "right hand"}.get(laterality or "", "–")),
    ]


def _indication(source: pydicom.Dataset) -> str:
    """Reason for the request and admitting diagnoses (e.g. ICD-10 M81.0, Z13.820)."""
    parts: list[str] = []
    reasons = [source.get("ReasonForTheRequestedProcedure")]
    reasons += [item.get("ReasonForTheRequestedProcedure")
                for item in source.get("RequestAttributesSequence", [])]
    parts += [str(r) for r in reasons if r]
    code_items = list(source.get("AdmittingDiagnosesCodeSequence", []))
    for item in source.get("RequestAttributesSequence", []):
        code_items += list(item.get("ReasonForRequestedProcedureCodeSequence", []))
    for item in code_items:
        code = item.get("CodeValue") or item.get("LongCodeValue") or ""
        scheme = item.get("CodingSchemeDesignator", "")
        scheme = "ICD-10" if scheme in ("I10", "ICD10", "ICD-10") else scheme
        parts.append(f"{scheme} {code} {item.get('CodeMeaning', '')}".strip())
    if source.get("AdmittingDiagnosesDescription"):
        parts.append(str(source.AdmittingDiagnosesDescription))
    return "; ".join(dict.fromkeys(parts))


def _beyond_cyrillic(text: str) -> bool:
    return any(ord(ch) > 0x52F for ch in text)


def _text(text: str, family: str) -> str:
    if family == "Helvetica":
        return text.encode("latin-1", "replace").decode("latin-1")
    return text


def _date(value: str) -> str:
    value = str(value or "")
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 else (value or "–")


def _fmt(value: float | None, digits: int, suffix: str = "", signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}{suffix}" if signed else f"{value:.{digits}f}{suffix}"


def build_encapsulated_pdf(source: pydicom.Dataset, pdf_bytes: bytes,
                           identity: DerivedIdentity) -> pydicom.Dataset:
    """Encapsulated PDF IOD (PS3.3 A.45.1) in the source's study, built with pydicom."""
    now = datetime.datetime.now()
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = identity.character_set
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = identity.sop_instance_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    copy_patient_study(source, ds)
    if "InstitutionName" in source:
        ds.InstitutionName = source.InstitutionName
    for keyword in TYPE2_ATTRIBUTES:
        if keyword not in ds:
            setattr(ds, keyword, None)
    # Encapsulated Document Series, General Equipment, SC Equipment.
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = identity.series_uid
    ds.SeriesNumber = identity.series_number
    ds.SeriesDescription = PDF_SERIES_DESCRIPTION
    ds.Manufacturer = identity.manufacturer
    ds.SoftwareVersions = identity.software_version
    ds.ConversionType = "WSD"
    # Encapsulated Document.
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the document shows patient identification
    ds.DocumentTitle = DOCUMENT_TITLE
    ds.ConceptNameCodeSequence = []
    source_item = pydicom.Dataset()
    source_item.ReferencedSOPClassUID = source.SOPClassUID
    source_item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceInstanceSequence = [source_item]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # OB values must have even length: pad with a NUL and record the true length.
    ds.EncapsulatedDocumentLength = len(pdf_bytes)
    ds.EncapsulatedDocument = pdf_bytes + (b"\0" if len(pdf_bytes) % 2 else b"")

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
