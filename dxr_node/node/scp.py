"""The node's DICOM listener: C-ECHO and C-STORE SCP (pynetdicom).

Every storage SOP class and every transfer syntax is accepted and stored exactly as
received. A C-STORE gets Success only after the file is fsync'd, renamed into the spool
and its row (and queued job) committed in SQLite, so a sender that saw Success never has
to send again. Low disk answers 0xA700 (out of resources: the sender keeps the image and
retries). Calling AE titles and source addresses outside the allow lists are rejected
before any data is accepted.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import shutil
import time
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationServer

from dxr_node.fileio import write_durably
from dxr_node.node.audit import AuditTrail
from dxr_node.node.config import NodeConfig
from dxr_node.node.database import DATABASE_ERRORS
from dxr_node.node.guard import ConnectionGuard, GuardedSSLSocket
from dxr_node.node.logs import log_event
from dxr_node.node.store import InstanceInfo, Store
from dxr_node.node.tls import server_context
from dxr_node.node.triage import skip_reason

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_INVALID_INSTANCE = 0x0117  # PS3.7 C: "Invalid SOP Instance"
STATUS_CANNOT_UNDERSTAND = 0xC000

# Offered maximum PDU length: large enough for fast transfers, small enough that every PDU
# arrives well within the network timeout (which a PDU must beat; see guard.py).
MAX_PDU_BYTES = 4 * 2**20
_MESSAGE_OVERHEAD_BYTES = 2**20  # command set and PDU headers on top of the data set

_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")


def _refuse(fields: dict, status: int, reason: str) -> Dataset:
    """A failure status with the reason in Error Comment (the sender's log shows it)."""
    log_event(log, "store_refused", logging.WARNING, **fields, status=f"0x{status:04X}",
              reason=reason)
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = reason[:64]  # LO
    return answer


def _text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


class StorageSCP:
    """C-ECHO/C-STORE listener that spools to ``config.spool_path`` and queues jobs."""

    def __init__(self, config: NodeConfig, store: Store, audit: AuditTrail | None = None) -> None:
        self.config = config
        self.store = store
        self.audit = audit
        self.spool = Path(config.spool_path)
        self._incoming = self.spool / "incoming"
        self._networks = [ipaddress.ip_network(n, strict=False)
                          for n in config.allowed_source_ips]
        self._server: AssociationServer | None = None
        tls = None
        if config.tls.enabled:
            tls = server_context(config.tls, GuardedSSLSocket)
        self.guard = ConnectionGuard(
            acse_timeout_s=config.acse_timeout_s, network_timeout_s=config.network_timeout_s,
            max_per_peer=config.max_associations_per_peer,
            max_message_bytes=config.max_store_mb * 2**20 + _MESSAGE_OVERHEAD_BYTES,
            tls=tls, allowed_subjects=config.tls.allowed_client_subjects,
            on_refused=self._tls_refused)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Bind and serve in background threads; returns the bound (host, port)."""
        self._incoming.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:  # always set in pynetdicom's list
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        # AllStoragePresentationContexts lacks Verification; without it C-ECHO fails.
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = MAX_PDU_BYTES
        # pynetdicom's own (idle) timeouts; the guard adds deadlines a trickle cannot reset.
        ae.acse_timeout = self.config.acse_timeout_s
        ae.dimse_timeout = self.config.network_timeout_s
        ae.network_timeout = self.config.network_timeout_s
        if self.config.allowed_calling_aets:
            ae.require_calling_aet = list(self.config.allowed_calling_aets)
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_ACCEPTED, self._on_association, ["accepted"]),
            (evt.EVT_REJECTED, self._on_association, ["rejected"]),
            (evt.EVT_RELEASED, self._on_association, ["released"]),
            (evt.EVT_ABORTED, self._on_association, ["aborted"]),
        ]
        server = ae.start_server((self.config.host, self.config.port), block=False,
                                 evt_handlers=handlers)
        assert server is not None  # non-blocking: the server is returned
        # pynetdicom has no IP allow list nor per-peer limit; socketserver closes a
        # connection whose verify_request is False before any association is read.
        server.verify_request = self._verify_source  # type: ignore[method-assign]
        accept = server.get_request

        def get_request() -> tuple:
            sock, address = accept()
            return self.guard.wrap(sock, address), address

        server.get_request = get_request  # type: ignore[method-assign]
        self.guard.start()
        self._server = server
        host, port = server.server_address[:2]
        log_event(log, "listening", ae_title=self.config.ae_title, host=host, port=port,
                  tls="on" if self.config.tls.enabled else "off",
                  allowed_calling_aets=",".join(self.config.allowed_calling_aets) or "ANY",
                  allowed_source_ips=",".join(self.config.allowed_source_ips) or "ANY")
        return host, port

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop listening, let associations in progress finish for up to ``grace_s``,
        then abort the rest (their unacknowledged instances are re-sent by the peer)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        self.guard.stop()
        associations = server.active_associations  # threads: still listed after shutdown
        deadline = time.monotonic() + grace_s
        while any(a.is_alive() for a in associations) and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in associations:
            if assoc.is_alive():
                assoc.abort()

    # --- access control --------------------------------------------------------------

    def _verify_source(self, request: object, client_address: tuple[str, int]) -> bool:
        if self._networks:
            try:
                address = ipaddress.ip_address(client_address[0])
            except ValueError:
                address = None
            if address is None or not any(address in net for net in self._networks):
                log_event(log, "connection_refused", logging.WARNING,
                          source_ip=client_address[0],
                          reason="source address not in allowed_source_ips")
                if self.audit is not None:
                    self.audit.security_alert(client_address[0], None,
                                              "source address not in allowed_source_ips")
                return False
        return self.guard.admit(request)

    # --- handlers --------------------------------------------------------------------

    def _tls_refused(self, source_ip: str, reason: str) -> None:
        if self.audit is not None:
            self.audit.security_alert(source_ip, None, reason)

    def _on_pdu(self, event: evt.Event) -> None:
        self.guard.pdu_received(event.assoc)

    def _on_association(self, event: evt.Event, what: str) -> None:
        assoc = event.assoc
        if what == "accepted":
            self.guard.established(assoc)
        elif what == "rejected" and self.audit is not None:
            self.audit.security_alert(assoc.requestor.address, assoc.requestor.ae_title,
                                      "association rejected (calling AE title not allowed "
                                      "or no association slot free)")
        level = logging.WARNING if what in ("rejected", "aborted") else logging.INFO
        log_event(log, f"association_{what}", level, assoc=assoc.name,
                  calling_aet=assoc.requestor.ae_title, source_ip=assoc.requestor.address)

    def _on_echo(self, event: evt.Event) -> int:
        self.guard.handling(event.assoc, False)  # the next message is counted afresh
        log_event(log, "echo", assoc=event.assoc.name,
                  calling_aet=event.assoc.requestor.ae_title)
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int | Dataset:
        # Our own work (fsync, commit) must not count against the sender's deadline.
        self.guard.handling(event.assoc, True)
        try:
            return self._on_store_guarded(event)
        finally:
            self.guard.handling(event.assoc, False)

    def _on_store_guarded(self, event: evt.Event) -> int | Dataset:
        assoc = event.assoc
        sop_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        fields = {"assoc": assoc.name, "calling_aet": assoc.requestor.ae_title,
                  "sop_instance_uid": sop_uid}
        try:
            if self._disk_nearly_full():
                log_event(log, "store_refused", logging.WARNING, **fields,
                          reason=f"less than {self.config.min_free_disk_mb} MB free in spool",
                          status="0xA700")
                return STATUS_OUT_OF_RESOURCES
            return self._store(event, sop_uid, fields)
        except OSError as exc:
            status = STATUS_OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) \
                else STATUS_PROCESSING_FAILURE
            log_event(log, "store_failed", logging.ERROR, **fields, status=f"0x{status:04X}",
                      reason=f"{type(exc).__name__}: {exc}")
            return status
        except DATABASE_ERRORS as exc:
            # Locked or unwritable database: transient, so the sender keeps it and retries.
            log_event(log, "store_failed", logging.ERROR, **fields, status="0xA700",
                      reason=f"database: {exc}")
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:  # a bug must not kill the association thread silently
            log.exception("store failed")
            log_event(log, "store_failed", logging.ERROR, **fields, status="0x0110",
                      reason=f"{type(exc).__name__}: {exc}")
            return STATUS_PROCESSING_FAILURE

    def _disk_nearly_full(self) -> bool:
        free = shutil.disk_usage(self.spool).free
        return free < self.config.min_free_disk_mb * 1024 * 1024

    def _store(self, event: evt.Event, sop_uid: str, fields: dict) -> int | Dataset:
        data = cast(C_STORE, event.request).DataSet
        if data is None or (hasattr(data, "getbuffer") and not data.getbuffer().nbytes):
            # CommandDataSetType "no data set": nothing to store, not a Success
            return _refuse(fields, STATUS_CANNOT_UNDERSTAND, "C-STORE request without a data set")
        encoded = event.encoded_dataset(include_meta=True)
        sop_class = str(event.request.AffectedSOPClassUID)
        transfer_syntax = str(event.context.transfer_syntax)
        try:
            header: Dataset = dcmread(BytesIO(encoded), stop_before_pixels=True)
            # Everything downstream (duplicates, result UIDs, files) is keyed by the
            # command's UID: a data set naming another instance could overwrite its results.
            if str(header.get("SOPInstanceUID", "") or "").strip() not in ("", sop_uid):
                return _refuse(fields, STATUS_INVALID_INSTANCE,
                               "the data set's SOP Instance UID differs from the C-STORE's "
                               "Affected SOP Instance UID")
            reason = skip_reason(header, sop_class)
        except (InvalidDicomError, ValueError, TypeError, EOFError, KeyError,
                NotImplementedError) as exc:  # NotImplementedError: an unknown VR
            # A CR/DX is queued anyway (the worker records the loader's reason); any other
            # SOP class is skipped as usual: that check needs no header.
            log_event(log, "header_unreadable", logging.WARNING, **fields, reason=str(exc))
            header = Dataset()
            reason = skip_reason(header, sop_class)

        final = self._spool_path(sop_uid)
        if not final.exists():  # else a copy (duplicate, or left by a crash) is already there
            # Durable write: temp file, fsync, atomic rename, fsync the directory.
            partial = self._incoming / f"{uuid.uuid4().hex}.part"
            write_durably(final, partial, lambda handle: handle.write(encoded))

        info = InstanceInfo(
            sop_instance_uid=sop_uid, sop_class_uid=sop_class,
            transfer_syntax_uid=transfer_syntax, path=str(final), size_bytes=len(encoded),
            study_instance_uid=_text(header.get("StudyInstanceUID")),
            series_instance_uid=_text(header.get("SeriesInstanceUID")),
            patient_id=_text(header.get("PatientID")),
            issuer_of_patient_id=_text(header.get("IssuerOfPatientID")),
            study_date=_text(header.get("StudyDate")), modality=_text(header.get("Modality")),
            calling_aet=event.assoc.requestor.ae_title,
            source_ip=event.assoc.requestor.address,
        )
        added = self.store.add_instance(info, skip_reason=reason)
        if added.duplicate:
            log_event(log, "stored_duplicate", **fields, job_id=added.job_id,
                      reason="SOP Instance UID already received; not analysed again")
            return STATUS_SUCCESS
        if reason is not None:
            log_event(log, "stored_skipped", **fields, job_id=added.job_id, reason=reason)
        else:
            log_event(log, "stored", **fields, job_id=added.job_id, bytes=len(encoded),
                      transfer_syntax=transfer_syntax)
        if self.audit is not None:
            self.audit.instances_transferred(
                received=True, peer_aet=event.assoc.requestor.ae_title,
                peer_address=event.assoc.requestor.address, study_uid=info.study_instance_uid,
                sop_class=sop_class, sop_uid=sop_uid, patient_id=info.patient_id)
        return STATUS_SUCCESS

    def _spool_path(self, sop_uid: str) -> Path:
        """<spool>/<last two digits>/<SOP Instance UID>.dcm; unsafe UIDs are replaced."""
        name = sop_uid
        if not _SAFE_UID.match(name):
            name = "x" + uuid.uuid5(uuid.NAMESPACE_OID, sop_uid).hex
        return self.spool / name[-2:].replace(".", "_") / f"{name}.dcm"
