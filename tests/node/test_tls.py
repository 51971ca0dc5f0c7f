"""DICOM TLS (issue 14): dcmtk's storescu +tls into the node, the node into storescp +tls,
mutual TLS with a subject allow-list. Certificates are made per session with openssl."""

from __future__ import annotations

import base64
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from dcmtk_peers import free_port, received_uids, require, serving
from node_process import wait_for
from pydicom import dcmread
from pynetdicom import AE
from test_scp import write_dx

from dxr_node.node.audit import AuditTrail
from dxr_node.node.config import Destination, TlsConfig, load_config
from dxr_node.node.dispatch import SENT, send_files
from dxr_node.node.scp import StorageSCP
from dxr_node.node.store import Store
from dxr_node.node.tls import client_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA and certificates for the node, an accepted client and a stranger (same CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=dxr-node test CA")
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("node", "client", "stranger"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}/O=Hospital")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")
    return folder


def _tls(pki: Path, name: str = "node", **more) -> dict:
    return {"certificate": str(pki / f"{name}.pem"), "private_key": str(pki / f"{name}.key"),
            "ca_certificates": str(pki / "ca.pem"), **more}


@pytest.fixture
def tls_node(tmp_path, pki):
    config = load_config(environ={}, overrides={
        "data_dir": str(tmp_path / "data"), "port": free_port(), "min_free_disk_mb": 1,
        "tls": _tls(pki, enabled=True, require_client_certificate=True,
                    allowed_client_subjects=["client"])})
    store = Store(config.database_path)
    audit = AuditTrail("DXRNODE", file=tmp_path / "audit.log", syslog_host=None,
                       syslog_port=6514).start()
    scp = StorageSCP(config, store, audit)
    _, port = scp.start()
    yield store, port
    scp.stop()
    audit.stop()
    store.close()


def _storescu(pki: Path, port: int, path: Path, *tls: str) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", *tls, "-aec", "DXRNODE", "127.0.0.1", str(port),
                           str(path)], capture_output=True, text=True, timeout=60)


def test_storescu_over_tls_stores_and_other_clients_are_refused(tls_node, pki, tmp_path):
    require("storescu")
    store, port = tls_node
    image = tmp_path / "img.dcm"
    write_dx(image)
    ca = ("+cf", str(pki / "ca.pem"))
    accepted = _storescu(pki, port, image, "+tls", str(pki / "client.key"),
                         str(pki / "client.pem"), *ca)
    assert accepted.returncode == 0, accepted.stderr
    stranger = _storescu(pki, port, image, "+tls", str(pki / "stranger.key"),
                         str(pki / "stranger.pem"), *ca)
    anonymous = _storescu(pki, port, image, "+tla", *ca)  # TLS without a certificate
    plain = _storescu(pki, port, image)
    for refused in (stranger, anonymous, plain):
        assert refused.returncode != 0
    assert store.instance_count() == 1
    scp_stopped_audit = tmp_path / "audit.log"
    wait_for(lambda: scp_stopped_audit.exists()
             and scp_stopped_audit.read_text().count("Security Alert") == 3, 10,
             "three security alerts in the audit file")
    assert "CN=stranger" in b64decoded_details(scp_stopped_audit.read_text())


def b64decoded_details(text: str) -> str:
    """The alert descriptions (base64 in ParticipantObjectDetail) of an audit file."""
    return " ".join(base64.b64decode(v).decode() for v in
                    re.findall(r'type="Alert Description" value="([^"]+)"', text))


def test_a_python_client_over_tls_1_3(tls_node, pki, tmp_path):
    store, port = tls_node
    image = tmp_path / "img.dcm"
    write_dx(image)
    context = client_context(TlsConfig(**_tls(pki, "client")))
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DXRNODE", tls_args=(context, "localhost"))
    assert assoc.is_established
    try:
        assert assoc.dul.socket.socket.version() == "TLSv1.3"
        assert assoc.send_c_store(dcmread(image)).Status == 0
    finally:
        assoc.release()
    assert store.instance_count() == 1


def test_the_node_sends_to_storescp_over_mutual_tls(pki, tmp_path):
    require("storescp")
    port = free_port()
    out = tmp_path / "pacs"
    out.mkdir()
    obj = tmp_path / "obj.dcm"
    uid = write_dx(obj)
    command = ["storescp", "+tls", str(pki / "client.key"), str(pki / "client.pem"),
               "+cf", str(pki / "ca.pem"), "-rc", "-aet", "PACS", "-od", str(out), str(port)]
    destination = Destination(name="pacs", ae_title="PACS", host="localhost", port=port,
                              tls=True)
    with serving(command, port):
        plain = send_files(destination, [obj], calling_aet="DXRNODE", timeout_s=5)
        secure = send_files(destination, [obj], calling_aet="DXRNODE", timeout_s=5,
                            tls=client_context(TlsConfig(**_tls(pki))))
        # A node whose certificate the PACS does not trust is refused by the PACS.
        untrusted = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        refused = send_files(destination, [obj], calling_aet="DXRNODE", timeout_s=5,
                             tls=untrusted)
    assert plain[0].outcome != SENT
    assert secure[0].outcome == SENT, secure[0].reason
    assert refused[0].outcome != SENT
    assert received_uids(out) == [uid]
