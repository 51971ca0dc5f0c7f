"""The one migration path: a database left at any earlier schema version is brought to
the current one with its rows, on SQLite and PostgreSQL, and nodes starting together
migrate once."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest
from node_process import wait_for

from dxr_node.node.database import SQLITE, PostgresDialect
from dxr_node.node.schema import MIGRATIONS, SCHEMA_VERSION
from dxr_node.node.store import InstanceInfo, Store

INSERT_JOB = ("INSERT INTO instances (sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
              " path, size_bytes, received_at, last_received_at) VALUES"
              " ('9.1', '1.2', '1.2.840.10008.1.2.1', '/s/9.1', 1, 0, 0);"
              "INSERT INTO jobs (instance_id, state, created_at, updated_at)"
              " VALUES (1, 'queued', 0, 0)")


@pytest.mark.parametrize("old", [1, 3, 4, 5])
def test_an_older_sqlite_database_is_migrated_with_its_rows(tmp_path, old):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        for step in MIGRATIONS[:old]:
            step.apply(db, SQLITE)
        for statement in INSERT_JOB.split(";"):
            db.execute(statement)
        db.execute(f"PRAGMA user_version={old}")
    with Store(path) as store:
        job = store.claim_job("w", node="a", lease_s=10)  # step 6's columns are there
        assert job is not None and job.sop_instance_uid == "9.1"
        assert store.held_jobs()[0]["node"] == "a"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master"
                                            " WHERE type = 'index'")}
    assert {"instances_received", "jobs_finished", "jobs_node"} <= indexes


def test_an_older_postgresql_database_is_migrated_with_its_rows(postgres_url):
    import psycopg

    from dxr_node.node.database import _PostgresConnection

    with psycopg.connect(postgres_url, autocommit=True) as raw:
        db = _PostgresConnection(raw)
        for step in MIGRATIONS[:5]:
            step.apply(db, PostgresDialect())
        for statement in INSERT_JOB.split(";"):
            db.execute(statement)
        db.execute("CREATE TABLE dxr_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO dxr_schema VALUES (5)")
    with Store(postgres_url) as store:
        assert store.claim_job("w", node="a", lease_s=10).sop_instance_uid == "9.1"
        # The identity sequence of a migrated table goes on after its rows.
        added = store.add_instance(InstanceInfo("9.2", "1.2", "1.2.840.10008.1.2.1",
                                                "/s/9.2", 1))
        assert added.job_id == 2
        assert store._read("SELECT version FROM dxr_schema")[0][0] == SCHEMA_VERSION


def _open(url: str, out) -> None:
    try:
        with Store(url) as store:
            out.put(store.instance_count())
    except Exception as exc:  # reported to the test, which fails with it
        out.put(repr(exc))


def test_nodes_starting_together_on_a_new_postgresql_database_migrate_once(postgres_url):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_open, args=(postgres_url, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert results == [0, 0, 0, 0]


def test_a_node_without_scp_workers_or_dispatch_registers_and_stops(tmp_path, database):
    from dxr_node.node.config import load_config
    from dxr_node.node.service import Node

    config = load_config(environ={}, overrides={
        "data_dir": str(tmp_path / "data"), "database": str(database),
        "roles": {"scp": False, "workers": False, "dispatch": False},
        "cluster": {"node_name": "rx-1", "lease_s": 2.0, "heartbeat_s": 0.2}})
    node = Node(config)
    node.start()
    try:
        assert node.scp is None and node.analysis_problem() is None
        wait_for(lambda: node.store.nodes()[0]["heartbeat_at"]
                 > node.store.nodes()[0]["started_at"], 60, "a heartbeat")
        (row,) = node.store.nodes()
        assert row["name"] == "rx-1" and row["roles"] == "none" and row["stopped_at"] is None
    finally:
        node.stop()
    with Store(config.database_target) as store:
        assert store.nodes()[0]["stopped_at"] is not None
