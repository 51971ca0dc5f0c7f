"""Slow and oversized senders against the SCP (issue 14), with raw sockets on loopback.

Every loop here is bounded; a regression shows as a connection that is still open when
the bound runs out, never as a hang.
"""

from __future__ import annotations

import select
import socket
import subprocess
import threading
import time

import numpy as np
from dcmtk_peers import require
from pydicom import dcmread
from pynetdicom import AE
from test_scp import node, write_dx  # noqa: F401  (node is a fixture)

TRICKLE_S = 0.2
ATTACKER = "127.0.0.2"  # all of 127/8 is loopback on Linux: a second "host"


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                    source_address=(source, 0))
    sock.setblocking(False)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except (ConnectionResetError, BlockingIOError):
        return True


def _trickle_until_closed(sock: socket.socket, data: bytes, bound_s: float) -> float | None:
    """Send ``data`` one byte per TRICKLE_S; seconds until the node closed the connection,
    None if it was still open after ``bound_s``."""
    started = time.monotonic()
    for byte in data:
        if time.monotonic() - started > bound_s:
            return None
        if _closed_by_peer(sock):
            return time.monotonic() - started
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        time.sleep(TRICKLE_S)
    return None


# An A-ASSOCIATE-RQ header announcing 400 bytes: at one byte per 0.2 s it would take 80 s.
ASSOCIATE_RQ_START = bytes([0x01, 0x00, 0x00, 0x00, 0x01, 0x90, 0x00, 0x01]) + bytes(400)


def test_a_trickled_association_request_is_cut_at_the_acse_deadline(node):  # noqa: F811
    _, _, port = node(acse_timeout_s=1.0)
    sock = _connect(port)
    try:
        closed_after = _trickle_until_closed(sock, ASSOCIATE_RQ_START, bound_s=20)
    finally:
        sock.close()
    assert closed_after is not None, "a trickling sender held its connection for 20 s"


def test_trickled_pdata_on_an_established_association_is_cut(node):  # noqa: F811
    _, _, port = node(network_timeout_s=1.0)
    ae = AE(ae_title="SCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DXRNODE")
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # the requestor's own socket: write a PDU by hand
    # A P-DATA-TF header announcing 4000 bytes, then the rest one byte at a time.
    raw.sendall(bytes([0x04, 0x00, 0x00, 0x00, 0x0F, 0xA0]))
    started = time.monotonic()
    cut = False
    while time.monotonic() - started < 20:
        # Cut: our association ended, or the node's closed socket refuses the next byte
        # (which can come before our own association thread has noticed the close).
        if not assoc.is_alive():
            cut = True
            break
        try:
            raw.send(b"\x00")
        except OSError:
            cut = True
            break
        time.sleep(TRICKLE_S)
    if assoc.is_alive():
        assoc.abort()
    assert cut, "a trickled P-DATA PDU held the association for 20 s"


def test_fifty_slow_sockets_from_one_address_do_not_lock_out_another(node, tmp_path):  # noqa: F811
    """50 trickling connections (reconnecting whenever cut) from one address; a storescu
    from another address still stores, and quickly (the time is printed)."""
    require("storescu")
    _, store, port = node(max_associations=10, max_associations_per_peer=5)
    stop = threading.Event()
    held = {"max": 0}

    def attack() -> None:
        sockets: list[socket.socket] = []
        while not stop.is_set():
            while len(sockets) < 50 and not stop.is_set():
                try:
                    sockets.append(_connect(port, ATTACKER))
                except OSError:
                    break
            for sock in list(sockets):
                if _closed_by_peer(sock):
                    sock.close()
                    sockets.remove(sock)
                    continue
                try:
                    sock.send(b"\x01")
                except OSError:
                    sock.close()
                    sockets.remove(sock)
            held["max"] = max(held["max"], len(sockets))
            stop.wait(TRICKLE_S)
        for sock in sockets:
            sock.close()

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        time.sleep(2)  # the attack is in full swing
        path = tmp_path / "legit.dcm"
        uid = write_dx(path)
        started = time.monotonic()
        result = subprocess.run(["storescu", "-aec", "DXRNODE", "127.0.0.1", str(port),
                                 str(path)], capture_output=True, text=True, timeout=60)
        seconds = time.monotonic() - started
    finally:
        stop.set()
        attacker.join(timeout=30)
    print(f"storescu during a 50-socket slow-sender attack: {seconds:.2f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert store.job_state(1) is not None
    assert dcmread(path).SOPInstanceUID == uid
    assert store.instance_count() == 1


def test_a_c_store_over_the_size_limit_is_cut_off_and_the_next_one_stored(node, tmp_path):  # noqa: F811
    _, store, port = node(max_store_mb=1)
    big = tmp_path / "big.dcm"
    write_dx(big)
    ds = dcmread(big)
    ds.Rows, ds.Columns = 1200, 1000  # 2.4 MB of pixel data
    ds.PixelData = np.zeros((1200, 1000), np.uint16).tobytes()
    ds.save_as(big)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="DXRNODE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert "Status" not in status  # aborted: the sender keeps the image
    assert store.instance_count() == 0
    small = tmp_path / "small.dcm"
    write_dx(small)
    assoc = ae.associate("127.0.0.1", port, ae_title="DXRNODE")
    assert assoc.send_c_store(dcmread(small)).Status == 0
    assoc.release()
    assert store.instance_count() == 1
