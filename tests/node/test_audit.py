"""IHE ATNA audit trail (issue 14): one exam's life through the real node, received by a
syslog listener over TLS (RFC 5425 framing) on loopback and kept in the local file."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from dcmtk_peers import free_port, require, storescp
from node_process import wait_for
from test_tls import pki  # noqa: F401  (a fixture)

from dxr_node.node.config import load_config
from dxr_node.node.service import Node

pytestmark = pytest.mark.slow


class SyslogListener:
    """A TLS syslog receiver: RFC 6587 octet-counted frames, kept in ``messages``."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, key)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.messages: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(raw,), daemon=True).start()

    def _read(self, raw: socket.socket) -> None:
        with self.context.wrap_socket(raw, server_side=True) as conn:
            buffer = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.messages.append(rest[:int(length)].decode("utf-8"))
                    buffer = rest[int(length):]

    def close(self) -> None:
        self.server.close()


def _event(xml: str) -> tuple[str, str]:
    root = ET.fromstring(xml)
    ident = root.find("EventIdentification")
    return ident.find("EventID").get("originalText"), ident.get("EventActionCode")


def test_one_exams_life_reaches_the_syslog_collector_and_the_local_file(
        tmp_path, pki, phantom_set):  # noqa: F811
    for tool in ("storescu", "echoscu"):
        require(tool)
    listener = SyslogListener(pki / "node.pem", pki / "node.key")
    image = sorted(phantom_set[0].glob("*.dcm"))[0]
    pacs_dir = tmp_path / "pacs"
    try:
        with storescp(pacs_dir) as pacs_port:
            config = load_config(environ={}, overrides={
                "data_dir": str(tmp_path / "data"), "port": free_port(), "workers": 1,
                "min_free_disk_mb": 1, "allowed_calling_aets": ["MODALITY"],
                "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": pacs_port}],
                "tls": {"ca_certificates": str(pki / "ca.pem")},
                "audit": {"enabled": True, "syslog_host": "127.0.0.1",
                          "syslog_port": listener.port}})
            node = Node(config)
            node.start()
            try:
                port = str(node.address[1])
                refused = subprocess.run(["echoscu", "-aet", "STRANGER", "-aec", "DXRNODE",
                                          "127.0.0.1", port], capture_output=True, timeout=60)
                assert refused.returncode != 0
                sent = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "DXRNODE",
                                       "127.0.0.1", port, str(image)], capture_output=True,
                                      timeout=60)
                assert sent.returncode == 0
                wait_for(lambda: pacs_dir.exists() and len(list(pacs_dir.iterdir())) == 3,
                         180, "the three result objects at the PACS")
            finally:
                node.stop()
        wait_for(lambda: any("Application Stop" in m for m in listener.messages), 30,
                 "the stop message")
    finally:
        listener.close()

    frames = listener.messages
    for frame in frames:  # RFC 5424: <85>1 time host app procid MSGID - BOM+XML
        assert re.match(r"<85>1 \S+Z \S+ dxr-node \d+ IHE\+RFC-3881 - \ufeff<\?xml", frame)
    xml = [frame.split(" - \ufeff", 1)[1] for frame in frames]
    events = [_event(x) for x in xml]
    assert events[0] == ("Application Activity", "E")
    assert ("Security Alert", "E") in events
    assert events.count(("DICOM Instances Transferred", "C")) == 1  # the image in
    assert events.count(("DICOM Instances Transferred", "R")) == 3  # SR, SC, GSPS out
    assert events[-1] == ("Application Activity", "E") and "Application Stop" in xml[-1]
    local = (tmp_path / "data" / "audit" / "audit.log").read_text().splitlines()
    assert local == xml  # the append-only local copy holds the same messages
    assert oct((tmp_path / "data" / "audit" / "audit.log").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "audit-messages.txt").write_text("\n".join(frames))  # for the record
