"""HL7 v2.5.1 messages: orders in (ORM^O01, OMI^O23), ACKs, results (ORU^R01) and
charges (DFT^P03) out, parsed and built with hl7apy (field positions, escaping and
repetitions by the library, never by string concatenation).

docs/hl7-fhir.md is the conformance statement: which fields are read and written.
"""

from __future__ import annotations

import base64
import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message, Segment
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from dxr_node.clinical.result import Interpretation
from dxr_node.engine.result import Analysis
from dxr_node.integration.config import HL7Config, Provider
from dxr_node.integration.values import HAND, ReportedValue, reported_values
from dxr_node.node.integration_store import Order
from dxr_node.reports import codes

VERSION = "2.5.1"
ACCEPTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
ORDER_TYPES = {("ORM", "O01"), ("OMI", "O23")}
ICD10_SYSTEMS = {"I10", "I10C", "ICD10", "ICD10CM", "ICD-10-CM", "ICD-10"}
# ICD-10-CM: letter, two characters, optional dot and up to four more (e.g. Z13.820).
_ICD10 = re.compile(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")
_PRIORITIES = {"S", "A", "R", "P", "C", "T"}
LOCAL_SYSTEM = codes.LOCAL_SCHEME
METHOD = ("DXR", "Digital X-ray radiogrammetry (metacarpals II-IV)", LOCAL_SYSTEM)
CPT = ("0750T", "DXR-BMD, digital X-ray radiogrammetry, image taken for it", "C4")


class OrderRejected(Exception):
    """An order message we do not accept: ``ack`` is AE (content error) or AR
    (rejected: not parseable, unsupported type or version); ``code`` from HL7 table 0357."""

    def __init__(self, ack: str, code: str, reason: str, location: str = "") -> None:
        super().__init__(reason)
        self.ack, self.code, self.reason, self.location = ack, code, reason, location


@dataclass
class Inbound:
    """What the listener needs to answer a message, whatever became of it."""

    control_id: str = ""
    message_type: str = ""
    trigger: str = ""
    version: str = VERSION
    processing_id: str = "P"
    sender: tuple[str, str] = ("", "")  # MSH-3, MSH-4
    orders: list[Order] = field(default_factory=list)


_ACK_SEQUENCE = itertools.count()  # ACK control ids: unique within a second too
_ERR_TEXT = {"100": "Segment sequence error", "101": "Required field missing",
             "102": "Data type error", "103": "Table value not found",
             "200": "Unsupported message type", "203": "Unsupported version id",
             "207": "Application internal error"}


# --- orders in ------------------------------------------------------------------------


def _er7(element: object) -> str:
    try:
        return element.to_er7() if element is not None else ""  # type: ignore[attr-defined]
    except (HL7apyException, AttributeError, IndexError):
        return ""


def _field(segment: Segment, name: str) -> list:
    """The repetitions of one field (empty when absent)."""
    try:
        return list(getattr(segment, name))
    except (HL7apyException, AttributeError, IndexError):
        return []


def _component(item: object, index: int) -> str:
    """Component ``index`` (1-based) of one field repetition, unescaped text."""
    text = _er7(item)
    parts = text.split("^")
    value = parts[index - 1] if len(parts) >= index else ""
    return value.split("&")[0].strip()


def _first(segment: Segment | None, name: str, component: int = 1) -> str:
    if segment is None:
        return ""
    items = _field(segment, name)
    return _component(items[0], component) if items else ""


def read_header(text: str) -> Inbound:
    """MSH fields needed to answer, read even from a message that fails to parse."""
    inbound = Inbound()
    msh = text.split("\r", 1)[0]
    if not msh.startswith("MSH") or len(msh) < 8:
        return inbound
    sep, comp = msh[3], msh[4]
    fields = msh.split(sep)

    def get(number: int) -> str:  # MSH-1 is the separator itself: MSH-n is fields[n - 1]
        return fields[number - 1] if len(fields) >= number else ""

    kind = get(9).split(comp)
    inbound.message_type = kind[0][:3]
    inbound.trigger = kind[1][:3] if len(kind) > 1 else ""
    inbound.control_id = get(10)[:199]
    inbound.processing_id = get(11).split(comp)[0][:1] or "P"
    inbound.version = get(12).split(comp)[0][:8] or VERSION
    inbound.sender = (get(3).split(comp)[0][:180], get(4).split(comp)[0][:180])
    return inbound


def parse_orders(text: str) -> Inbound:
    """Parse an ORM^O01 / OMI^O23 into orders; raises OrderRejected with the reason."""
    inbound = read_header(text)
    if not text.startswith("MSH"):
        raise OrderRejected("AR", "100", "message does not start with an MSH segment")
    if (inbound.message_type, inbound.trigger) not in ORDER_TYPES:
        raise OrderRejected("AR", "200", f"unsupported message type "
                            f"{inbound.message_type}^{inbound.trigger} (ORM^O01 or OMI^O23)",
                            "MSH^1^9")
    if inbound.version not in ACCEPTED_VERSIONS:
        raise OrderRejected("AR", "203", f"unsupported version {inbound.version!r} "
                            f"({', '.join(ACCEPTED_VERSIONS)})", "MSH^1^12")
    if not inbound.control_id:
        raise OrderRejected("AR", "101", "MSH-10 message control id is empty", "MSH^1^10")
    try:
        message = parse_message(text, find_groups=False,
                                validation_level=VALIDATION_LEVEL.TOLERANT)
    except (HL7apyException, ValueError, IndexError, KeyError) as exc:
        raise OrderRejected("AR", "100", f"cannot parse the message: {exc}") from None
    segments = list(message.children)
    pid = next((s for s in segments if s.name == "PID"), None)
    if pid is None:
        raise OrderRejected("AE", "100", "no PID segment")
    patient = _patient(pid)
    # Each ORC starts an order; the OBR, TQ1, IPC and DG1 after it belong to it.
    groups: list[list[Segment]] = []
    for segment in segments:
        if segment.name == "ORC":
            groups.append([segment])
        elif groups:
            groups[-1].append(segment)
    if not groups:
        raise OrderRejected("AE", "101", "no ORC segment", "ORC^1^1")
    inbound.orders = [_order(group, index, patient) for index, group in enumerate(groups, 1)]
    return inbound


def _patient(pid: Segment) -> dict:
    ids: list[tuple[str, str, str]] = []
    for item in _field(pid, "pid_3"):
        value, authority, id_type = (_component(item, 1), _component(item, 4),
                                     _component(item, 5))
        if value:
            ids.append((value[:64], authority[:64], id_type))
    if not ids:
        raise OrderRejected("AE", "101", "PID-3 has no patient identifier", "PID^1^3")
    primary = next((i for i in ids if i[2] == "MR"), ids[0])
    birth = _first(pid, "pid_7")[:8]
    sex = _first(pid, "pid_8")[:1].upper()
    return {
        "patient_id": primary[0], "issuer_of_patient_id": primary[1] or None,
        "other_patient_ids": tuple((i[0], i[1]) for i in ids if i is not primary),
        "birth_date": birth if re.fullmatch(r"\d{8}", birth) else None,
        "sex": sex if sex in ("F", "M") else None,
    }


def _order(group: list[Segment], index: int, patient: dict) -> Order:
    orc = group[0]
    by_name: dict[str, list[Segment]] = {}
    for segment in group[1:]:
        by_name.setdefault(segment.name, []).append(segment)
    obr = by_name.get("OBR", [None])[0]
    control = _first(orc, "orc_1").upper()
    if control not in ("NW", "XO", "CA", "DC", "OC", "SC"):
        raise OrderRejected("AE", "103", f"ORC-1 order control {control!r} not supported "
                            "(NW, XO, SC, CA, DC, OC)", f"ORC^{index}^1")
    placer = _first(orc, "orc_2") or _first(obr, "obr_2")
    authority = (_component(_field(orc, "orc_2")[0], 2) if _field(orc, "orc_2") else "") or \
        (_component(_field(obr, "obr_2")[0], 2) if obr is not None and _field(obr, "obr_2")
         else "")
    if not placer:
        raise OrderRejected("AE", "101", "no placer order number (ORC-2 / OBR-2)",
                            f"ORC^{index}^2")
    if obr is None and control in ("NW", "XO", "SC"):
        raise OrderRejected("AE", "101", "order without an OBR segment", f"OBR^{index}")
    filler = _first(orc, "orc_3") or _first(obr, "obr_3")
    ipc = by_name.get("IPC", [None])[0]
    accession = _first(ipc, "ipc_1") or _first(obr, "obr_18")
    provider_item = (_field(orc, "orc_12") or (_field(obr, "obr_16") if obr else []))
    provider = None
    if provider_item:
        item = provider_item[0]
        provider = {"id": _component(item, 1), "family": _component(item, 2),
                    "given": _component(item, 3),
                    "id_type": _component(item, 13) or _component(item, 9)}
    diagnoses = _diagnoses(by_name.get("DG1", []), obr, index)
    reason_texts = [_component(item, 2) for item in (_field(obr, "obr_31") if obr else [])]
    reason_texts += [_first(obr, "obr_13")] if obr is not None else []
    reason = "; ".join(dict.fromkeys(t for t in reason_texts if t))[:1000] or None
    priority = (_timing(by_name.get("TQ1", [None])[0], "tq1_9", 1)
                or _first(orc, "orc_7", 6) or _first(obr, "obr_27", 6)).upper()[:1]
    requested = (_timing(by_name.get("TQ1", [None])[0], "tq1_7", 1)
                 or _first(orc, "orc_7", 4) or _first(obr, "obr_27", 4)
                 or _first(obr, "obr_6"))[:8]
    return Order(
        placer_order_number=placer[:64], placer_authority=authority[:64],
        filler_order_number=filler[:64] or None, accession_number=accession[:64] or None,
        ordering_provider=provider,
        procedure_code=(_er7(_field(obr, "obr_4")[0]) if obr is not None and _field(obr, "obr_4")
                        else None) or None,
        reason=reason, diagnoses=tuple(diagnoses),
        priority=priority if priority in _PRIORITIES else None,
        requested_date=requested if re.fullmatch(r"\d{8}", requested) else None,
        order_control="NW" if control == "SC" else control, **patient,
    )


def _timing(segment: Segment | None, name: str, component: int) -> str:
    return _first(segment, name, component) if segment is not None else ""


def _diagnoses(dg1s: Sequence[Segment], obr: Segment | None,
               index: int) -> list[tuple[str, str, str]]:
    """ICD-10-CM codes from DG1-3 and OBR-31 (CE/CWE: code^text^system), de-duplicated."""
    items = [(item, f"DG1^{n}^3") for n, dg1 in enumerate(dg1s, 1)
             for item in _field(dg1, "dg1_3")]
    if obr is not None:
        items += [(item, f"OBR^{index}^31") for item in _field(obr, "obr_31")]
    out: dict[str, tuple[str, str, str]] = {}
    for item, where in items:
        code, text, system = (_component(item, 1), _component(item, 2),
                              _component(item, 3).upper())
        if not code:
            continue
        if system and system not in ICD10_SYSTEMS:
            continue  # another coding system (e.g. a local reason code): not a diagnosis
        normalised = code.upper()
        if not _ICD10.match(normalised):
            raise OrderRejected("AE", "102", f"{code!r} is not an ICD-10-CM code", where)
        if "." not in normalised and len(normalised) > 3:
            normalised = f"{normalised[:3]}.{normalised[3:]}"
        out.setdefault(normalised, (normalised, text[:200], "I10"))
    return list(out.values())


# --- ACK ------------------------------------------------------------------------------


def build_ack(inbound: Inbound, code: str, config: HL7Config, *, error_code: str = "",
              reason: str = "", location: str = "") -> str:
    """An original-mode ACK (AA/AE/AR) with MSA-3 and, for errors, ERR (codes: table 0357)."""
    ack = Message("ACK", version=VERSION)
    _msh(ack, config, receiver=inbound.sender, message_type=f"ACK^{inbound.trigger}^ACK",
         control_id=f"ACK{int(time.time())}{next(_ACK_SEQUENCE) % 100000:05d}",
         processing_id=inbound.processing_id or "P")
    msa = ack.add_segment("MSA")
    msa.msa_1 = code
    msa.msa_2 = inbound.control_id or ""
    if reason:
        msa.msa_3 = _text(reason, 80)
        err = ack.add_segment("ERR")
        if location:
            err.err_2 = location
        err.err_3 = f"{error_code}^{_ERR_TEXT.get(error_code, 'Error')}^HL70357"
        err.err_4 = "E"
        err.err_8 = _text(reason, 250)
    return ack.to_er7()


def _text(value: str, limit: int) -> str:
    """Free text for an ST/TX field: no segment breaks, bounded, delimiters escaped."""
    return _escape_component(" ".join(value.split())[:limit])


def _msh(message: Message, config: HL7Config, *, receiver: tuple[str, str],
         message_type: str, control_id: str, processing_id: str = "P") -> None:
    msh = message.msh
    msh.msh_3 = config.sending_application
    if config.sending_facility:
        msh.msh_4 = config.sending_facility
    if receiver[0]:
        msh.msh_5 = receiver[0]
    if receiver[1]:
        msh.msh_6 = receiver[1]
    msh.msh_7 = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "+0000"
    msh.msh_9 = message_type
    msh.msh_10 = control_id
    msh.msh_11 = processing_id
    msh.msh_12 = VERSION
    msh.msh_18 = "UNICODE UTF-8"


# --- results and charges out ----------------------------------------------------------


@dataclass(frozen=True)
class ResultContext:
    """Everything the ORU/DFT/FHIR builders need about one result."""

    job_id: int
    analysis: Analysis
    interpretation: Interpretation | None
    order: Order | None
    patient_id: str
    issuer_of_patient_id: str | None
    accession_number: str | None
    study_instance_uid: str
    study_date: str | None  # YYYYMMDD
    diagnoses: tuple[tuple[str, str, str], ...] = ()  # ICD-10-CM: order, else header
    pdf: bytes | None = None
    result_status: str = "F"  # F final, C corrected, P preliminary
    # The reader's verdict ("approve" | "reject"; None: no review): it decides the charge.
    review: str | None = None
    # Values an earlier message of this result reported and this one no longer does
    # (a reader excluded a bone or rejected the exam): each gets an OBX without a value,
    # status X in a final (results cannot be obtained), D in a correction (deleted).
    withdrawn: tuple[ReportedValue, ...] = ()

    @property
    def values(self) -> list[ReportedValue]:
        return reported_values(self.analysis, self.interpretation)


def charge_modifiers(context: ResultContext, config: HL7Config) -> list[str] | None:
    """CPT modifiers of the 0750T line, or None when no charge is made.

    52 (reduced) / 53 (discontinued) come from the result (``billing_modifier``); an
    image the engine rejected, or the reader rejected, is billed as 53 or not at all
    (``rejected_charge``); a result the reader approved is billed as what it is: 52 when
    partial (a bone excluded), none when full; the site's ``charge_component`` adds 26 or
    TC.
    """
    modifier = (context.interpretation.billing_modifier
                if context.interpretation is not None else "53")
    rejected = context.review == "reject" or (context.review is None
                                               and not context.analysis.ok)
    if rejected:
        if config.rejected_charge == "none":
            return None
        modifier = "53"
    component = [] if config.charge_component == "global" else [config.charge_component]
    return component + ([modifier] if modifier else [])


def _xcn(provider: Provider | dict | None) -> str:
    if provider is None:
        return ""
    if isinstance(provider, Provider):
        ident, family, given, kind = (provider.npi or "", provider.family_name,
                                      provider.given_name, "NPI" if provider.npi else "")
    else:
        ident, family, given, kind = (provider.get("id", ""), provider.get("family", ""),
                                      provider.get("given", ""), provider.get("id_type", ""))
    if not (ident or family):
        return ""
    parts = [ident, family, given] + [""] * 9 + [kind]
    return "^".join(_escape_component(p) for p in parts).rstrip("^")


def _escape_component(text: str) -> str:
    """Delimiters inside one component of a value we assemble from components."""
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\"))


def _ce(code: str, text: str, system: str) -> str:
    return "^".join(_escape_component(p) for p in (code, text, system))


def _patient_segment(parent: object, context: ResultContext) -> None:
    pid = parent.add_segment("PID")  # type: ignore[attr-defined]
    pid.pid_1 = "1"
    pid.pid_3 = "^".join([_escape_component(context.patient_id), "", "",
                          _escape_component(context.issuer_of_patient_id or ""), "MR"])


def _order_ids(context: ResultContext) -> tuple[str, str]:
    order = context.order
    placer = ("^".join(_escape_component(p) for p in (order.placer_order_number,
                                                      order.placer_authority)).rstrip("^")
              if order else "")
    filler = _escape_component(order.filler_order_number or "") if order else ""
    return placer, filler


def build_oru(context: ResultContext, config: HL7Config, control_id: str) -> str:
    """ORU^R01: one OBR for the exam, one OBX per reported value, the PDF as ED OBX."""
    oru = Message("ORU_R01", version=VERSION)
    _msh(oru, config, receiver=(config.receiving_application, config.receiving_facility),
         message_type="ORU^R01^ORU_R01", control_id=control_id)
    result = oru.add_group("ORU_R01_PATIENT_RESULT")
    _patient_segment(result.add_group("ORU_R01_PATIENT"), context)
    group = result.add_group("ORU_R01_ORDER_OBSERVATION")
    placer, filler = _order_ids(context)
    orc = group.add_segment("ORC")
    orc.orc_1 = "RE"
    if placer:
        orc.orc_2 = placer
    if filler:
        orc.orc_3 = filler
    obr = group.add_segment("OBR")
    obr.obr_1 = "1"
    if placer:
        obr.obr_2 = placer
    if filler:
        obr.obr_3 = filler
    obr.obr_4 = (context.order.procedure_code if context.order and context.order.procedure_code
                 else _ce(*CPT))
    if context.study_date:
        obr.obr_7 = context.study_date
    if context.order and context.order.ordering_provider:
        obr.obr_16 = _xcn(context.order.ordering_provider)
    if context.accession_number:
        obr.obr_18 = _escape_component(context.accession_number)
    obr.obr_22 = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "+0000"
    obr.obr_24 = "RAD"
    obr.obr_25 = context.result_status
    for code, text, system in context.diagnoses:
        obr.add_field("obr_31").value = _ce(code, text, system)
    if interpreter := _xcn(config.interpreting_provider):
        obr.obr_32 = interpreter.split("^", 1)[0]  # NDL: the interpreter's id
    status = context.result_status
    method = _ce(*METHOD)
    n = 0
    for value in context.values:
        n += 1
        obx = group.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        obx.obx_1 = str(n)
        obx.obx_2 = value.value_type
        obx.obx_3 = _ce(value.concept.value, value.concept.meaning,
                        value.concept.scheme_designator)
        obx.obx_4 = value.sub_id
        if value.numeric is not None:
            obx.obx_5 = value.numeric
            if value.unit is not None:
                obx.obx_6 = _ce(value.unit.value, value.unit.meaning, "UCUM")
        elif value.coded is not None:
            obx.obx_5 = _ce(value.coded.value, value.coded.meaning,
                            value.coded.scheme_designator)
        obx.obx_11 = status
        obx.obx_17 = method
    # Why a value is missing or the image was rejected: the analysis' own reasons.
    for reason in (*context.analysis.reasons,
                   *(context.interpretation.reasons if context.interpretation else ())):
        n += 1
        obx = group.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        obx.obx_1, obx.obx_2 = str(n), "ST"
        obx.obx_3 = _ce(codes.QC_REASON.value, codes.QC_REASON.meaning, LOCAL_SYSTEM)
        obx.obx_4 = HAND
        obx.obx_5 = _text(reason, 200)
        obx.obx_11 = status
    # Withdrawn values: no OBX-2/OBX-5, only the status (table 0085).
    for value in context.withdrawn:
        n += 1
        obx = group.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        obx.obx_1 = str(n)
        obx.obx_3 = _ce(value.concept.value, value.concept.meaning,
                        value.concept.scheme_designator)
        obx.obx_4 = value.sub_id
        obx.obx_11 = "D" if status == "C" else "X"
    if config.embed_pdf and context.pdf:
        n += 1
        obx = group.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        obx.obx_1, obx.obx_2 = str(n), "ED"
        obx.obx_3 = _ce("PDF", "DXR report (PDF)", LOCAL_SYSTEM)
        obx.obx_5 = "^".join([config.sending_application, "AP", "PDF", "Base64",
                              base64.b64encode(context.pdf).decode("ascii")])
        obx.obx_11 = status
    return oru.to_er7()


def build_dft(context: ResultContext, config: HL7Config, control_id: str,
              modifiers: Sequence[str]) -> str:
    """DFT^P03 with one FT1 charge line: CPT 0750T, its modifiers, the ICD-10 codes."""
    dft = Message("DFT_P03", version=VERSION)
    _msh(dft, config, receiver=(config.receiving_application, config.receiving_facility),
         message_type="DFT^P03^DFT_P03", control_id=control_id)
    now = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "+0000"
    evn = dft.add_segment("EVN")
    evn.evn_1 = "P03"
    evn.evn_2 = now
    _patient_segment(dft, context)
    pv1 = dft.add_segment("PV1")
    pv1.pv1_2 = "O"  # outpatient unless the hospital's engine knows better
    ft1 = dft.add_group("DFT_P03_FINANCIAL").add_segment("FT1")
    ft1.ft1_1 = "1"
    if context.accession_number:
        ft1.ft1_2 = _escape_component(context.accession_number)  # transaction id
    ft1.ft1_4 = context.study_date or now[:8]  # service date
    ft1.ft1_6 = "CG"
    ft1.ft1_7 = _ce(*CPT)
    ft1.ft1_10 = "1"
    for code, text, system in context.diagnoses:
        ft1.add_field("ft1_19").value = _ce(code, text, system)
    for provider in (config.performing_provider, config.interpreting_provider):
        if performer := _xcn(provider):
            ft1.add_field("ft1_20").value = performer
    if context.order and context.order.ordering_provider:
        ft1.ft1_21 = _xcn(context.order.ordering_provider)
    _, filler = _order_ids(context)
    if filler or context.accession_number:
        ft1.ft1_23 = filler or _escape_component(context.accession_number or "")
    ft1.ft1_25 = _ce(*CPT)
    for modifier in modifiers:
        ft1.add_field("ft1_26").value = _ce(modifier, _MODIFIER_TEXT.get(modifier, ""), "CPTM")
    return dft.to_er7()


_MODIFIER_TEXT = {"26": "Professional component", "TC": "Technical component",
                  "52": "Reduced services", "53": "Discontinued procedure"}


def read_ack(text: str) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 acknowledged control id, MSA-3 / ERR-8 text) of an ACK."""
    try:
        message = parse_message(text, find_groups=False,
                                validation_level=VALIDATION_LEVEL.TOLERANT)
    except (HL7apyException, ValueError, IndexError, KeyError):
        return "", "", ""
    segments = list(message.children)
    msa = next((s for s in segments if s.name == "MSA"), None)
    err = next((s for s in segments if s.name == "ERR"), None)
    if msa is None:
        return "", "", ""
    text_out = _first(msa, "msa_3") or (_er7(err.err_8) if err is not None else "")
    return _first(msa, "msa_1").upper(), _first(msa, "msa_2"), text_out
