"""A full disk under the real node (issue 14): the data directory on a small tmpfs.

The workers and their supervisor must outlive "No space left on device" and SQLite's
"database or disk is full", /healthz must say 503 (with the reason) while analysis cannot
run, and once the file system grows everything queued is analysed without a restart.
Needs permission to mount a tmpfs (root with CAP_SYS_ADMIN); skipped otherwise.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dcmtk_peers import require
from node_process import serve, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> list[Path]:
    require("storescu")
    from dxr_node.phantom.generate import write_phantom_set

    out = tmp_path_factory.mktemp("disk-phantoms")
    write_phantom_set(out, n=2, seed=5)
    return sorted(out.glob("*.dcm"))


def _send(port: int, path: Path) -> bool:
    result = subprocess.run(["storescu", "-aec", "DXRNODE", "127.0.0.1", str(port),
                             str(path)], capture_output=True, timeout=120)
    return result.returncode == 0


def _health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "healthz", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _jobs(data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(data_dir / "dxr-node.sqlite", timeout=30) as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())


def _fill(folder: Path) -> None:
    """Take every free byte (a full disk, including for SQLite's journal). The worker's
    own writes may have filled it already, before the filler can even be created."""
    try:
        with open(folder / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
    except OSError:
        pass


def test_full_disk_blocks_analysis_loudly_and_it_resumes_when_space_returns(
        small_disk, phantoms):
    data_dir = small_disk / "data"
    config = small_disk.parent / "node.toml"
    config.write_text("min_free_disk_mb = 0\n")  # let the disk really fill up
    with serve(data_dir, "--config", str(config), "--workers", "1",
               log_path=small_disk.parent / "node.log") as node:
        wait_for(lambda: "event=console_ready" in node.log_text(), 60, "the console")
        url = re.search(r"event=console_ready url=(\S+)", node.log_text()).group(1)
        assert _health(url)[0] == 200

        # The image fits; its 12 MB secondary capture does not. Then nothing fits at all.
        assert _send(node.port, phantoms[0])
        _fill(small_disk)
        wait_for(lambda: _health(url)[0] == 503, 120, "/healthz to report blocked analysis")
        status, body = _health(url)
        assert body["analysis_running"] is False
        assert "space" in body["problem"] or "full" in body["problem"], body
        assert "worker_blocked" in node.log_text()
        assert node.process.poll() is None  # the node lives
        console = urllib.request.urlopen(url, timeout=30).read().decode()
        assert 'class="alarm"' in console and "Analysis is stopped" in console

        # Space returns (the file system grows): the queued exam is analysed, and a new
        # one too, without restarting anything.
        (small_disk / "filler").unlink(missing_ok=True)
        subprocess.run(["mount", "-o", "remount,size=96m", str(small_disk)], check=True)
        assert _send(node.port, phantoms[1])
        wait_for(lambda: _jobs(data_dir).get("done", 0) == 2, 180, "both exams analysed")
        wait_for(lambda: _health(url)[0] == 200, 60, "/healthz back to 200")
        log = node.log_text()
        assert "Traceback" not in log
        assert "worker_died" not in log  # the worker was never lost
