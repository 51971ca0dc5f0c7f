"""A real HL7 v2 receiver for the tests: hl7apy's MLLP server on a free loopback port,
recording each message and answering AA (or a scripted code first)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message


@dataclass
class Received:
    messages: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # scripted MSA-1 codes, used first
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of_type(self, kind: str) -> list[str]:
        with self.lock:
            return [m for m in self.messages if f"|{kind}^" in m.split("\r", 1)[0]]


def _ack(incoming: str, code: str) -> str:
    parsed = parse_message(incoming, find_groups=False,
                           validation_level=VALIDATION_LEVEL.TOLERANT)
    ack = Message("ACK", version="2.5.1")
    ack.msh.msh_3 = "ENGINE"
    ack.msh.msh_9 = "ACK"
    ack.msh.msh_10 = "A" + parsed.msh.msh_10.to_er7()[:18]
    ack.msh.msh_11 = "P"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = parsed.msh.msh_10.to_er7()
    return ack.to_mllp()


def _handler(received: Received) -> type[AbstractHandler]:
    class Record(AbstractHandler):
        def reply(self) -> str:
            with received.lock:
                code = received.answers.pop(0) if received.answers else "AA"
                if code == "AA":
                    received.messages.append(self.incoming_message)
            return _ack(self.incoming_message, code)

    return Record


@contextmanager
def hl7_receiver(port: int, received: Received | None = None) -> Iterator[Received]:
    """Serve ORU^R01 and DFT^P03 on ``port`` until the block ends."""
    received = received or Received()
    handler = _handler(received)
    server = MLLPServer("127.0.0.1", port, {"ORU^R01^ORU_R01": (handler,),
                                            "DFT^P03^DFT_P03": (handler,)}, timeout=10)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
