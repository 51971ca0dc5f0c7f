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
import threading
import time
from typing import Any

from dxr_node.node.logs import log_event

log = logging.getLogger("dxr_node.node.scp")

WATCH_INTERVAL_S = 0.25


class GuardedSocket(socket.socket):
    """An accepted connection whose reads are counted and which the guard can cut."""

    guard: ConnectionGuard
    peer: str
    opened: float
    last_progress: float  # last complete PDU (or the end of our own processing)
    established: bool
    busy: bool  # a handler of ours is running: the peer waits for us
    received: int
    received_at_mark: int  # ``received`` when the current DIMSE message began
    cut_reason: str | None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.cut_reason is not None:
            return b""
        data = super().recv(bufsize, flags)
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
        super().close()


class ConnectionGuard:
    """Watches the SCP's accepted connections; see the module docstring."""

    def __init__(self, *, acse_timeout_s: float, network_timeout_s: float, max_per_peer: int,
                 max_message_bytes: int) -> None:
        self.acse_timeout_s = acse_timeout_s
        self.network_timeout_s = network_timeout_s
        self.max_per_peer = max_per_peer
        self.max_message_bytes = max_message_bytes
        self._live: set[GuardedSocket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="scp-guard", daemon=True)

    # --- wiring into pynetdicom's AssociationServer ---------------------------------------

    def wrap(self, sock: socket.socket, address: Any) -> GuardedSocket:
        """Turn a freshly accepted socket into a GuardedSocket (not yet admitted)."""
        timeout = sock.gettimeout()
        guarded = GuardedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        guarded.settimeout(timeout)
        now = time.monotonic()
        guarded.guard, guarded.peer = self, str(address[0])
        guarded.opened = guarded.last_progress = now
        guarded.established = guarded.busy = False
        guarded.received = guarded.received_at_mark = 0
        guarded.cut_reason = None
        return guarded

    def admit(self, sock: socket.socket) -> bool:
        """Register a connection unless its source address already holds its share."""
        if not isinstance(sock, GuardedSocket):
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

    def forget(self, sock: GuardedSocket) -> None:
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
    def socket_of(assoc: Any) -> GuardedSocket | None:
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        return sock if isinstance(sock, GuardedSocket) else None

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

    def cut(self, sock: GuardedSocket, reason: str, status: str | None = None) -> None:
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
