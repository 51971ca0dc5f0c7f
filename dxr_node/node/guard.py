"""Connection guard for the SCP: deadlines a slow sender cannot stretch, a per-peer
connection limit and a byte limit per DIMSE message.

pynetdicom's timeouts are idle timeouts: every byte restarts them, so a peer sending one
byte every few seconds holds an association slot for ever, and its reader blocks inside
one PDU where no timer is checked. The guard therefore works from outside the protocol
stack, on the accepted socket itself:

- an A-ASSOCIATE-RQ must be complete ``acse_timeout_s`` after the TCP connection opened;
- once established, some PDU must be complete every ``network_timeout_s`` (the node's
  own processing of a C-STORE does not count against the peer);
- a DIMSE message may not exceed ``max_message_bytes`` (counted as bytes arrive, so a
  lying PDU length cannot make the node buffer more);
- one source address may hold at most ``max_per_peer`` connections, so it cannot take
  every association slot.

A connection that breaks a rule is shut down (its blocked read returns at once), which
pynetdicom sees as the peer closing the connection.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from dxr_node.node.logs import log_event

log = logging.getLogger("dxr_node.node.scp")

WATCH_INTERVAL_S = 0.25


class _Guarded:
    """What the guard keeps on an accepted connection, plain or TLS."""

    guard: ConnectionGuard
    peer: str
    opened: float
    last_progress: float  # last complete PDU (or the end of our own processing)
    established: bool
    busy: bool  # a handler of ours is running: the peer waits for us
    received: int
    received_at_mark: int  # ``received`` when the current DIMSE message began
    cut_reason: str | None
    subject_checked: bool  # TLS: the client certificate was checked after the handshake
    fileno: Callable[[], int]  # from the socket class it is mixed into

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.cut_reason is not None:
            return b""
        if not self.subject_checked:
            self.subject_checked = True
            if not self.guard.secure(self):
                return b""
        data = super().recv(bufsize, flags)  # type: ignore[misc]
        self.received += len(data)
        if self.received - self.received_at_mark > self.guard.max_message_bytes:
            self.guard.cut(self, f"DIMSE message larger than the limit of "
                                 f"{self.guard.max_message_bytes // 2**20} MB", "0xA700")
            return b""
        return data

    def close(self) -> None:
        guard = getattr(self, "guard", None)
        if guard is not None:
            guard.forget(self)
        super().close()  # type: ignore[misc]


class GuardedSocket(_Guarded, socket.socket):
    """An accepted plain TCP connection."""


class GuardedSSLSocket(_Guarded, ssl.SSLSocket):  # type: ignore[misc]  # recv widened
    """An accepted DICOM TLS connection (made by the server context's wrap_socket)."""


class ConnectionGuard:
    """Watches the SCP's accepted connections; see the module docstring."""

    def __init__(self, *, acse_timeout_s: float, network_timeout_s: float, max_per_peer: int,
                 max_message_bytes: int, tls: ssl.SSLContext | None = None,
                 allowed_subjects: Sequence[str] = (),
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        self.tls = tls
        self.on_refused = on_refused  # (source address, reason): a TLS peer turned away
        self.allowed_subjects = list(allowed_subjects)
        self.acse_timeout_s = acse_timeout_s
        self.network_timeout_s = network_timeout_s
        self.max_per_peer = max_per_peer
        self.max_message_bytes = max_message_bytes
        self._live: set[_Guarded] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="scp-guard", daemon=True)

    # --- wiring into pynetdicom's AssociationServer ---------------------------------------

    def wrap(self, sock: socket.socket, address: Any) -> _Guarded:
        """Turn a freshly accepted socket into a guarded one (not yet admitted). With TLS
        the handshake is left to the first read, in the association's thread: a client
        that stalls it holds up only itself, and only until the ACSE deadline."""
        timeout = sock.gettimeout()
        guarded: Any
        if self.tls is not None:
            guarded = self.tls.wrap_socket(sock, server_side=True,
                                           do_handshake_on_connect=False)
        else:
            guarded = GuardedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        guarded.settimeout(timeout)
        now = time.monotonic()
        guarded.guard, guarded.peer = self, str(address[0])
        guarded.opened = guarded.last_progress = now
        guarded.established = guarded.busy = False
        guarded.received = guarded.received_at_mark = 0
        guarded.cut_reason = None
        guarded.subject_checked = self.tls is None
        return guarded

    def admit(self, sock: Any) -> bool:
        """Register a connection unless its source address already holds its share."""
        if not isinstance(sock, _Guarded):
            return True
        with self._lock:
            held = sum(1 for s in self._live if s.peer == sock.peer)
            if held >= self.max_per_peer:
                admitted = False
            else:
                self._live.add(sock)
                admitted = True
        if not admitted:
            log_event(log, "connection_refused", logging.WARNING, source_ip=sock.peer,
                      reason=f"this address already holds {held} connections "
                             f"(max_associations_per_peer)")
        return admitted

    def forget(self, sock: Any) -> None:
        with self._lock:
            self._live.discard(sock)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # --- progress, reported by the SCP's event handlers -----------------------------------

    @staticmethod
    def socket_of(assoc: Any) -> Any:
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        return sock if isinstance(sock, _Guarded) else None

    def pdu_received(self, assoc: Any) -> None:
        sock = self.socket_of(assoc)
        if sock is not None:
            sock.last_progress = time.monotonic()

    def established(self, assoc: Any) -> None:
        sock = self.socket_of(assoc)
        if sock is not None:
            sock.established = True
            sock.last_progress = time.monotonic()

    def handling(self, assoc: Any, busy: bool) -> None:
        """A DIMSE handler of ours starts (True) or ends (False, a new message begins)."""
        sock = self.socket_of(assoc)
        if sock is not None:
            sock.busy = busy
            if not busy:
                sock.received_at_mark = sock.received
                sock.last_progress = time.monotonic()

    # --- enforcement --------------------------------------------------------------------

    def secure(self, sock: Any) -> bool:
        """The TLS handshake (in the association's thread, under the ACSE deadline) and the
        client certificate's subject check; False (and the connection cut) on failure."""
        from dxr_node.node.tls import subject_allowed, subject_text

        try:
            sock.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self._refuse(sock, f"TLS handshake failed: {exc}")
            return False
        certificate = sock.getpeercert()
        if subject_allowed(certificate, self.allowed_subjects):
            log_event(log, "tls_established", source_ip=sock.peer, version=sock.version(),
                      subject=subject_text(certificate) or None)
            return True
        self._refuse(sock, f"client certificate subject {subject_text(certificate)!r} "
                           "not in tls.allowed_client_subjects")
        return False

    def _refuse(self, sock: Any, reason: str) -> None:
        self.cut(sock, reason)
        if self.on_refused is not None:
            self.on_refused(sock.peer, reason)

    def cut(self, sock: Any, reason: str, status: str | None = None) -> None:
        if sock.cut_reason is not None:
            return
        sock.cut_reason = reason
        log_event(log, "connection_cut", logging.WARNING, source_ip=sock.peer, reason=reason,
                  status=status)
        try:
            sock.shutdown(socket.SHUT_RDWR)  # a read blocked in another thread returns now
        except OSError:
            pass  # already closed by the peer

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                live = list(self._live)
            for sock in live:
                if sock.fileno() == -1:
                    self.forget(sock)
                elif not sock.established and now - sock.opened > self.acse_timeout_s:
                    self.cut(sock, f"association request not complete within "
                                   f"{self.acse_timeout_s:g} s of connecting")
                elif (sock.established and not sock.busy
                      and now - sock.last_progress > self.network_timeout_s):
                    self.cut(sock, f"no complete PDU within {self.network_timeout_s:g} s")
