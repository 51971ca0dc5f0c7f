"""Three `dxr-node serve` processes on one PostgreSQL, two modalities, one node killed.

Issue 12's proof: 60 images sent by two dcmtk storescu "modalities" to two of three
nodes that share a database and a data folder (the shared storage); one receiving and
analysing node is SIGKILLed mid-run, and its modality fails over to another node for
what was not acknowledged. Every acknowledged image must yield exactly one SR, SC and
GSPS at the PACS (dcmtk storescp, with unique file names so a second delivery shows),
no image may be analysed to two different results, and the killed node's running jobs
must be taken over once their lease runs out.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import psycopg
import pytest
from dcmtk_peers import KINDS, require, storescp
from node_process import DXR_NODE, serve, wait_for
from pydicom import dcmread
from pydicom.uid import generate_uid

pytestmark = pytest.mark.slow

IMAGES = 60
DISTINCT = 8  # phantoms rendered; the others are copies under new UIDs (fast to make)
LEASE_S = 6.0
HEARTBEAT_S = 1.0


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    for tool in ("storescu", "storescp"):
        require(tool)
    from dxr_node.phantom.generate import phantom_dataset

    out = tmp_path_factory.mktemp("cluster-phantoms")
    rendered = [phantom_dataset(7, i, pixel_spacing_mm=0.2) for i in range(DISTINCT)]
    paths = []
    for n in range(IMAGES):
        ds = rendered[n % DISTINCT]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = out / f"img_{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _send(port: int, path: Path) -> bool:
    """storescu one file; True only if the node answered Success."""
    return subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "DXRNODE", "127.0.0.1",
                           str(port), str(path)], capture_output=True, timeout=120
                          ).returncode == 0


def _content_digest(ds) -> str:
    """What a result says (pixels of the SC, the SR's content tree, the GSPS graphics),
    without creation times, which a second delivery of the same object may not share."""
    parts = [ds.get("PixelData", b""), str(ds.get("ContentSequence", "")).encode(),
             str(ds.get("GraphicAnnotationSequence", "")).encode()]
    return hashlib.sha256(b"|".join(parts)).hexdigest()


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_three_nodes_one_killed_every_image_once(tmp_path, images, postgres_url):
    data, pacs_dir = tmp_path / "shared", tmp_path / "pacs"

    def query(sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    with storescp(pacs_dir, options=["+uf"]) as pacs_port:
        config = tmp_path / "cluster.toml"
        config.write_text(
            f'database = "{postgres_url}"\n'
            f"[cluster]\nlease_s = {LEASE_S}\nheartbeat_s = {HEARTBEAT_S}\n"
            "[dispatch]\ninitial_backoff_s = 0.5\nmax_backoff_s = 2.0\n")
        common = ("--config", str(config), "--workers", "1",
                  "--destination", f"PACS@127.0.0.1:{pacs_port}")
        with serve(data, *common, "--node-name", "node-a", log_path=tmp_path / "a.log") as a, \
                serve(data, *common, "--node-name", "node-b",
                      log_path=tmp_path / "b.log") as b, \
                serve(data, *common, "--node-name", "node-c",
                      log_path=tmp_path / "c.log") as c:
            acknowledged: dict[Path, str] = {}
            lock = threading.Lock()
            b_down = threading.Event()

            def modality(paths: list[Path], node, fallback) -> None:
                for path in paths:
                    target = fallback if node is b and b_down.is_set() else node
                    if not _send(target.port, path) and target is b:
                        # B is gone: the modality tries again at another node.
                        b_down.wait(30)
                        target = fallback
                        if not _send(target.port, path):
                            continue
                    with lock:
                        acknowledged[path] = target.process.args[-1]

            senders = [threading.Thread(target=modality, args=(images[0::2], a, a)),
                       threading.Thread(target=modality, args=(images[1::2], b, a))]
            for sender in senders:
                sender.start()

            def b_holds_jobs() -> list[int]:
                return [r[0] for r in query(
                    "SELECT id FROM jobs WHERE node = 'node-b' AND state = 'running'")]

            wait_for(lambda: len(acknowledged) >= 10 and bool(b_holds_jobs()), 300,
                     "node-b analysing while images still arrive", interval_s=0.05)
            held = b_holds_jobs()
            lease_seen = min(r[0] for r in query(
                "SELECT lease_expires_at FROM jobs WHERE id = ANY(%s)", (held,)))
            b.kill()  # SIGKILL to node-b and its worker (its process group)
            killed_at = time.time()
            b_down.set()
            # Its jobs come back once their lease (renewed at most HEARTBEAT_S before the
            # kill) has run out, and another node analyses them.
            wait_for(lambda: not b_holds_jobs(), 120, "node-b's jobs to be taken over",
                     interval_s=0.1)
            taken_over_at = time.time()
            taken_over_after = taken_over_at - killed_at
            for sender in senders:
                sender.join()
            wait_for(lambda: query("SELECT COUNT(*) FROM dispatches WHERE state = 'sent'"
                                   )[0][0] == 3 * len(acknowledged), 600,
                     "every acknowledged image's objects delivered")
            status = subprocess.run(
                [*DXR_NODE, "status", "--json", "--config", str(config)],
                capture_output=True, text=True, timeout=60)
            logs = {n: p.read_text() for n, p in
                    (("a", tmp_path / "a.log"), ("c", tmp_path / "c.log"))}
            c.stop()
            a.stop()

    assert len(acknowledged) == IMAGES  # the failed-over modality got every image in
    # Not before the lease ran out (a live node's work is never taken); the upper bound
    # is loose on purpose (2 shared cores): the figure is printed below.
    assert held and taken_over_at >= lease_seen and taken_over_after < LEASE_S + 60
    jobs = dict(query("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
    assert jobs == {"done": IMAGES}, jobs
    for job_id in held:  # analysed again, by another node, after the take-over
        node, attempts = query("SELECT node, attempts FROM jobs WHERE id = %s", (job_id,))[0]
        assert node in ("node-a", "node-c") and attempts >= 2
    assert any(f"id={job_id}" in text and "from_node=node-b" in text
               for job_id in held for text in logs.values() if "event=taken_over" in text)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)  # `dxr-node status` reads PostgreSQL
    assert report["jobs"]["done"] == IMAGES
    assert {n["name"] for n in report["nodes"]} == {"node-a", "node-b", "node-c"}

    # At the PACS: per acknowledged image exactly one SR, SC and GSPS (by SOP Instance
    # UID); a second delivery of an object (node-b died while sending) is the same bytes.
    by_uid: dict[str, set[str]] = defaultdict(set)
    kinds_per_image: dict[str, Counter] = {_uid(p): Counter() for p in acknowledged}
    for path in pacs_dir.iterdir():
        ds = dcmread(path)
        uid = str(ds.SOPInstanceUID)
        if uid not in by_uid:
            refs = {str(e.value) for e in ds.iterall()
                    if e.keyword == "ReferencedSOPInstanceUID"} & set(kinds_per_image)
            for source in refs:
                kinds_per_image[source][KINDS[str(ds.SOPClassUID)]] += 1
        by_uid[uid].add(_content_digest(ds))
    assert all(k == Counter(SR=1, SC=1, GSPS=1) for k in kinds_per_image.values())
    assert all(len(digests) == 1 for digests in by_uid.values())  # never two results
    # One result per image in the database too, recorded by whichever node finished it.
    assert query("SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid) FROM results")[0] \
        == (IMAGES, IMAGES)
    print(f"\nnode-b killed holding jobs {held}; taken over after "
          f"{taken_over_after:.1f} s (lease {LEASE_S} s)")
