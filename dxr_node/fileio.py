"""Crash-safe file writes: received images (SCP), produced objects (workers, `analyze --out`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_durably(final: Path, partial: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through ``partial``, fsync, rename to ``final`` and fsync its folder, so that
    after a crash or power cut ``final`` is either complete or absent."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)  # a half-written file on a full disk keeps it full
        raise
    fd = os.open(final.parent, os.O_RDONLY)  # the rename itself must reach the disk
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
