"""Order messages for the tests, built with hl7apy (as an order placer's RIS would)."""

from __future__ import annotations

from hl7apy.core import Message


def order_message(*, control_id: str = "ORM0001", accession: str = "ACC789",
                  placer: str = "PL123", patient_id: str = "12345",
                  diagnoses: tuple[str, ...] = ("Z13.820^Encounter for screening for "
                                                "osteoporosis^I10",),
                  kind: str = "ORM", control: str = "NW", date: str = "20240115") -> str:
    """An ORM^O01 (or OMI^O23) for one DXR exam, as ER7 text."""
    structure = "ORM_O01" if kind == "ORM" else "OMI_O23"
    trigger = "O01" if kind == "ORM" else "O23"
    message = Message(structure, version="2.5.1")
    message.msh.msh_3 = "RIS"
    message.msh.msh_4 = "HOSP"
    message.msh.msh_5 = "DXRNODE"
    message.msh.msh_9 = f"{kind}^{trigger}^{structure}"
    message.msh.msh_10 = control_id
    message.msh.msh_11 = "P"
    patient = message.add_group(f"{structure}_PATIENT")
    pid = patient.add_segment("PID")
    pid.pid_1 = "1"
    for value in (f"{patient_id}^^^HOSP^MR", "999-99-9999^^^SSA^SS"):
        pid.add_field("pid_3").value = value
    pid.pid_5 = "DOE^JANE"
    pid.pid_7 = "19550101"
    pid.pid_8 = "F"
    order = message.add_group(f"{structure}_ORDER")
    orc = order.add_segment("ORC")
    orc.orc_1 = control
    orc.orc_2 = f"{placer}^RIS"
    orc.orc_3 = "FI456^PACS"
    orc.orc_12 = "1234567890^SMITH^JOHN^^^^^^^^^^NPI"
    if kind == "ORM":
        detail = order.add_group("ORM_O01_ORDER_DETAIL")
    else:
        timing = order.add_group("OMI_O23_TIMING").add_segment("TQ1")
        timing.tq1_7 = date
        timing.tq1_9 = "R"
        detail = order
    obr = detail.add_segment("OBR")
    obr.obr_1 = "1"
    obr.obr_2 = f"{placer}^RIS"
    obr.obr_3 = "FI456^PACS"
    obr.obr_4 = "0750T^DXR-BMD^C4"
    obr.obr_13 = "fracture risk screening"
    obr.obr_16 = "1234567890^SMITH^JOHN^^^^^^^^^^NPI"
    obr.obr_18 = accession
    obr.obr_27 = f"^^^{date}^^R"
    for code in diagnoses:
        obr.add_field("obr_31").value = code
    dg1 = detail.add_segment("DG1")
    dg1.dg1_1 = "1"
    dg1.dg1_3 = diagnoses[0] if diagnoses else ""
    dg1.dg1_6 = "A"
    return message.to_er7()
