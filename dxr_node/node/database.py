"""The node database connection: opening, transactions, the schema version, and the few
SQL differences between the engines behind it (the dialect).

Every store module (job queue, dispatch queue, history, retention, console queries,
review, integration) writes its SQL once, with ``?`` placeholders, against the
``Connection`` protocol here; a ``Dialect`` supplies what differs between engines.
Schema changes go only through ``dxr_node.node.schema.MIGRATIONS``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol


class StoreError(Exception):
    """The database cannot be opened or has an unknown schema."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What store code runs SQL on inside a transaction (sqlite3's connection, or the
    PostgreSQL adapter). Rows read by name (``row["id"]``) or position (``row[0]``)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


class Dialect:
    """SQLite, the embedded default; ``PostgresDialect`` overrides what differs."""

    name = "sqlite"
    # Appended to the sub-select that picks rows to claim: SQLite's BEGIN IMMEDIATE
    # already serialises writers, PostgreSQL skips rows another transaction holds.
    skip_locked = ""
    # Errors that mean "the database cannot be written now" (disk full, locked).
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def ddl(self, sql: str) -> str:
        """A CREATE/ALTER statement written for SQLite, in this engine's terms."""
        return sql

    def json_get(self, column: str, key: str) -> str:
        """SQL for member ``key`` of the JSON text in ``column``: a number or string as
        itself, an array or object as JSON text (SQLite) or decoded (PostgreSQL)."""
        return f"json_extract({column}, '$.{key}')"


SQLITE = Dialect()

class Database:
    """One connection (SQLite file, or PostgreSQL for a cluster) shared by a process's
    threads: calls are serialised by a lock, and every public method of a store module
    is one transaction.

    ``read_only=True`` opens an existing SQLite database as it is (e.g. `analyze
    --history`): nothing is created, migrated or switched to WAL, and a database of
    another schema version is refused.
    """

    dialect: Dialect = SQLITE

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0,
                 read_only: bool = False) -> None:
        self.path = Path(path)
        try:
            if read_only:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                           timeout=timeout_s, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Autocommit mode: every public method opens its own explicit transaction.
                self._db = sqlite3.connect(
                    self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
                )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        try:
            if read_only:
                self._check_version()
                return
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the SCP answers Success (power-cut safe).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{self.path} is not a usable dxr-node database: {exc}") from None
        except StoreError:
            self._db.close()
            raise

    # --- schema version --------------------------------------------------------------

    def _version(self, db: Connection) -> int:
        return int(db.execute("PRAGMA user_version").fetchone()[0])

    def _set_version(self, db: Connection, version: int) -> None:
        db.execute(f"PRAGMA user_version={int(version)}")

    def _check_version(self) -> None:
        from dxr_node.node.schema import SCHEMA_VERSION

        version = self._version(self._db)
        if version == 0:
            raise StoreError(f"{self.path} is not a dxr-node database (no schema version)")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this dxr-node reads version "
                f"{SCHEMA_VERSION} (a node of this version upgrades it when it opens it)")

    def _migrate(self) -> None:
        from dxr_node.node.schema import MIGRATIONS, SCHEMA_VERSION

        version = self._version(self._db)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this dxr-node knows "
                f"{SCHEMA_VERSION} (upgrade dxr-node)"
            )
        if version == SCHEMA_VERSION:
            return
        with self._transaction() as db:
            # Read again under the write lock: another process may have just migrated.
            version = self._version(db)
            for step in MIGRATIONS:
                if step.version > version:
                    step.apply(db, self.dialect)
            self._set_version(db, SCHEMA_VERSION)

    # --- connection ------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full): else the connection stays inside
                # the transaction and every later BEGIN fails. SQLite may have rolled back.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def is_writable(self) -> bool:
        """Whether a write transaction can start now (for the console's /healthz)."""
        try:
            with self._transaction():
                pass
        except self.dialect.errors:
            return False
        return True


def inserted_id(cursor: Cursor) -> int:
    """The id of the row an ``INSERT ... RETURNING id`` just made."""
    rows = cursor.fetchall()
    if not rows:
        raise StoreError("no row was inserted by this statement")
    return int(rows[0][0])
