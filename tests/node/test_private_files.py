"""Patient data on disk is private to the node's user (issue 14): database, WAL, spool and
produced objects 0600, folders 0700, also when the data folder already existed 0755."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from dcmtk_peers import require
from node_process import serve, wait_for

pytestmark = pytest.mark.slow


def test_everything_the_node_writes_is_private(tmp_path):
    require("storescu")
    from dxr_node.phantom.generate import write_phantom_set

    write_phantom_set(tmp_path / "in", n=1, seed=3)
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)  # as an older version (or an operator) left it
    previous = os.umask(0o022)  # the node must not rely on its caller's umask
    try:
        with serve(data_dir, "--workers", "1") as node:
            sent = subprocess.run(["storescu", "-aec", "DXRNODE", "127.0.0.1", str(node.port),
                                   str(tmp_path / "in" / "phantom_0000.dcm")],
                                  capture_output=True, timeout=120)
            assert sent.returncode == 0

            def done() -> bool:
                with sqlite3.connect(data_dir / "dxr-node.sqlite", timeout=30) as db:
                    return db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'"
                                      ).fetchone()[0] == 1

            wait_for(done, 180, "the analysis")
            paths = [data_dir, *data_dir.rglob("*")]
            loose = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
                     for p in paths if stat.S_IMODE(p.stat().st_mode) & 0o077}
    finally:
        os.umask(previous)
    kinds = {p.suffix or p.name for p in paths if p.is_file()}
    assert {".dcm", ".sqlite"} <= kinds and any(p.name.endswith("-wal") for p in paths)
    assert loose == {}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in paths if p.is_dir())


def test_objects_folder_is_private_too(tmp_path: Path):
    """Sanity check of the helper the node uses on folders made by older versions."""
    from dxr_node.node.service import _make_private

    folder = tmp_path / "objects"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    _make_private(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
