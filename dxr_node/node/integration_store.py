"""Tables and queries of the hospital interfaces (schema version 4).

- ``orders``: orders received over HL7 v2 (ORM^O01 / OMI^O23), one row per placer order
  number (and its assigning authority); status ``matched`` once an image was matched.
  Patient names are not stored; birth date and sex are kept to complete image headers.
- ``order_matches``: which order each analysed image was matched to (an order may have
  several images, e.g. both hands; an image has at most one order).
- ``hl7_inbound``: one row per inbound message and its ACK code; the raw text is kept
  only for messages we did not accept (AE/AR), for inspection.
- ``outbound_messages``: results and charges (ORU^R01, DFT^P03, FHIR bundles) queued in
  the same transaction as the result, then delivered like the DICOM ``dispatches``
  (``pending`` -> ``sending`` -> ``sent`` | ``failed``, retried with backoff). Unique per
  (job, kind, result status): a final result is never queued, hence sent, twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dxr_node.node.database import Connection, inserted_id
from dxr_node.node.store import Store

# Schema step 4 (dxr_node.node.schema).
SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS orders (
    id                   INTEGER PRIMARY KEY,
    placer_order_number  TEXT NOT NULL,
    placer_authority     TEXT NOT NULL DEFAULT '',
    filler_order_number  TEXT,
    accession_number     TEXT,
    patient_id           TEXT,
    issuer_of_patient_id TEXT,
    other_patient_ids    TEXT NOT NULL DEFAULT '[]',
    birth_date           TEXT,
    sex                  TEXT,
    ordering_provider    TEXT NOT NULL DEFAULT '{}',
    procedure_code       TEXT,
    reason               TEXT,
    diagnoses            TEXT NOT NULL DEFAULT '[]',
    priority             TEXT,
    requested_date       TEXT,
    status               TEXT NOT NULL CHECK (status IN ('open','matched','cancelled')),
    message_control_id   TEXT,
    received_at          REAL NOT NULL,
    updated_at           REAL NOT NULL,
    UNIQUE (placer_order_number, placer_authority)
);
CREATE INDEX IF NOT EXISTS orders_accession ON orders (accession_number);
CREATE INDEX IF NOT EXISTS orders_patient ON orders (patient_id, issuer_of_patient_id);

CREATE TABLE IF NOT EXISTS order_matches (
    job_id     INTEGER PRIMARY KEY REFERENCES jobs (id),
    order_id   INTEGER NOT NULL REFERENCES orders (id),
    matched_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS order_matches_order ON order_matches (order_id);

CREATE TABLE IF NOT EXISTS hl7_inbound (
    id              INTEGER PRIMARY KEY,
    received_at     REAL NOT NULL,
    peer            TEXT,
    control_id      TEXT,
    message_type    TEXT,
    ack_code        TEXT NOT NULL,
    reason          TEXT,
    raw             TEXT
);

CREATE TABLE IF NOT EXISTS outbound_messages (
    id              INTEGER PRIMARY KEY,
    job_id          INTEGER NOT NULL REFERENCES jobs (id),
    kind            TEXT NOT NULL CHECK (kind IN ('ORU','DFT','FHIR')),
    result_status   TEXT NOT NULL,
    destination     TEXT NOT NULL,
    control_id      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending','sending','sent','failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status     TEXT,
    error           TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    sent_at         REAL,
    UNIQUE (job_id, kind, result_status)
);
CREATE INDEX IF NOT EXISTS outbound_state ON outbound_messages (state, next_attempt_at);
"""


RAW_KEPT_CHARS = 65536


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class Order:
    """One order as received (the columns of ``orders``)."""

    placer_order_number: str
    placer_authority: str = ""
    filler_order_number: str | None = None
    accession_number: str | None = None
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    other_patient_ids: tuple[tuple[str, str], ...] = ()  # (id, assigning authority)
    birth_date: str | None = None  # YYYYMMDD
    sex: str | None = None
    ordering_provider: dict[str, str] | None = None  # id, family, given, id_type
    procedure_code: str | None = None
    reason: str | None = None
    diagnoses: tuple[tuple[str, str, str], ...] = ()  # (code, meaning, system) ICD-10-CM
    priority: str | None = None  # S stat, A asap, R routine
    requested_date: str | None = None  # YYYYMMDD
    order_control: str = "NW"  # NW new, XO change, CA/DC cancel
    id: int | None = None
    status: str = "open"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "placer_order_number": self.placer_order_number,
            "placer_authority": self.placer_authority,
            "filler_order_number": self.filler_order_number,
            "accession_number": self.accession_number, "patient_id": self.patient_id,
            "issuer_of_patient_id": self.issuer_of_patient_id,
            "ordering_provider": self.ordering_provider or {},
            "procedure_code": self.procedure_code, "reason": self.reason,
            "diagnoses": [list(d) for d in self.diagnoses], "priority": self.priority,
            "requested_date": self.requested_date, "status": self.status,
        }


def _decoded(value: Any) -> Any:
    """A JSON value read back: text on SQLite, already decoded on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


def _order_from_row(row: sqlite3.Row) -> Order:
    return Order(
        id=row["id"], placer_order_number=row["placer_order_number"],
        placer_authority=row["placer_authority"],
        filler_order_number=row["filler_order_number"],
        accession_number=row["accession_number"], patient_id=row["patient_id"],
        issuer_of_patient_id=row["issuer_of_patient_id"],
        other_patient_ids=tuple(tuple(x) for x in json.loads(row["other_patient_ids"])),
        birth_date=row["birth_date"], sex=row["sex"],
        ordering_provider=json.loads(row["ordering_provider"]) or None,
        procedure_code=row["procedure_code"], reason=row["reason"],
        diagnoses=tuple(tuple(d) for d in json.loads(row["diagnoses"])),
        priority=row["priority"], requested_date=row["requested_date"],
        status=row["status"],
    )


@dataclass(frozen=True)
class OutboundMessage:
    """A message to queue with a result (built before the transaction)."""

    kind: str  # ORU | DFT | FHIR
    result_status: str  # F final, C corrected, P preliminary
    destination: str
    control_id: str
    payload: str


@dataclass(frozen=True)
class ClaimedMessage:
    id: int
    job_id: int
    kind: str
    destination: str
    control_id: str
    payload: str
    attempts: int


class IntegrationStore:
    """Queries on the interface tables, through a node ``Store`` (its lock and its
    one-transaction-per-call rule)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- orders ----------------------------------------------------------------------

    def record_orders(self, orders: Sequence[Order], control_id: str, peer: str) -> list[int]:
        """Record every order of one message in one transaction (all or none): insert a
        new order, update a changed one, cancel one (by placer number). Returns the
        orders' row ids. Raises KeyError for a cancel of an unknown order."""
        with self.store._transaction() as db:
            return [self._record(db, order, control_id, peer) for order in orders]

    def record_order(self, order: Order, control_id: str, peer: str) -> int:
        return self.record_orders([order], control_id, peer)[0]

    @staticmethod
    def _record(db: Connection, order: Order, control_id: str, peer: str) -> int:
        now = _now()
        if order.order_control in ("CA", "DC", "OC"):
            row = db.execute(
                "UPDATE orders SET status = 'cancelled', updated_at = ?,"
                " message_control_id = ? WHERE placer_order_number = ?"
                " AND placer_authority = ? RETURNING id",
                (now, control_id, order.placer_order_number, order.placer_authority),
            ).fetchone()
            if row is None:
                raise KeyError(f"no order {order.placer_order_number} to cancel")
            order_id = row[0]
        else:
            values = (
                order.filler_order_number, order.accession_number, order.patient_id,
                order.issuer_of_patient_id, json.dumps(order.other_patient_ids),
                order.birth_date, order.sex, json.dumps(order.ordering_provider or {}),
                order.procedure_code, order.reason, json.dumps(order.diagnoses),
                order.priority, order.requested_date, control_id, now,
            )
            order_id = db.execute(
                "INSERT INTO orders (filler_order_number, accession_number, patient_id,"
                " issuer_of_patient_id, other_patient_ids, birth_date, sex,"
                " ordering_provider, procedure_code, reason, diagnoses, priority,"
                " requested_date, message_control_id, updated_at, placer_order_number,"
                " placer_authority, status, received_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'open',?)"
                " ON CONFLICT (placer_order_number, placer_authority) DO UPDATE SET"
                " filler_order_number = excluded.filler_order_number,"
                " accession_number = excluded.accession_number,"
                " patient_id = excluded.patient_id,"
                " issuer_of_patient_id = excluded.issuer_of_patient_id,"
                " other_patient_ids = excluded.other_patient_ids,"
                " birth_date = excluded.birth_date, sex = excluded.sex,"
                " ordering_provider = excluded.ordering_provider,"
                " procedure_code = excluded.procedure_code, reason = excluded.reason,"
                " diagnoses = excluded.diagnoses, priority = excluded.priority,"
                " requested_date = excluded.requested_date,"
                " message_control_id = excluded.message_control_id,"
                " updated_at = excluded.updated_at,"
                " status = CASE WHEN orders.status = 'cancelled' THEN 'open'"
                "   ELSE orders.status END RETURNING id",
                (*values, order.placer_order_number, order.placer_authority, now),
            ).fetchone()[0]
        db.execute(
            "INSERT INTO hl7_inbound (received_at, peer, control_id, message_type,"
            " ack_code, reason) VALUES (?,?,?,?, 'AA', ?)",
            (now, peer, control_id, f"order {order.order_control}",
             f"order {order_id}"),
        )
        return order_id

    def record_rejected_message(self, *, peer: str, control_id: str | None,
                                message_type: str | None, ack_code: str, reason: str,
                                raw: str) -> int:
        """Keep a message we did not accept (AE/AR) with the reason, for inspection (the
        first RAW_KEPT_CHARS of it: a flood of garbage cannot fill the disk as fast)."""
        if len(raw) > RAW_KEPT_CHARS:
            raw = raw[:RAW_KEPT_CHARS] + f"\n[... {len(raw) - RAW_KEPT_CHARS} more characters]"
        with self.store._transaction() as db:
            return inserted_id(db.execute(
                "INSERT INTO hl7_inbound (received_at, peer, control_id, message_type,"
                " ack_code, reason, raw) VALUES (?,?,?,?,?,?,?) RETURNING id",
                (_now(), peer, control_id, message_type, ack_code, reason, raw),
            ))

    def find_order(self, *, accession_number: str | None, patient_id: str | None,
                   issuer: str | None, study_date: str | None,
                   window_days: int = 0) -> Order | None:
        """The open (or already this image's) order for an image: by accession number,
        else the newest open order of the same patient requested within ``window_days``
        of the study date (an order without a date matches any)."""
        if accession_number:
            rows = self.store._read(
                "SELECT * FROM orders WHERE accession_number = ? AND status != 'cancelled'"
                " ORDER BY status = 'open' DESC, id DESC LIMIT 1", (accession_number,))
            if rows:
                return _order_from_row(rows[0])
        if not patient_id:
            return None
        rows = self.store._read(
            "SELECT * FROM orders WHERE patient_id = ?"
            " AND issuer_of_patient_id IS NOT DISTINCT FROM ? AND status = 'open'"
            " ORDER BY id DESC", (patient_id, issuer or None))
        for row in rows:
            if _within(row["requested_date"], study_date, window_days):
                return _order_from_row(row)
        return None

    def order_for_job(self, job_id: int) -> Order | None:
        """The order an analysed image was matched to (``order_matches``)."""
        rows = self.store._read("SELECT o.* FROM order_matches m JOIN orders o"
                                " ON o.id = m.order_id WHERE m.job_id = ?", (job_id,))
        return _order_from_row(rows[0]) if rows else None

    def orders(self, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = self.store._read(
            f"SELECT *, (SELECT {self.store.dialect.json_array_agg('m.job_id')}"
            " FROM order_matches m"
            f" WHERE m.order_id = orders.id) AS job_ids FROM orders {where}"
            " ORDER BY id DESC LIMIT ?", [*params, limit])
        return [_order_from_row(r).to_dict() | {"received_at": r["received_at"],
                                                "job_ids": _decoded(r["job_ids"])}
                for r in rows]

    def images_without_order(self, limit: int = 100) -> list[dict[str, Any]]:
        """Analysed or waiting images that no order was matched to."""
        return [dict(r) for r in self.store._read(
            "SELECT j.id AS job_id, i.sop_instance_uid, i.patient_id, i.study_date,"
            " i.received_at, j.state FROM jobs j JOIN instances i ON i.id = j.instance_id"
            " WHERE NOT EXISTS (SELECT 1 FROM order_matches m WHERE m.job_id = j.id)"
            " AND j.state != 'skipped' ORDER BY j.id DESC LIMIT ?", (limit,))]

    def inbound(self, limit: int = 100) -> list[dict[str, Any]]:
        return [dict(r) for r in self.store._read(
            "SELECT id, received_at, peer, control_id, message_type, ack_code, reason,"
            " raw IS NOT NULL AS kept FROM hl7_inbound ORDER BY id DESC LIMIT ?", (limit,))]

    # --- outbound (queued by the worker with the result) -----------------------------

    @staticmethod
    def queue_in(db: Connection, job_id: int, messages: Sequence[OutboundMessage],
                 order_id: int | None) -> None:
        """Inside ``Store.finish_job``'s transaction: link the matched order and queue the
        messages (a message already queued for this job, kind and status is kept)."""
        now = _now()
        if order_id is not None:
            db.execute("INSERT INTO order_matches (job_id, order_id, matched_at) VALUES (?,?,?)"
                       " ON CONFLICT (job_id) DO UPDATE SET order_id = excluded.order_id,"
                       " matched_at = excluded.matched_at", (job_id, order_id, now))
            db.execute("UPDATE orders SET status = 'matched', updated_at = ?"
                       " WHERE id = ? AND status = 'open'", (now, order_id))
        for m in messages:
            db.execute(
                "INSERT INTO outbound_messages (job_id, kind, result_status,"
                " destination, control_id, payload, state, next_attempt_at, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?, 'pending', ?,?,?)"
                " ON CONFLICT DO NOTHING",
                (job_id, m.kind, m.result_status, m.destination, m.control_id, m.payload,
                 now, now, now),
            )

    @staticmethod
    def drop_unsent(db: Connection, job_id: int, statuses: Sequence[str]) -> int:
        """Inside a transaction: forget messages of these result statuses of a job that
        were not sent (pending or failed; one in flight is left to finish): a final
        supersedes a preliminary that has not gone out yet."""
        marks = ",".join("?" * len(statuses))
        return db.execute(f"DELETE FROM outbound_messages WHERE job_id = ?"
                          f" AND result_status IN ({marks}) AND state IN ('pending','failed')",
                          (job_id, *statuses)).rowcount

    def queue(self, job_id: int, messages: Sequence[OutboundMessage]) -> None:
        """Queue messages of an existing result in a transaction of their own (e.g. a
        reader's approval: its F result and the charge)."""
        with self.store._transaction() as db:
            self.queue_in(db, job_id, messages, None)

    def claim(self, destination: str, limit: int) -> list[ClaimedMessage]:
        """Due messages, in order per result: a message waits while an earlier one of the
        same job and kind is not sent (a C never overtakes its F, e.g. in backoff)."""
        now = _now()
        with self.store._transaction() as db:
            rows = db.execute(
                "UPDATE outbound_messages SET state = 'sending', attempts = attempts + 1,"
                " updated_at = ? WHERE id IN (SELECT m.id FROM outbound_messages m"
                "  WHERE m.state = 'pending' AND m.destination = ? AND m.next_attempt_at <= ?"
                "  AND NOT EXISTS (SELECT 1 FROM outbound_messages e WHERE e.job_id = m.job_id"
                "   AND e.kind = m.kind AND e.id < m.id AND e.state != 'sent')"
                f"  ORDER BY m.next_attempt_at, m.id LIMIT ?{self.store.dialect.skip_locked})"
                " AND state = 'pending'"  # several nodes: only what nobody claimed meanwhile
                " RETURNING id, job_id, kind, destination, control_id, payload, attempts",
                (now, destination, now, limit),
            ).fetchall()
        return [ClaimedMessage(*r) for r in sorted(rows, key=lambda r: r["id"])]

    def sent(self, message_id: int, status: str) -> None:
        now = _now()
        with self.store._transaction() as db:
            db.execute("UPDATE outbound_messages SET state = 'sent', last_status = ?,"
                       " error = NULL, sent_at = ?, updated_at = ? WHERE id = ?",
                       (status, now, now, message_id))

    def retry_later(self, message_id: int, reason: str, at: float,
                    status: str | None = None) -> None:
        with self.store._transaction() as db:
            db.execute("UPDATE outbound_messages SET state = 'pending', error = ?,"
                       " last_status = ?, next_attempt_at = ?, updated_at = ? WHERE id = ?",
                       (reason, status, at, _now(), message_id))

    def failed(self, message_id: int, reason: str, status: str | None = None) -> None:
        with self.store._transaction() as db:
            db.execute("UPDATE outbound_messages SET state = 'failed', error = ?,"
                       " last_status = ?, updated_at = ? WHERE id = ?",
                       (reason, status, _now(), message_id))

    def recover_sending(self) -> int:
        """At start-up: messages a dead node left ``sending`` go back to pending (the
        same control ID is resent, so a receiver that got it can recognise it)."""
        now = _now()
        with self.store._transaction() as db:
            return db.execute("UPDATE outbound_messages SET state = 'pending',"
                              " next_attempt_at = ?, updated_at = ? WHERE state = 'sending'",
                              (now, now)).rowcount

    def retry_message(self, message_id: int) -> bool:
        """Operator action: send a failed (or waiting) message again now."""
        now = _now()
        with self.store._transaction() as db:
            return db.execute(
                "UPDATE outbound_messages SET state = 'pending', attempts = 0,"
                " next_attempt_at = ?, error = NULL, updated_at = ?"
                " WHERE id = ? AND state IN ('failed','pending')",
                (now, now, message_id)).rowcount == 1

    def messages(self, *, job_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, params = ("WHERE job_id = ?", [job_id]) if job_id is not None else ("", [])
        return [dict(r) for r in self.store._read(
            "SELECT id, job_id, kind, result_status, destination, control_id, state,"
            f" attempts, last_status, error, next_attempt_at, created_at, sent_at"
            f" FROM outbound_messages {where} ORDER BY id DESC LIMIT ?", [*params, limit])]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("pending", "sending", "sent", "failed"), 0)
        for state, n in self.store._read(
                "SELECT state, COUNT(*) FROM outbound_messages GROUP BY state"):
            out[state] = n
        return out


def _within(requested: str | None, study_date: str | None, window_days: int) -> bool:
    if not requested or not study_date:
        return True
    from datetime import date

    try:
        a = date(int(requested[:4]), int(requested[4:6]), int(requested[6:8]))
        b = date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:8]))
    except ValueError:
        return False
    return abs((b - a).days) <= window_days
