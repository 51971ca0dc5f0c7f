"""Order intake: the MLLP listener's message handler (parse, store, ACK).

Every message gets an answer: AA once its orders are committed; AE with the reason for
a content error (e.g. no patient identifier, an invalid ICD-10-CM code) or when the
store cannot take it now (the sender's engine retries); AR for what is not an order we
take (unparseable, another message type or version). Messages not accepted are kept in
``hl7_inbound`` with their raw text for inspection. Logs carry identifiers only.
"""

from __future__ import annotations

import logging

from dxr_node.integration.config import HL7Config
from dxr_node.integration.hl7 import Inbound, OrderRejected, build_ack, parse_orders, read_header
from dxr_node.integration.mllp import MLLPListener
from dxr_node.node.database import DATABASE_ERRORS
from dxr_node.node.integration_store import IntegrationStore
from dxr_node.node.logs import log_event

log = logging.getLogger(__name__)


class OrderIntake:
    def __init__(self, config: HL7Config, store: IntegrationStore) -> None:
        self.config = config
        self.store = store

    def on_message(self, text: str, peer: str) -> str:
        # Segments end in CR; test tools and some engines send LF or CRLF: accept those.
        text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
        header = read_header(text)
        try:
            inbound = parse_orders(text)
        except OrderRejected as rejected:
            return self._reject(header, text, peer, rejected)
        except Exception as exc:  # a parser bug must not cost the connection
            log.exception("order parse error peer=%s", peer)
            return self._reject(header, text, peer, OrderRejected(
                "AE", "207", f"internal error: {type(exc).__name__}"))
        try:
            ids = self.store.record_orders(inbound.orders, inbound.control_id, peer)
        except KeyError as exc:  # cancel of an unknown order
            return self._reject(header, text, peer, OrderRejected("AE", "103", str(exc.args[0]),
                                                                  "ORC^1^2"))
        except DATABASE_ERRORS as exc:
            return self._reject(header, text, peer, OrderRejected(
                "AE", "207", f"cannot store the order now ({exc}); send it again"))
        for order, order_id in zip(inbound.orders, ids, strict=True):
            log_event(log, "order_received", control_id=inbound.control_id, order=order_id,
                      control=order.order_control, placer=order.placer_order_number,
                      accession=order.accession_number, peer=peer)
        return build_ack(inbound, "AA", self.config)

    def on_frame_error(self, reason: str, peer: str) -> str:
        """Bytes that are no MLLP frame (or too large): AR, kept, then the connection
        is closed."""
        self._keep(Inbound(), "", peer, "AR", reason)
        return build_ack(Inbound(), "AR", self.config, error_code="100", reason=reason)

    def _reject(self, header: Inbound, text: str, peer: str, rejected: OrderRejected) -> str:
        self._keep(header, text, peer, rejected.ack, rejected.reason)
        log_event(log, "order_rejected", logging.WARNING, control_id=header.control_id or None,
                  ack=rejected.ack, reason=rejected.reason, peer=peer)
        return build_ack(header, rejected.ack, self.config, error_code=rejected.code,
                         reason=rejected.reason, location=rejected.location)

    def _keep(self, header: Inbound, text: str, peer: str, ack: str, reason: str) -> None:
        try:
            self.store.record_rejected_message(
                peer=peer, control_id=header.control_id or None,
                message_type=f"{header.message_type}^{header.trigger}"
                if header.message_type else None,
                ack_code=ack, reason=reason, raw=text)
        except DATABASE_ERRORS as exc:
            log_event(log, "order_not_kept", logging.ERROR, reason=str(exc))


def start_listener(config: HL7Config, store: IntegrationStore) -> MLLPListener:
    """Bind and serve the order listener in a thread; returns it (``.address``)."""
    intake = OrderIntake(config, store)
    listener = MLLPListener(config.host, config.port, intake.on_message, intake.on_frame_error,
                            max_message_bytes=config.max_message_bytes,
                            idle_timeout_s=config.idle_timeout_s,
                            max_connections=config.max_connections)
    listener.start()
    return listener
