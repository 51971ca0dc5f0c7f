"""A reader's sign-off of a result, as the report builders need it.

Given to ``build_reports``, it turns the preliminary objects into final ones: the SR is
VERIFIED/FINAL/COMPLETE with the reader as Verifying Observer and the preliminary SR in
its Predecessor Documents Sequence; the PDF and the overlays name the reader; every
object gets a new SOP Instance UID (``revision`` enters the UID hash), so nothing
already sent is overwritten under its old UID.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplacedObject:
    """An object this issue replaces (same study as the source)."""

    kind: str  # "SR" | "SC" | "GSPS" | "PDF"
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class SignOff:
    reader_name: str  # Verifying Observer Name (from the reader's account)
    organisation: str  # Verifying Organization (from the config)
    at: datetime.datetime  # verification time (UTC)
    revision: str  # distinguishes this instance UIDs from earlier ones
    replaces: tuple[ReplacedObject, ...] = ()
    # Set when the reader rejected the result: why no result was issued.
    rejection: str | None = None

    @property
    def approved(self) -> bool:
        return self.rejection is None

    def replaced(self, kind: str) -> list[ReplacedObject]:
        return [r for r in self.replaces if r.kind == kind]

    def line(self) -> str:
        """One line for the PDF and the overlays."""
        verb = "Verified" if self.approved else "Rejected"
        org = f" ({self.organisation})" if self.organisation else ""
        return f"{verb} by {self.reader_name}{org}, {self.at:%Y-%m-%d %H:%M} UTC"
