"""Real DICOM peers for the node's tests: dcmtk processes on free loopback ports.

Used by test_dispatch, test_worker and test_faults (imported as a plain module: pytest
puts this folder on sys.path).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

# The object kind of each SOP class the node sends, as a storescp sees what arrives.
KINDS = {"1.2.840.10008.5.1.4.1.1.88.33": "SR", "1.2.840.10008.5.1.4.1.1.88.22": "SR",
         "1.2.840.10008.5.1.4.1.1.7": "SC", "1.2.840.10008.5.1.4.1.1.11.1": "GSPS"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen | None = None,
                   timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"peer exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout_s} s")


@contextmanager
def serving(command: Sequence[str], port: int):
    """Run a peer process until the block ends; yields its port once it listens."""
    process = subprocess.Popen(list(command), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"dcmtk tool {tool} not installed")


@contextmanager
def storescp(out_dir: Path, *, port: int | None = None, aet: str = "PACS",
             accept: str = "+xa", options: Sequence[str] = ()):
    """dcmtk storescp writing what it gets to out_dir; yields the port.

    ``accept`` is its transfer syntax option (``+xa`` all, ``+xi`` implicit VR only);
    ``options`` adds flags such as ``--refuse`` or ``--abort-after``.
    """
    require("storescp")
    port = port or free_port()
    out_dir.mkdir(parents=True, exist_ok=True)
    with serving(["storescp", "-aet", aet, accept, "-od", str(out_dir), *options, str(port)],
                 port):
        yield port


@contextmanager
def dcmqrscp_allowing(tmp_path: Path, allowed_aet: str, *, aet: str = "PACS"):
    """dcmtk dcmqrscp that accepts associations only from calling AE ``allowed_aet``
    (any other is rejected-permanent at association). Yields the port."""
    require("dcmqrscp")
    port = free_port()
    storage = tmp_path / "qr-storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "dcmqrscp.cfg"
    # dcmqrscp matches the peer's resolved host name: loopback resolves to "localhost".
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 4\n"
        f"HostTable BEGIN\nfriend = ({allowed_aet}, localhost, 1)\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\n{aet} {storage} RW (10, 100mb) friend\nAETable END\n"
    )
    with serving(["dcmqrscp", "-c", str(config), str(port)], port):
        yield port


def received_uids(out_dir: Path) -> list[str]:
    """SOP Instance UIDs of the files storescp wrote (its names: <modality>.<uid>)."""
    return sorted(p.name.split(".", 1)[1] for p in out_dir.iterdir() if p.is_file())


def write_small_sc(path: Path, *, with_uids_in_body: bool = True) -> str:
    """A tiny Secondary Capture file; returns its SOP Instance UID.

    ``with_uids_in_body=False`` keeps the UIDs only in the file meta: a C-STORE SCP
    cannot understand such a data set (dcmtk answers 0xC000).
    """
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if with_uids_in_body:
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = uid
    ds.PatientID = "TEST1"
    ds.Modality = "OT"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(256, dtype=np.uint8)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid
