"""Copy a node database into another (`dxr-node copy-db`): an embedded SQLite node
moving to PostgreSQL to become the first node of a cluster, or back.

Both are opened as ``Store``s, so both are at the current schema version; every table
is copied row by row with its ids (foreign keys keep pointing at the same rows), in an
order that inserts a referenced row before the rows that reference it, in one
transaction on the target. PostgreSQL's id sequences then continue after the copied
ids. The target must be empty.
"""

from __future__ import annotations

from dxr_node.node.database import SQLITE, StoreError
from dxr_node.node.store import Store

# Referenced tables first.
TABLES = ("instances", "jobs", "results", "objects", "dispatches", "users", "sessions",
          "reviews", "review_actions", "orders", "order_matches", "hl7_inbound",
          "outbound_messages", "nodes")


def copy_database(source: Store, target: Store) -> dict[str, int]:
    """Copy every row of ``source`` into the empty ``target``; rows per table."""
    if target.instance_count() or target._read("SELECT COUNT(*) FROM users")[0][0]:
        raise StoreError(f"{target.location} is not empty: copy into a new database")
    copied: dict[str, int] = {}
    with target._transaction() as db:
        for table in TABLES:
            rows = source._read(f"SELECT * FROM {table}")
            copied[table] = len(rows)
            if not rows:
                continue
            columns = list(rows[0].keys())
            insert = (f"INSERT INTO {table} ({', '.join(columns)})"
                      f" VALUES ({', '.join('?' * len(columns))})")
            for row in rows:
                db.execute(insert, tuple(row))
            if target.dialect is not SQLITE and "id" in columns:
                db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                           f" (SELECT MAX(id) FROM {table}))")
    return copied
