"""MLLP (HL7 v2 Minimal Lower Layer Protocol): <VT> message <FS><CR> over TCP.

The listener is hl7apy's ``MLLPServer`` (a threading TCP server) with our own request
handler, because hl7apy's reads byte by byte without any size bound and closes after one
message. Ours keeps the connection for many messages (as interface engines expect),
bounds each frame (``max_message_bytes``: a larger one is NAKed and the connection
closed), closes idle connections, caps concurrent connections and never lets an
exception escape to the server. The framing is a few bytes; parsing and building the
messages themselves is hl7apy's job (``dxr_node.integration.hl7``).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from socketserver import BaseRequestHandler

from hl7apy.mllp import MLLPServer

from dxr_node.node.logs import log_event

log = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"


class FrameError(Exception):
    """The peer sent something that is not an MLLP frame (or one too large)."""


def frame(message: str) -> bytes:
    return START + message.encode("utf-8") + END


def decode(payload: bytes) -> str:
    """HL7 text: UTF-8 (MSH-18 as we send it), else ISO 8859-1 so nothing is lost."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


class FrameReader:
    """Reads MLLP frames from a socket, at most ``limit`` bytes of payload each."""

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self.sock, self.limit, self.buffer = sock, limit, b""

    def read(self) -> bytes | None:
        """The next frame's payload; None when the peer closed between frames.
        Raises FrameError for bytes outside a frame or a frame over the limit, and
        socket.timeout / OSError as they come."""
        while True:
            if self.buffer:
                if not self.buffer.startswith(START):
                    # Tolerate line noise between frames (CR/LF), nothing else.
                    stripped = self.buffer.lstrip(b"\r\n")
                    if stripped and not stripped.startswith(START):
                        raise FrameError("data outside an MLLP frame (no <VT> start byte)")
                    self.buffer = stripped
                    continue
                end = self.buffer.find(END)
                if end >= 0:
                    payload, self.buffer = self.buffer[1:end], self.buffer[end + 2:]
                    if len(payload) > self.limit:
                        raise FrameError(f"message of {len(payload)} bytes exceeds the "
                                         f"limit of {self.limit}")
                    return payload
                if len(self.buffer) > self.limit + 3:
                    raise FrameError(f"message exceeds the limit of {self.limit} bytes")
            chunk = self.sock.recv(65536)
            if not chunk:
                if self.buffer.strip(b"\r\n"):
                    raise FrameError("connection closed inside a frame")
                return None
            self.buffer += chunk


# Answer one message: (payload text, peer "host:port") -> the reply text (an ACK).
MessageHandler = Callable[[str, str], str]
# Answer what could not be framed: (reason, peer) -> an AR ACK to send before closing.
FrameErrorHandler = Callable[[str, str], str | None]


class _Handler(BaseRequestHandler):
    server: MLLPListener

    def handle(self) -> None:
        server = self.server
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        if not server.slots.acquire(blocking=False):
            log_event(log, "mllp_refused", logging.WARNING, peer=peer,
                      reason=f"more than {server.max_connections} connections")
            return
        try:
            self.request.settimeout(server.idle_timeout_s)
            reader = FrameReader(self.request, server.max_message_bytes)
            while not server.stopping.is_set():
                try:
                    payload = reader.read()
                except FrameError as exc:
                    self._reject(str(exc), peer)
                    return
                except OSError:  # timeout (idle) or reset: just close
                    return
                if payload is None:
                    return
                try:
                    reply = server.on_message(decode(payload), peer)
                except Exception:  # never let one message take the connection's thread down
                    log.exception("mllp handler error peer=%s", peer)
                    return
                self.request.sendall(frame(reply))
        except OSError:
            return
        finally:
            server.slots.release()

    def _reject(self, reason: str, peer: str) -> None:
        log_event(log, "mllp_frame_rejected", logging.WARNING, peer=peer, reason=reason)
        try:
            reply = self.server.on_frame_error(reason, peer)
            if reply:
                self.request.sendall(frame(reply))
        except Exception:
            log.exception("mllp frame error handler failed peer=%s", peer)


class MLLPListener(MLLPServer):
    """hl7apy's threading MLLP server with the bounded, persistent handler above."""

    daemon_threads = True

    def __init__(self, host: str, port: int, on_message: MessageHandler,
                 on_frame_error: FrameErrorHandler, *, max_message_bytes: int,
                 idle_timeout_s: float, max_connections: int) -> None:
        self.on_message = on_message
        self.on_frame_error = on_frame_error
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        self.stopping = threading.Event()
        super().__init__(host, port, handlers={}, timeout=idle_timeout_s,
                         request_handler_class=_Handler)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.server_address[0], self.server_address[1]

    def start(self) -> tuple[str, int]:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mllp-listener", daemon=True)
        self._thread.start()
        return self.address

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class MLLPSendError(Exception):
    """No acknowledgement came back (refused, timed out, closed, garbled)."""


def send(host: str, port: int, message: str, *, timeout_s: float,
         max_reply_bytes: int = 1_048_576) -> str:
    """Send one message over a new connection and return the reply text (the ACK)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(frame(message))
            reply = FrameReader(sock, max_reply_bytes).read()
    except FrameError as exc:
        raise MLLPSendError(f"garbled reply from {host}:{port}: {exc}") from None
    except OSError as exc:
        raise MLLPSendError(f"{host}:{port}: {exc.strerror or exc}") from None
    if reply is None:
        raise MLLPSendError(f"{host}:{port} closed the connection without an ACK")
    return decode(reply)
