"""Reader review in the node database: accounts, sign-in sessions, review state and the
audit trail of review actions (schema version 3).

Tables (times are UTC seconds since the epoch):

- ``users``: console accounts; ``role`` viewer | reviewer | admin; the password only as
  an argon2 hash; ``disabled_at`` instead of deletion, so audit rows keep their author.
- ``sessions``: signed-in browsers: SHA-256 of the session cookie (the cookie itself is
  never stored), the session's CSRF token, expiry.
- ``reviews``: one row per exam a reader has touched: ``draft`` (corrections made, not
  yet signed) -> ``approved`` | ``rejected`` (final). The working result (corrected
  analysis and its interpretation) lives here until approval copies it to ``results``.
- ``review_actions``: every action (correct, exclude, approve, reject, discard) with
  who, when, the bone, the reason, the values before and after, and the objects issued.

An exam awaits review when its job is done and it has no final review; whether the
console shows that queue depends on ``review.mode`` (config), not on this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dxr_node.node.console_queries import exam_filters
from dxr_node.node.database import Connection, inserted_id
from dxr_node.node.store import ProducedObject, Store, StoreError

ROLES = ("viewer", "reviewer", "admin")
SESSION_LIFETIME_S = 12 * 3600.0  # one working day; a reader signs in again after that
ACTIONS = ("correct", "exclude", "approve", "reject", "discard")

# Schema step 3 (dxr_node.node.schema).
REVIEW_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('viewer','reviewer','admin')),
    password_hash TEXT NOT NULL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    disabled_at   REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    csrf_token TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    job_id              INTEGER PRIMARY KEY REFERENCES jobs (id),
    state               TEXT NOT NULL CHECK (state IN ('draft','approved','rejected')),
    analysis_json       TEXT,
    interpretation_json TEXT,
    updated_at          REAL NOT NULL,
    finished_at         REAL,
    finished_by         TEXT
);
CREATE TABLE IF NOT EXISTS review_actions (
    id           INTEGER PRIMARY KEY,
    job_id       INTEGER NOT NULL REFERENCES jobs (id),
    action       TEXT NOT NULL,
    username     TEXT NOT NULL,
    display_name TEXT NOT NULL,
    at           REAL NOT NULL,
    bone         TEXT,
    reason       TEXT,
    before_json  TEXT,
    after_json   TEXT,
    objects_json TEXT
);
CREATE INDEX IF NOT EXISTS review_actions_job ON review_actions (job_id, id)
"""


class AccountError(ValueError):
    """A user cannot be added or changed (the message says why)."""


@dataclass(frozen=True)
class User:
    id: int
    username: str
    display_name: str
    role: str
    disabled: bool


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires_at: float


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _hasher():
    from argon2 import PasswordHasher  # argon2id with the library's current defaults

    return PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher().hash(password)


class ReviewStore:
    """Review queries over a node ``Store`` (same connection, same transactions)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- accounts -------------------------------------------------------------------

    def add_user(self, username: str, display_name: str, role: str, password: str) -> User:
        username = username.strip()
        if not username or len(username) > 64 or any(c.isspace() for c in username):
            raise AccountError("username: 1-64 characters without spaces")
        if role not in ROLES:
            raise AccountError(f"role: expected one of {', '.join(ROLES)}")
        if len(password) < 10:
            raise AccountError("password: at least 10 characters")
        display = " ".join(display_name.split()) or username
        hashed = hash_password(password)  # slow on purpose: not inside the transaction
        now = time.time()
        with self.store._transaction() as db:
            if db.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise AccountError(f"user {username!r} exists")
            user_id = inserted_id(db.execute(
                "INSERT INTO users (username, display_name, role, password_hash, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?) RETURNING id",
                (username, display[:64], role, hashed, now, now)))
        return User(user_id, username, display[:64], role, False)

    def set_disabled(self, username: str, disabled: bool = True) -> bool:
        """Disable (or enable again) an account; a disabled one loses its sessions."""
        now = time.time()
        with self.store._transaction() as db:
            row = db.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()
            if row is None:
                return False
            db.execute("UPDATE users SET disabled_at = ?, updated_at = ? WHERE id = ?",
                       (now if disabled else None, now, row["id"]))
            if disabled:
                db.execute("DELETE FROM sessions WHERE user_id = ?", (row["id"],))
            return True

    def users(self) -> list[User]:
        return [self._user(r) for r in self.store._read(
            "SELECT id, username, display_name, role, disabled_at FROM users ORDER BY username")]

    def has_users(self) -> bool:
        return bool(self.store._read("SELECT 1 FROM users WHERE disabled_at IS NULL LIMIT 1"))

    @staticmethod
    def _user(row: sqlite3.Row) -> User:
        return User(row["id"], row["username"], row["display_name"], row["role"],
                    row["disabled_at"] is not None)

    def authenticate(self, username: str, password: str) -> User | None:
        """The enabled user with this password, or None (same work either way)."""
        from argon2.exceptions import InvalidHashError, VerificationError

        rows = self.store._read(
            "SELECT id, username, display_name, role, disabled_at, password_hash FROM users"
            " WHERE username = ?", (username,))
        hasher = _hasher()
        # Verify against a dummy hash for unknown users, so timing does not tell names.
        stored = rows[0]["password_hash"] if rows else _dummy_hash()
        try:
            hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if not rows or rows[0]["disabled_at"] is not None:
            return None
        return self._user(rows[0])

    def open_session(self, user: User) -> tuple[str, Session]:
        """A new session for ``user``: (cookie value, session)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()
        expires = now + SESSION_LIFETIME_S
        with self.store._transaction() as db:
            db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            db.execute("INSERT INTO sessions (token_hash, user_id, csrf_token, created_at,"
                       " expires_at) VALUES (?,?,?,?,?)",
                       (_hash_token(token), user.id, csrf, now, expires))
        return token, Session(user, csrf, expires)

    def session(self, token: str) -> Session | None:
        rows = self.store._read(
            "SELECT u.id, u.username, u.display_name, u.role, u.disabled_at, s.csrf_token,"
            " s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id"
            " WHERE s.token_hash = ? AND s.expires_at > ? AND u.disabled_at IS NULL",
            (_hash_token(token), time.time()))
        if not rows:
            return None
        return Session(self._user(rows[0]), rows[0]["csrf_token"], rows[0]["expires_at"])

    def close_session(self, token: str) -> None:
        with self.store._transaction() as db:
            db.execute("DELETE FROM sessions WHERE token_hash = ?", (_hash_token(token),))

    # --- review state ---------------------------------------------------------------

    def review(self, job_id: int) -> dict[str, Any] | None:
        rows = self.store._read("SELECT * FROM reviews WHERE job_id = ?", (job_id,))
        if not rows:
            return None
        out = dict(rows[0])
        for key in ("analysis_json", "interpretation_json"):
            raw = out.pop(key)
            out[key.removesuffix("_json")] = json.loads(raw) if raw else None
        return out

    def actions(self, job_id: int) -> list[dict[str, Any]]:
        out = []
        for row in self.store._read(
                "SELECT * FROM review_actions WHERE job_id = ? ORDER BY id", (job_id,)):
            item = dict(row)
            for key in ("before_json", "after_json", "objects_json"):
                raw = item.pop(key)
                item[key.removesuffix("_json")] = json.loads(raw) if raw else None
            out.append(item)
        return out

    def save_draft(self, job_id: int, user: User, action: str, *, analysis: dict[str, Any],
                   interpretation: dict[str, Any] | None, bone: str | None,
                   reason: str | None, before: dict[str, Any], after: dict[str, Any]) -> int:
        """Record a correction (or exclusion, or discard) and the working result it gives.
        Refused (KeyError/ValueError) for an exam without a result or already final."""
        now = time.time()
        with self.store._transaction() as db:
            self._check_open(db, job_id)
            db.execute(
                "INSERT INTO reviews (job_id, state, analysis_json, interpretation_json,"
                " updated_at) VALUES (?, 'draft', ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET"
                " analysis_json = excluded.analysis_json,"
                " interpretation_json = excluded.interpretation_json,"
                " updated_at = excluded.updated_at",
                (job_id, json.dumps(analysis),
                 None if interpretation is None else json.dumps(interpretation), now))
            return self._action(db, job_id, user, action, now, bone=bone, reason=reason,
                                before=before, after=after)

    def discard_draft(self, job_id: int, user: User, before: dict[str, Any]) -> int:
        now = time.time()
        with self.store._transaction() as db:
            self._check_open(db, job_id)
            db.execute("DELETE FROM reviews WHERE job_id = ? AND state = 'draft'", (job_id,))
            return self._action(db, job_id, user, "discard", now, before=before)

    def finish(self, job_id: int, user: User, action: str, *, status: str | None,
               analysis: dict[str, Any], interpretation: dict[str, Any] | None,
               bmd: float | None, objects: Sequence[ProducedObject],
               destinations: Sequence[str], reason: str | None,
               before: dict[str, Any], after: dict[str, Any],
               also: Callable[[Connection, int], None] | None = None) -> int:
        """Approve or reject, in one transaction: the review becomes final, the result
        row takes the verified values (approve), the new objects are recorded and queued
        to every destination, and the action is audited. ``also`` runs in the same
        transaction (the final's HL7/FHIR messages)."""
        if action not in ("approve", "reject"):
            raise ValueError(f"not a final review action: {action}")
        now = time.time()
        with self.store._transaction() as db:
            self._check_open(db, job_id)
            state = "approved" if action == "approve" else "rejected"
            db.execute(
                "INSERT INTO reviews (job_id, state, analysis_json, interpretation_json,"
                " updated_at, finished_at, finished_by) VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT (job_id) DO UPDATE SET state = excluded.state,"
                " analysis_json = excluded.analysis_json,"
                " interpretation_json = excluded.interpretation_json,"
                " updated_at = excluded.updated_at, finished_at = excluded.finished_at,"
                " finished_by = excluded.finished_by",
                (job_id, state, json.dumps(analysis),
                 None if interpretation is None else json.dumps(interpretation), now, now,
                 user.username))
            if status is not None:
                # The verified values are the patient's result from now on (priors).
                db.execute(
                    "UPDATE results SET status = ?, dxr_bmd_g_cm2 = ?, analysis_json = ?,"
                    " interpretation_json = ? WHERE job_id = ?",
                    (status, bmd if status == "ok" else None, json.dumps(analysis),
                     None if interpretation is None else json.dumps(interpretation), job_id))
            elif action == "reject":
                # No result was issued: the exam no longer counts as a prior.
                db.execute("UPDATE results SET dxr_bmd_g_cm2 = NULL WHERE job_id = ?",
                           (job_id,))
            for obj in objects:
                object_id = inserted_id(db.execute(
                    "INSERT INTO objects (job_id, kind, sop_class_uid, sop_instance_uid, path,"
                    " created_at) VALUES (?,?,?,?,?,?) RETURNING id",
                    (job_id, obj.kind, obj.sop_class_uid, obj.sop_instance_uid, obj.path, now),
                ))
                for destination in destinations:
                    db.execute(
                        "INSERT INTO dispatches (object_id, destination, state,"
                        " next_attempt_at, created_at, updated_at)"
                        " VALUES (?, ?, 'pending', ?, ?, ?)",
                        (object_id, destination, now, now, now))
            if also is not None:
                also(db, job_id)
            return self._action(db, job_id, user, action, now, reason=reason, before=before,
                                after=after, objects=[
                                    {"kind": o.kind, "sop_class_uid": o.sop_class_uid,
                                     "sop_instance_uid": o.sop_instance_uid} for o in objects])

    @staticmethod
    def _check_open(db: Connection, job_id: int) -> None:
        row = db.execute(
            "SELECT j.state, r.job_id AS result, v.state AS review FROM jobs j"
            " LEFT JOIN results r ON r.job_id = j.id LEFT JOIN reviews v ON v.job_id = j.id"
            " WHERE j.id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no exam {job_id}")
        if row["state"] != "done" or row["result"] is None:
            raise ValueError(f"exam {job_id} has no result to review")
        if row["review"] in ("approved", "rejected"):
            raise ValueError(f"exam {job_id} was already {row['review']}")

    @staticmethod
    def _action(db: Connection, job_id: int, user: User, action: str, now: float,
                *, bone: str | None = None, reason: str | None = None,
                before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
                objects: list[dict[str, Any]] | None = None) -> int:
        def dump(value: Any) -> str | None:
            return None if value is None else json.dumps(value)

        return inserted_id(db.execute(
            "INSERT INTO review_actions (job_id, action, username, display_name, at, bone,"
            " reason, before_json, after_json, objects_json)"
            " VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (job_id, action, user.username, user.display_name, now, bone, reason,
             dump(before), dump(after), dump(objects))))

    # --- the queue ------------------------------------------------------------------

    _QUEUE_JOINS = (" FROM jobs j JOIN instances i ON i.id = j.instance_id"
                    " JOIN results r ON r.job_id = j.id LEFT JOIN reviews v ON v.job_id = j.id"
                    " WHERE j.state = 'done' AND (v.state IS NULL OR v.state = 'draft')")

    def queue(self, *, status: str | None = None, patient_id: str | None = None,
              date_from: str | None = None, date_to: str | None = None, limit: int = 50,
              offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Results awaiting review, newest received first, and how many match."""
        where, params = exam_filters(patient_id, date_from, date_to)
        if status:
            where.append("r.status = ?")
            params.append("ok" if status == "analysed" else status)
        clause = "".join(f" AND {w}" for w in where)
        total = self.store._read(f"SELECT COUNT(*){self._QUEUE_JOINS}{clause}", params)[0][0]
        rows = self.store._read(
            "SELECT j.id AS job_id, i.patient_id, i.study_date, i.modality, i.received_at,"
            " r.status AS result_status, COALESCE(v.state, 'waiting') AS review_state,"
            " r.dxr_bmd_g_cm2,"
            f" {self.store.dialect.json_get('r.analysis_json', 'reasons')} AS reasons"
            f"{self._QUEUE_JOINS}{clause} ORDER BY i.id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset])
        out = []
        for row in rows:
            item = dict(row)
            reasons = item["reasons"]  # JSON text (SQLite) or already decoded (PostgreSQL)
            item["reasons"] = json.loads(reasons) if isinstance(reasons, str) else reasons or []
            out.append(item)
        return out, total

    def counts(self) -> dict[str, int]:
        """Exams awaiting review (of which QC-rejected, and with a draft), approved and
        rejected by readers."""
        row = self.store._read(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN r.status != 'ok' THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN v.state = 'draft' THEN 1 ELSE 0 END), 0)"
            f"{self._QUEUE_JOINS}")[0]
        final: dict[str, int] = {state: n for state, n in self.store._read(
            "SELECT 'approved', COUNT(*) FROM reviews WHERE state = 'approved' UNION ALL"
            " SELECT 'rejected', COUNT(*) FROM reviews WHERE state = 'rejected'")}
        return {"awaiting": row[0], "awaiting_qc_rejected": row[1], "drafts": row[2],
                "approved": final.get("approved", 0), "rejected": final.get("rejected", 0)}

    def review_actions_total(self) -> dict[str, int]:
        counts = dict.fromkeys(ACTIONS, 0)
        for action, count in self.store._read(
                "SELECT action, COUNT(*) FROM review_actions GROUP BY action"):
            counts[action] = count
        return counts


def database_has_users(target: str | Path) -> bool:
    """Whether an existing node database has enabled accounts (False when it does not
    exist yet or predates them); opened read-only, so nothing is created."""
    if isinstance(target, str):  # PostgreSQL
        try:
            with Store(target, read_only=True) as store:
                return ReviewStore(store).has_users()
        except StoreError:
            return False
    path = target
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro",
                                                uri=True, timeout=10)) as db:
            return bool(db.execute("SELECT 1 FROM users WHERE disabled_at IS NULL LIMIT 1")
                        .fetchone())
    except sqlite3.Error:
        return False


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_urlsafe(16)))
    return _DUMMY[0]
