"""Structured logs for the node: one line per event, ``event=... key=value ...``.

Fields are identifiers only (association, calling AE, SOP Instance UID, job id, state):
never patient names or other demographics.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

# Control characters in a value (a UID with a newline from a hostile sender) would forge
# log lines or reach the log as raw bytes: they are written as escapes.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
MAX_VALUE_CHARS = 512  # a sender cannot flood the log through one field


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 or char in "\u2028\u2029":
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    return char


def _format_value(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + "..."
    if text == "" or any(c.isspace() or c in '"=\\' or not c.isprintable() for c in text):
        return '"' + "".join(_escape(c) for c in text) + '"'
    return text


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO,
              **fields: Any) -> None:
    """Log ``event=<event> k=v ...`` (None values are left out)."""
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={event}"]
    parts += [f"{k}={_format_value(v)}" for k, v in fields.items() if v is not None]
    logger.log(level, " ".join(parts))


def configure_logging(level: str = "INFO") -> None:
    """Timestamped lines on stderr; pynetdicom's chatty PDU logs kept at WARNING."""
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime  # UTC, as the Z says
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in ("pynetdicom", "highdicom"):  # per-PDU and per-module INFO lines
        logging.getLogger(chatty).setLevel(logging.WARNING)
