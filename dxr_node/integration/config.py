"""Configuration of the hospital interfaces (tables ``[hl7]`` and ``[fhir]`` of node.toml).

Pydantic models only (no heavy imports): ``dxr_node.node.config`` embeds them in
``NodeConfig``. Everything is off by default; ``config/node.toml`` documents each key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A charge's professional/technical split (CPT modifiers 26 and TC): "global" bills both
# components on one line (no modifier), "26" only the professional (interpretation),
# "TC" only the technical (acquisition) component.
ChargeComponent = Literal["global", "26", "TC"]


class Provider(BaseModel):
    """A performing or interpreting provider named on charges and results."""

    model_config = ConfigDict(extra="forbid")

    npi: str | None = Field(default=None, pattern=r"^\d{10}$")  # US National Provider Id
    family_name: str = ""
    given_name: str = ""


class HL7Config(BaseModel):
    """HL7 v2.5.1 over MLLP: order intake (listener) and results/charges (sender)."""

    model_config = ConfigDict(extra="forbid")

    # Order intake: an MLLP listener for ORM^O01 / OMI^O23.
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=2575, ge=0, le=65535)  # 0: any free port (tests)
    max_message_bytes: int = Field(default=1_048_576, ge=1024)  # larger frames: NAK + close
    idle_timeout_s: float = Field(default=60.0, gt=0)  # an idle connection is closed
    max_connections: int = Field(default=8, ge=1)
    # Our identity in MSH-3/MSH-4 of everything we send (ACKs, ORU, DFT).
    sending_application: str = "DXRNODE"
    sending_facility: str = ""
    # Image-to-order matching: by accession number first, else the same patient
    # (ID + assigning authority) with an open order dated within this many days.
    match_window_days: int = Field(default=0, ge=0)

    # Results (ORU^R01) and charges (DFT^P03) go to one MLLP peer (the interface engine).
    outbound_host: str | None = None
    outbound_port: int | None = Field(default=None, ge=1, le=65535)
    receiving_application: str = ""
    receiving_facility: str = ""
    send_results: bool = True
    send_charges: bool = True
    embed_pdf: bool = False  # the PDF report as an ED OBX (base64) in the ORU
    timeout_s: float = Field(default=30.0, gt=0)  # connect and wait for the ACK

    charge_component: ChargeComponent = "global"
    # An image the engine (or the reader) rejects: bill it as discontinued (53) or not.
    rejected_charge: Literal["53", "none"] = "53"
    performing_provider: Provider = Field(default_factory=Provider)
    interpreting_provider: Provider = Field(default_factory=Provider)

    @model_validator(mode="after")
    def _outbound_complete(self) -> HL7Config:
        if (self.outbound_host is None) != (self.outbound_port is None):
            raise ValueError("outbound_host and outbound_port go together")
        return self

    @property
    def outbound_enabled(self) -> bool:
        return self.outbound_host is not None and (self.send_results or self.send_charges)


class FHIRConfig(BaseModel):
    """FHIR R4 REST: DiagnosticReport + Observations (+ PDF) and a ChargeItem."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    token: str | None = None  # "Authorization: Bearer <token>"
    timeout_s: float = Field(default=30.0, gt=0)
    send_charge_items: bool = True
    include_pdf: bool = True  # the PDF as DiagnosticReport.presentedForm
    # System of the Patient identifier when the image has no Issuer of Patient ID.
    patient_identifier_system: str = "urn:dxr-node:patient-id"

    @model_validator(mode="after")
    def _url_when_enabled(self) -> FHIRConfig:
        if self.enabled and not self.base_url:
            raise ValueError("fhir.enabled needs fhir.base_url")
        return self
