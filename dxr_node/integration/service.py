"""Wiring of the hospital interfaces into `dxr-node serve` (``dxr_node.node.service``)."""

from __future__ import annotations

import logging
import threading

from dxr_node.integration.mllp import MLLPListener
from dxr_node.integration.outbound import enabled, run_message_dispatcher
from dxr_node.node.config import NodeConfig
from dxr_node.node.integration_store import IntegrationStore
from dxr_node.node.logs import log_event
from dxr_node.node.store import Store

log = logging.getLogger(__name__)


class Integration:
    """The order listener and the message dispatcher; nothing when all is off."""

    def __init__(self, config: NodeConfig, store: Store, stop_event: threading.Event) -> None:
        self.config = config
        self.store = store
        self.stop_event = stop_event
        self.listener: MLLPListener | None = None
        self._dispatcher: threading.Thread | None = None

    def start(self) -> Integration:
        """Dispatcher first, then the listener (raises OSError if it cannot bind)."""
        if not enabled(self.config):
            return self
        istore = IntegrationStore(self.store)
        recovered = istore.recover_sending()
        if recovered:
            log_event(log, "recovered", rows=recovered,
                      reason="messages left sending by a previous node are pending again")
        if self.config.hl7.outbound_enabled or self.config.fhir.enabled:
            self._dispatcher = threading.Thread(
                target=run_message_dispatcher, args=(self.config, self.store, self.stop_event),
                name="message-dispatcher", daemon=True)
            self._dispatcher.start()
        if self.config.hl7.enabled:
            from dxr_node.integration.intake import start_listener

            self.listener = start_listener(self.config.hl7, istore)
            host, port = self.listener.address
            log_event(log, "hl7_listening", host=host, port=port)
        return self

    def stop_listener(self) -> None:
        if self.listener is not None:
            self.listener.stop()

    def join(self, timeout: float) -> None:
        """After ``stop_event``: wait for the dispatcher's round in progress."""
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
