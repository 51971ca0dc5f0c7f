"""IHE ATNA audit trail: DICOM PS3.15 A.5 audit messages (XML) sent over syslog (RFC 5424,
octet-counted over TCP as RFC 6587/5425 frame it, TLS optional) and appended to a local
file, one message per line.

Messages are built and queued by the caller's thread and written by one background
thread, so auditing never delays a C-STORE; the queue is bounded (a dead syslog collector
costs memory only up to ``QUEUE_LIMIT`` messages; the local file is written first).
Patient IDs appear only where the message requires them (the patient participant of
"DICOM Instances Transferred").
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import queue
import socket
import ssl
import threading
from pathlib import Path
from xml.sax.saxutils import quoteattr

from dxr_node.node.config import NodeConfig
from dxr_node.node.logs import log_event

log = logging.getLogger("dxr_node.node.audit")

QUEUE_LIMIT = 10_000
SYSLOG_PRI = 10 * 8 + 5  # facility authpriv (10), severity notice (5), as ATNA asks
RECONNECT_S = 5.0

# (code, codeSystemName, displayName) per PS3.15 A.5 / PS3.16 CID 400-403.
APPLICATION_ACTIVITY = ("110100", "DCM", "Application Activity")
APPLICATION_START = ("110120", "DCM", "Application Start")
APPLICATION_STOP = ("110121", "DCM", "Application Stop")
INSTANCES_TRANSFERRED = ("110104", "DCM", "DICOM Instances Transferred")
SECURITY_ALERT = ("110113", "DCM", "Security Alert")
NODE_AUTHENTICATION = ("110126", "DCM", "Node Authentication")
APPLICATION_ROLE = ("110150", "DCM", "Application")
SOURCE_ROLE = ("110153", "DCM", "Source Role ID")
DESTINATION_ROLE = ("110152", "DCM", "Destination Role ID")
STUDY_UID_TYPE = ("110180", "DCM", "Study Instance UID")
PATIENT_NUMBER = ("2", "RFC-3881", "Patient Number")

SUCCESS, MINOR_FAILURE = 0, 4


def _code(tag: str, code: tuple[str, str, str]) -> str:
    value, system, name = code
    return (f"<{tag} csd-code={quoteattr(value)} codeSystemName={quoteattr(system)} "
            f"originalText={quoteattr(name)}/>")


def _event(event: tuple[str, str, str], action: str, outcome: int,
           event_type: tuple[str, str, str] | None = None) -> str:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    inner = _code("EventID", event) + (_code("EventTypeCode", event_type) if event_type else "")
    return (f"<EventIdentification EventActionCode={quoteattr(action)} "
            f"EventDateTime={quoteattr(now)} EventOutcomeIndicator=\"{outcome}\">"
            f"{inner}</EventIdentification>")


def _participant(user_id: str, *, requestor: bool, network: str | None = None,
                 role: tuple[str, str, str] | None = None, aet: str | None = None) -> str:
    alternative = f" AlternativeUserID={quoteattr('AETITLES=' + aet)}" if aet else ""
    access = (f" NetworkAccessPointID={quoteattr(network)} NetworkAccessPointTypeCode=\"2\""
              if network else "")
    inner = _code("RoleIDCode", role) if role else ""
    return (f"<ActiveParticipant UserID={quoteattr(user_id)}{alternative} "
            f"UserIsRequestor=\"{str(requestor).lower()}\"{access}>{inner}</ActiveParticipant>")


def _source(site: str, aet: str) -> str:
    return (f"<AuditSourceIdentification AuditEnterpriseSiteID={quoteattr(site)} "
            f"AuditSourceID={quoteattr(aet)}><AuditSourceTypeCode csd-code=\"4\" "
            f"codeSystemName=\"DCM\" originalText=\"Application Server Process\"/>"
            f"</AuditSourceIdentification>")


def _message(*parts: str) -> str:
    return "<?xml version=\"1.0\" encoding=\"UTF-8\"?><AuditMessage>" + "".join(parts) \
        + "</AuditMessage>"


def _object(object_id: str, type_code: int, role: int, id_type: tuple[str, str, str],
            inner: str = "") -> str:
    return (f"<ParticipantObjectIdentification ParticipantObjectID={quoteattr(object_id)} "
            f"ParticipantObjectTypeCode=\"{type_code}\" "
            f"ParticipantObjectTypeCodeRole=\"{role}\">"
            f"{_code('ParticipantObjectIDTypeCode', id_type)}{inner}"
            f"</ParticipantObjectIdentification>")


def open_audit_trail(config: NodeConfig) -> AuditTrail | None:
    """The node's audit trail as configured (None when disabled), started."""
    if not config.audit.enabled:
        return None
    tls = None
    if config.audit.syslog_host and config.audit.syslog_tls:
        from dxr_node.node.tls import client_context

        tls = client_context(config.tls)
    return AuditTrail(config.ae_title, file=config.audit_path,
                      syslog_host=config.audit.syslog_host, syslog_port=config.audit.syslog_port,
                      tls=tls).start()


class AuditTrail:
    """Builds the node's audit messages and hands them to the writer thread."""

    def __init__(self, ae_title: str, *, file: Path | None, syslog_host: str | None,
                 syslog_port: int, tls: ssl.SSLContext | None = None,
                 site: str = "dxr-node") -> None:
        self.ae_title = ae_title
        self.process = f"dxr-node[{os.getpid()}]"
        self.site = site
        self._file = file
        self._syslog = (syslog_host, syslog_port) if syslog_host else None
        self._tls = tls
        self._queue: queue.Queue[str | None] = queue.Queue(QUEUE_LIMIT)
        self._thread = threading.Thread(target=self._write, name="audit", daemon=True)
        self._socket: socket.socket | None = None
        self.dropped = 0

    # --- messages ----------------------------------------------------------------------

    def application(self, started: bool) -> None:
        self._put(_message(
            _event(APPLICATION_ACTIVITY, "E", SUCCESS,
                   APPLICATION_START if started else APPLICATION_STOP),
            _participant(self.process, requestor=False, role=APPLICATION_ROLE,
                         aet=self.ae_title),
            _source(self.site, self.ae_title)))

    def security_alert(self, source_ip: str, calling_aet: str | None, reason: str) -> None:
        """An unknown AE title or source address tried to associate (or a TLS peer failed)."""
        self._put(_message(
            _event(SECURITY_ALERT, "E", MINOR_FAILURE, NODE_AUTHENTICATION),
            _participant(calling_aet or source_ip, requestor=True, network=source_ip,
                         aet=calling_aet),
            _participant(self.process, requestor=False, aet=self.ae_title),
            _source(self.site, self.ae_title),
            _object(f"dicom://{source_ip}", 2, 13, ("12", "RFC-3881", "URI"),
                    f"<ParticipantObjectDetail type=\"Alert Description\" "
                    f"value={quoteattr(base64.b64encode(reason[:500].encode()).decode())}/>")))

    def instances_transferred(self, *, received: bool, peer_aet: str, peer_address: str,
                              study_uid: str | None, sop_class: str, sop_uid: str,
                              patient_id: str | None, outcome: int = SUCCESS) -> None:
        """One instance in (C-STORE received, action C) or out (a result sent, action R)."""
        ours = _participant(self.process, requestor=not received, aet=self.ae_title,
                            role=DESTINATION_ROLE if received else SOURCE_ROLE)
        theirs = _participant(peer_aet, requestor=received, network=peer_address,
                              aet=peer_aet, role=SOURCE_ROLE if received else DESTINATION_ROLE)
        study = _object(study_uid or "", 2, 3, STUDY_UID_TYPE,
                        f"<ParticipantObjectDescription><SOPClass UID={quoteattr(sop_class)} "
                        f"NumberOfInstances=\"1\"><Instance UID={quoteattr(sop_uid)}/>"
                        f"</SOPClass></ParticipantObjectDescription>")
        patient = _object(patient_id or "", 1, 1, PATIENT_NUMBER)  # required by 110104
        self._put(_message(_event(INSTANCES_TRANSFERRED, "C" if received else "R", outcome),
                           theirs, ours, _source(self.site, self.ae_title), study, patient))

    # --- writing -------------------------------------------------------------------------

    def start(self) -> AuditTrail:
        if self._file is not None:
            self._file.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (up to ``timeout_s``) and stop."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)

    def _put(self, message: str) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        while (message := self._queue.get()) is not None:
            if self._file is not None:
                try:
                    # Append-only, one line per message, private to the node's user.
                    fd = os.open(self._file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    with os.fdopen(fd, "ab") as handle:
                        handle.write(message.encode() + b"\n")
                except OSError as exc:
                    log_event(log, "audit_file_error", logging.ERROR, reason=str(exc))
            if self._syslog is not None:
                self._send(message)
        if self._socket is not None:
            self._socket.close()

    def _frame(self, message: str) -> bytes:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        header = (f"<{SYSLOG_PRI}>1 {now.replace('+00:00', 'Z')} {socket.gethostname()} "
                  f"dxr-node {os.getpid()} IHE+RFC-3881 - ")
        body = header.encode() + b"\xef\xbb\xbf" + message.encode()  # BOM: UTF-8 MSG
        return str(len(body)).encode() + b" " + body  # RFC 6587 octet counting

    def _send(self, message: str) -> None:
        assert self._syslog is not None  # only called with a syslog host configured
        last: Exception | None = None
        for _ in range(2):  # once more on a fresh connection if the old one broke
            try:
                if self._socket is None:
                    sock = socket.create_connection(self._syslog, timeout=RECONNECT_S)
                    if self._tls is not None:
                        sock = self._tls.wrap_socket(sock, server_hostname=self._syslog[0])
                    self._socket = sock
                self._socket.sendall(self._frame(message))
                return
            except (OSError, ssl.SSLError) as exc:
                if self._socket is not None:
                    self._socket.close()
                    self._socket = None
                last = exc
        log_event(log, "audit_syslog_error", logging.WARNING, reason=str(last),
                  note="message kept in the local audit file only")
