"""Faults with the real node: kill -9 mid-flight, a PACS that is down, a corrupt image.

`dxr-node serve` runs as a child process between dcmtk storescu (the modality) and dcmtk
storescp (the PACS); the node's own database is read with sqlite3, as `status` would.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
from dcmtk_peers import KINDS, free_port, require, storescp
from node_process import serve, wait_for
from pydicom import dcmread

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> list[Path]:
    for tool in ("storescu", "storescp"):
        require(tool)
    from dxr_node.phantom.generate import write_phantom_set

    out = tmp_path_factory.mktemp("fault-phantoms")
    write_phantom_set(out, n=6, seed=1)
    return sorted(out.glob("*.dcm"))


def _send(port: int, path: Path) -> bool:
    """storescu one file; True only if the node answered Success."""
    result = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "DXRNODE", "127.0.0.1",
                             str(port), str(path)], capture_output=True, timeout=120)
    return result.returncode == 0


def _query(data_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(data_dir / "dxr-node.sqlite", timeout=30) as db:
        return db.execute(sql).fetchall()


def _counts(data_dir: Path, table: str) -> dict[str, int]:
    return dict(_query(data_dir, f"SELECT state, COUNT(*) FROM {table} GROUP BY state"))


def _objects_per_image(pacs_dir: Path, image_uids: set[str]) -> dict[str, Counter]:
    """For each source image, the kinds of the objects at the PACS that reference it."""
    found: dict[str, Counter] = {uid: Counter() for uid in image_uids}
    for path in pacs_dir.iterdir():
        ds = dcmread(path, stop_before_pixels=True)
        for uid in _referenced(ds) & image_uids:
            found[uid][KINDS.get(str(ds.SOPClassUID), str(ds.SOPClassUID))] += 1
    return found


def _referenced(ds) -> set[str]:
    uids: set[str] = set()
    for element in ds.iterall():
        if element.keyword == "ReferencedSOPInstanceUID":
            uids.add(str(element.value))
    return uids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _one_of_each(pacs_dir: Path, images: list[Path]) -> bool:
    per_image = _objects_per_image(pacs_dir, {_uid(p) for p in images})
    return all(kinds == Counter(SR=1, SC=1, GSPS=1) for kinds in per_image.values())


def test_kill_9_during_receive_and_analysis_loses_nothing(tmp_path, phantoms):
    data, pacs_dir = tmp_path / "data", tmp_path / "pacs"
    with storescp(pacs_dir) as pacs_port:
        args = ("--workers", "2", "--destination", f"PACS@127.0.0.1:{pacs_port}")
        acknowledged: list[Path] = []
        with serve(data, *args) as node:
            killed = threading.Event()

            def modality() -> None:
                for path in phantoms:
                    if killed.is_set():
                        return
                    if _send(node.port, path):
                        acknowledged.append(path)

            sender = threading.Thread(target=modality)
            sender.start()
            # Pull the plug while images are still arriving and some are being analysed.
            wait_for(lambda: len(acknowledged) >= 3
                     and _counts(data, "jobs").get("running", 0) > 0, 120,
                     "images acknowledged while analysis runs", interval_s=0.02)
            # kill -9 of the node process alone: its workers must not live on as orphans.
            workers = [int(pid) for pid in re.findall(r"worker=worker-\d+-(\d+)",
                                                       node.log_text())]
            os.kill(node.process.pid, signal.SIGKILL)
            killed.set()
            wait_for(lambda: not any(map(_alive, workers)), 30, "the workers to die too")
            node.kill()  # reaps the node
            sender.join()
        assert 3 <= len(acknowledged) < len(phantoms) and workers

        with serve(data, *args, log_path=tmp_path / "node2.log") as node:
            # The modality re-sends what was never acknowledged, as a real one would.
            for path in phantoms:
                if path not in acknowledged:
                    assert _send(node.port, path)
            wait_for(lambda: _counts(data, "dispatches").get("sent", 0) == 3 * len(phantoms),
                     300, "every object delivered after the restart")
            assert "event=recovered" in node.log_text()

    jobs = _counts(data, "jobs")
    assert jobs == {"done": len(phantoms)}
    assert _counts(data, "dispatches") == {"sent": 3 * len(phantoms)}
    # Each image analysed into exactly one SR, SC and GSPS at the PACS: a re-analysis after
    # the crash made the same objects (same UIDs), not a second set.
    assert _one_of_each(pacs_dir, phantoms)
    assert len(list(pacs_dir.iterdir())) == 3 * len(phantoms)


def test_pacs_down_for_a_while_then_everything_is_delivered(tmp_path, phantoms):
    data, pacs_dir = tmp_path / "data", tmp_path / "pacs"
    config = tmp_path / "node.toml"
    config.write_text("[dispatch]\ninitial_backoff_s = 0.5\nmax_backoff_s = 2.0\n"
                      "max_attempts = 100\n")
    pacs_port = free_port()  # nothing listens there yet
    images = phantoms[:3]
    with serve(data, "--config", str(config), "--workers", "2",
               "--destination", f"PACS@127.0.0.1:{pacs_port}") as node:
        for path in images:
            assert _send(node.port, path)
        wait_for(lambda: _counts(data, "jobs").get("done", 0) == len(images), 180,
                 "the analyses")
        wait_for(lambda: _query(data, "SELECT MIN(attempts) FROM dispatches")[0][0] >= 2, 60,
                 "a few failed delivery attempts")
        assert _counts(data, "dispatches").get("sent", 0) == 0
        errors = {row[0] for row in _query(data, "SELECT error FROM dispatches")}
        assert all(e and "cannot reach PACS@127.0.0.1" in e for e in errors)

        with storescp(pacs_dir, port=pacs_port):
            wait_for(lambda: _counts(data, "dispatches") == {"sent": 3 * len(images)}, 60,
                     "delivery once the PACS is back")
            status = node.status()
    assert status["dispatches"]["failed"] == 0
    assert _one_of_each(pacs_dir, images)


def test_corrupt_instance_is_a_recorded_failure_not_a_stuck_queue(tmp_path, phantoms):
    ds = dcmread(phantoms[0])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # half the pixels went missing
    corrupt = tmp_path / "corrupt.dcm"
    ds.save_as(corrupt)
    data, pacs_dir = tmp_path / "data", tmp_path / "pacs"
    with storescp(pacs_dir) as pacs_port, serve(
            data, "--workers", "1", "--destination", f"PACS@127.0.0.1:{pacs_port}") as node:
        assert _send(node.port, corrupt)  # accepted: it is stored as received
        assert _send(node.port, phantoms[1])
        wait_for(lambda: _counts(data, "dispatches").get("sent", 0) == 3, 180,
                 "the good image's objects")
        status = node.status()
    assert status["jobs"]["failed"] == 1 and status["jobs"]["done"] == 1
    assert status["jobs"]["queued"] == status["jobs"]["running"] == 0
    (failure,) = status["failures"]
    assert failure["sop_instance_uid"] == str(ds.SOPInstanceUID)
    assert failure["reason"].startswith("unreadable image")
    assert _one_of_each(pacs_dir, phantoms[1:2])
