"""The id of a row just inserted, typed: sqlite3's ``Cursor.lastrowid`` is ``int | None``
(None only before any INSERT), so every store module narrows it the same way."""

from __future__ import annotations

import sqlite3


def inserted_id(cursor: sqlite3.Cursor) -> int:
    """``cursor.lastrowid`` after an INSERT on this cursor; never None then."""
    rowid = cursor.lastrowid
    if rowid is None:
        raise sqlite3.InterfaceError("no row was inserted by this statement")
    return rowid
