"""The states of the node's two queues and the kinds of object a job produces.

``StrEnum`` members compare equal to their text, so rows read back from the database
(plain strings) and JSON output keep working unchanged; SQL is built from the members
so no state name is spelled twice.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """An analysis job: queued -> running -> done | failed; skipped by triage."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class DispatchState(StrEnum):
    """One object to one destination: pending -> sending -> sent | failed; a transient
    failure goes back to pending with a later ``next_attempt_at``."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class ObjectKind(StrEnum):
    """A produced DICOM object."""

    SR = "SR"
    SC = "SC"
    GSPS = "GSPS"
    PDF = "PDF"


FINISHED_JOB_STATES = (JobState.DONE, JobState.FAILED, JobState.SKIPPED)


def sql_list(states: tuple[StrEnum, ...] | type[StrEnum]) -> str:
    """``'a','b'`` for an SQL ``IN (...)`` list or CHECK constraint (values are ours,
    never user input)."""
    return ",".join(f"'{s.value}'" for s in states)
