"""C-STORE SCU: deliver produced objects to PACS destinations, with a retry policy.

Every send ends in one of three outcomes, and nothing counts as sent unless the peer
acknowledged it with Success (0x0000) or a Warning (0xB000-0xBFFF):

- ``SENT``: acknowledged.
- ``RETRY``: transient - connection refused, timeout, abort, an empty status (pynetdicom
  returns an empty Dataset on timeout/abort), association rejected-transient, 0xA7xx
  (out of resources) or 0x0213 (resource limitation). Retried with exponential backoff
  and jitter (:func:`backoff_delay`, policy from the `dispatch` config table).
- ``FAILED``: permanent - association rejected-permanent (e.g. calling AE not known),
  no presentation context accepted for the object, 0xA9xx, 0xCxxx and any other refusal.
  Retrying would only repeat the same answer, so it fails at once with the reason.

Objects are sent from their files: the file's own SOP class and transfer syntax are
proposed, plus Explicit/Implicit VR Little Endian for uncompressed files so a peer that
only takes one of those still gets the object (pynetdicom converts between them).
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import build_context

from dxr_node.node.audit import AuditTrail
from dxr_node.node.config import DispatchPolicy, NodeConfig
from dxr_node.node.database import DATABASE_ERRORS
from dxr_node.node.logs import log_event
from dxr_node.node.store import Dispatch, Store
from dxr_node.node.tls import TlsConfigError, client_context

log = logging.getLogger(__name__)

# Stream files from disk instead of loading them (SCs are ~12 MB). A process-wide pydicom
# setting: set once here, not per send from the dispatcher threads.
_config.STORE_SEND_CHUNKED_DATASET = True

SENT = "sent"
RETRY = "retry"
FAILED = "failed"

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_CONTEXTS = 128  # DICOM limit on presentation contexts per association


class DestinationLike(Protocol):
    """What a configured destination must offer (config's model satisfies it)."""

    name: str
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class Delivery:
    """The outcome of sending one file to one destination."""

    path: Path
    sop_instance_uid: str | None
    outcome: str  # SENT | RETRY | FAILED
    status: int | None  # DIMSE status when the peer answered
    reason: str


def backoff_delay(policy: DispatchPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential from ``initial_backoff_s``, capped at ``max_backoff_s``, with "equal
    jitter": half the delay is fixed, half random, so items that failed together (a PACS
    outage) do not all come back in the same second.
    """
    ceiling = min(policy.max_backoff_s, policy.initial_backoff_s * 2 ** max(0, attempt - 1))
    return ceiling / 2 + (rng or random).uniform(0.0, ceiling / 2)


def classify_status(status: int | None) -> tuple[str, str]:
    """Map a C-STORE response status (None: no status came back) to (outcome, reason)."""
    if status is None:
        return RETRY, "no response status (timeout or association aborted)"
    if status == 0x0000:
        return SENT, "success"
    if 0xB000 <= status <= 0xBFFF:
        return SENT, f"warning 0x{status:04X}"
    if 0xA700 <= status <= 0xA7FF:
        return RETRY, f"refused: out of resources (0x{status:04X})"
    if status == 0x0213:
        return RETRY, "refused: resource limitation (0x0213)"
    if 0xA900 <= status <= 0xA9FF:
        return FAILED, f"error: data set does not match SOP class (0x{status:04X})"
    if 0xC000 <= status <= 0xCFFF:
        return FAILED, f"error: cannot understand (0x{status:04X})"
    return FAILED, f"failed with status 0x{status:04X}"


def send_files(
    destination: DestinationLike,
    paths: Sequence[str | Path],
    *,
    calling_aet: str,
    timeout_s: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> list[Delivery]:
    """Send DICOM files to one destination over one association (DICOM TLS with ``tls``);
    one Delivery per path.

    Never raises for network or peer trouble: every path gets an outcome.
    """
    files = [Path(p) for p in paths]
    if not files:
        return []
    headers: dict[Path, tuple[str, str, str]] = {}
    deliveries: dict[Path, Delivery] = {}
    for path in files:
        try:
            headers[path] = _read_header(path)
        except (OSError, ValueError, AttributeError, InvalidDicomError) as exc:
            deliveries[path] = Delivery(path, None, FAILED, None, f"unreadable object: {exc}")

    contexts = _contexts_for(headers.values())
    if len(contexts) > _MAX_CONTEXTS:
        # Too many distinct classes/syntaxes for one association: split the batch.
        half = len(files) // 2
        return send_files(destination, files[:half], calling_aet=calling_aet,
                          timeout_s=timeout_s, tls=tls) + send_files(
            destination, files[half:], calling_aet=calling_aet, timeout_s=timeout_s, tls=tls)

    if headers:
        deliveries.update(_send_over_association(destination, headers, contexts,
                                                 calling_aet, timeout_s, tls))
    return [deliveries[path] for path in files]


def _read_header(path: Path) -> tuple[str, str, str]:
    """(SOP Class UID, SOP Instance UID, Transfer Syntax UID) from the file meta."""
    meta = read_file_meta_info(path)
    missing = [kw for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                             "TransferSyntaxUID") if kw not in meta]
    if missing:
        raise ValueError(f"{path.name} has no {', '.join(missing)} in its file meta")
    return (str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID))


def _contexts_for(headers: Any) -> list:
    """One context per (class, own syntax), plus one offering conversion if uncompressed.

    The own syntax gets a context of its own: in a mixed context the SCP picks, and a
    JPEG file cannot be sent on an Explicit VR context.
    """
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for sop_class, _, syntax in headers:
        wanted[(sop_class, (syntax,))] = None
        if syntax in _UNCOMPRESSED:
            wanted[(sop_class, _UNCOMPRESSED)] = None
    return [build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in wanted]


def _send_over_association(
    destination: DestinationLike,
    headers: dict[Path, tuple[str, str, str]],
    contexts: list,
    calling_aet: str,
    timeout_s: float,
    tls: ssl.SSLContext | None = None,
) -> dict[Path, Delivery]:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.maximum_pdu_size = 0  # unlimited: faster for large objects
    ae.requested_contexts = contexts
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"

    def all_fail(outcome: str, reason: str) -> dict[Path, Delivery]:
        return {path: Delivery(path, header[1], outcome, None, reason)
                for path, header in headers.items()}

    # pynetdicom may see the peer's socket close before it reads the A-ASSOCIATE-RJ and
    # report a mere abort; catching the PDU as it arrives keeps a rejection a rejection.
    rejections: list[A_ASSOCIATE_RJ] = []

    def keep_rejection(event: Any) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejections.append(event.pdu)

    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                             evt_handlers=[(evt.EVT_PDU_RECV, keep_rejection)],
                             tls_args=(tls, destination.host) if tls is not None else None)
    except ValueError as exc:  # a malformed address: retrying cannot help
        return all_fail(FAILED, f"cannot associate with {where}: {exc}")
    except OSError as exc:  # e.g. the host name does not resolve (yet): a container restarting
        return all_fail(RETRY, f"cannot associate with {where}: {exc}")
    if not assoc.is_established:
        outcome, reason = _association_failure(assoc, rejections, where)
        return all_fail(outcome, reason)

    results: dict[Path, Delivery] = {}
    try:
        for path, (sop_class, sop_uid, syntax) in headers.items():
            if not assoc.is_established:
                results[path] = Delivery(path, sop_uid, RETRY, None,
                                         f"association with {where} lost before sending")
                continue
            results[path] = _send_one(assoc, path, sop_class, sop_uid, syntax, where)
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def _association_failure(assoc: Any, rejections: list[A_ASSOCIATE_RJ],
                         where: str) -> tuple[str, str]:
    if rejections:
        answer = rejections[0]
        detail = f"{answer.result_str}, {answer.source_str}: {answer.reason_str}"
        if answer.result == 0x01:
            return FAILED, f"association rejected by {where} ({detail})"
        return RETRY, f"association rejected by {where} ({detail})"
    if assoc.is_aborted and assoc.acceptor.primitive is not None:
        # Accepted, then aborted by us: the peer took none of the proposed contexts.
        return FAILED, f"{where} accepted no presentation context for these objects"
    return RETRY, f"cannot reach {where} (refused, timed out or aborted)"


def _send_one(assoc: Any, path: Path, sop_class: str, sop_uid: str, syntax: str,
              where: str) -> Delivery:
    accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]
    if not accepted:
        return Delivery(path, sop_uid, FAILED, None,
                        f"{where} accepted no presentation context for SOP class {sop_class} "
                        f"({UID(syntax).name})")
    try:
        if any(cx.transfer_syntax[0] == syntax for cx in accepted):
            # Stream the file as stored: no decode, no re-encode.
            status_ds = assoc.send_c_store(path)
        else:
            # Only a converted syntax was accepted: pynetdicom re-encodes the dataset.
            status_ds = assoc.send_c_store(dcmread(path))
    except RuntimeError as exc:  # the association dropped after the is_established check
        return Delivery(path, sop_uid, RETRY, None, f"association with {where} lost: {exc}")
    except (OSError, ValueError, AttributeError, InvalidDicomError) as exc:
        return Delivery(path, sop_uid, FAILED, None, f"cannot send {path.name}: {exc}")
    status = int(status_ds.Status) if "Status" in status_ds else None
    outcome, reason = classify_status(status)
    return Delivery(path, sop_uid, outcome, status, reason)


# --- the dispatcher: store rows -> deliveries -> store rows ---------------------------

POLL_INTERVAL_S = 0.25  # workers live in other processes: poll the store for new rows
BATCH_SIZE = 64  # dispatches claimed per round, sent over one association


def run_dispatcher(config: NodeConfig, store: Store, stop_event: threading.Event,
                   audit: AuditTrail | None = None) -> None:
    """Deliver due dispatches until ``stop_event`` is set; run it in a thread.

    Each destination gets its own thread, so a PACS that hangs until the timeout never
    delays the others. A round in progress is finished before stopping (bounded by the
    dispatch timeout), so a graceful stop leaves no row in ``sending``.
    """
    threads = [threading.Thread(target=_serve_destination, name=f"dispatch-{d.name}",
                                args=(config, store, d, stop_event, audit), daemon=True)
               for d in config.destinations]
    for thread in threads:
        thread.start()
    while not stop_event.wait(POLL_INTERVAL_S):
        _guarded(fail_unconfigured, config, store)
    for thread in threads:
        thread.join()


def _serve_destination(config: NodeConfig, store: Store, destination: DestinationLike,
                       stop_event: threading.Event, audit: AuditTrail | None = None) -> None:
    while not stop_event.is_set():
        if not _guarded(deliver_due, config, store, destination, audit):
            stop_event.wait(POLL_INTERVAL_S)


def _guarded(step: Any, *args: Any) -> int:
    """Run one dispatcher step; a store error (e.g. locked past its timeout) is logged
    and the step simply runs again on the next poll."""
    try:
        return step(*args)
    except DATABASE_ERRORS as exc:
        log_event(log, "dispatch_store_error", logging.ERROR, reason=str(exc))
        return 0


def deliver_due(config: NodeConfig, store: Store, destination: DestinationLike,
                audit: AuditTrail | None = None) -> int:
    """Claim the due dispatches of one destination (up to BATCH_SIZE), send them over
    one association and record each outcome. Returns how many were handled."""
    batch = store.claim_dispatches(destination.name, BATCH_SIZE,
                                   node=config.cluster.node_name,
                                   lease_s=config.cluster.lease_s)
    if not batch:
        return 0
    try:
        if getattr(destination, "kind", "dicom") == "stow":  # DICOMweb STOW-RS
            from dxr_node.integration.stow import send_files as stow_files

            deliveries = stow_files(destination, [item.path for item in batch],
                                    timeout_s=config.dispatch.timeout_s)
        else:
            tls = client_context(config.tls) if getattr(destination, "tls", False) else None
            deliveries = send_files(destination, [item.path for item in batch],
                                    calling_aet=config.ae_title,
                                    timeout_s=config.dispatch.timeout_s, tls=tls)
    except TlsConfigError as exc:  # unreadable certificate files: fixable, so retried
        deliveries = [Delivery(Path(item.path), item.sop_instance_uid, RETRY, None, str(exc))
                      for item in batch]
    except Exception as exc:  # a bug here must not leave rows stuck in 'sending'
        log.exception("dispatch error")
        deliveries = [Delivery(Path(item.path), item.sop_instance_uid, RETRY, None,
                               f"internal error: {type(exc).__name__}: {exc}")
                      for item in batch]
    for item, delivery in zip(batch, deliveries, strict=True):
        _record(store, config.dispatch, item, delivery)
        if audit is not None and delivery.outcome == SENT:
            _audit_sent(audit, destination, item)
    return len(batch)


def _audit_sent(audit: AuditTrail, destination: DestinationLike, item: Dispatch) -> None:
    """A result issued: "DICOM Instances Transferred" with the study and patient it is of."""
    try:
        header = dcmread(item.path, stop_before_pixels=True,
                         specific_tags=["StudyInstanceUID", "PatientID"])
    except (OSError, InvalidDicomError):
        header = None
    audit.instances_transferred(
        received=False, peer_aet=destination.ae_title, peer_address=destination.host,
        study_uid=str(getattr(header, "StudyInstanceUID", "") or "") or None,
        sop_class=item.sop_class_uid, sop_uid=item.sop_instance_uid,
        patient_id=str(getattr(header, "PatientID", "") or "") or None)


def fail_unconfigured(config: NodeConfig, store: Store) -> int:
    """Fail pending dispatches whose destination was removed from the configuration."""
    handled = 0
    for name in store.pending_destinations():
        if config.destination(name) is None:
            for item in store.claim_dispatches(name, BATCH_SIZE):
                store.dispatch_failed(item.id, f"destination {name!r} is not configured")
                handled += 1
    return handled


def _record(store: Store, policy: DispatchPolicy, item: Dispatch, delivery: Delivery) -> None:
    fields: dict[str, Any] = {"dispatch": item.id, "sop": item.sop_instance_uid, "kind": item.kind,
              "destination": item.destination, "attempt": item.attempts}
    if delivery.outcome == SENT:
        store.dispatch_sent(item.id, delivery.status or 0)
        log_event(log, "dispatch_sent", status=f"0x{delivery.status or 0:04X}", **fields)
    elif delivery.outcome == RETRY and item.attempts < policy.max_attempts:
        delay = backoff_delay(policy, item.attempts)
        store.dispatch_retry_later(item.id, delivery.reason, time.time() + delay,
                                   delivery.status)
        log_event(log, "dispatch_retry", logging.WARNING, in_s=round(delay, 1),
                  reason=delivery.reason, **fields)
    else:
        reason = delivery.reason
        if delivery.outcome == RETRY:
            reason = f"gave up after {item.attempts} attempts: {reason}"
        store.dispatch_failed(item.id, reason, delivery.status)
        log_event(log, "dispatch_failed", logging.ERROR, reason=reason, **fields)
