"""A throw-away PostgreSQL server for the tests and scripts/bench_cluster (Debian's package).

``initdb`` and ``pg_ctl`` refuse to run as root (CI runs as root), so they run as the
``postgres`` user that the Debian package creates, in a temporary folder it owns. The
server listens on 127.0.0.1 on a free port, with trust authentication for user ``dxr``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name or 0))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """``start()`` it, use ``url`` (or ``new_schema_url()`` for an empty namespace),
    ``stop()`` it; the data folder is deleted on stop."""

    def __init__(self, *, durable: bool = False) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise FileNotFoundError("PostgreSQL not installed (needs Debian's postgresql)")
        self.bin = binaries
        self.durable = durable  # False: fsync off (tests); True: the defaults (benchmarks)
        self.root = Path(tempfile.mkdtemp(prefix="dxr-pg-"))
        self.port = _free_port()
        self.url = f"postgresql://dxr@127.0.0.1:{self.port}/postgres"
        self._as_owner: list[str] = []
        if os.getuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as_owner = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_owner, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        data = self.root / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "dxr", "-A", "trust",
                  "-E", "UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port}"
                   f" -c unix_socket_directories={self.root} -c max_connections=200")
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-o", options, "-w",
                  "-l", str(self.root / "server.log"), "start")
        return self

    def new_schema_url(self) -> str:
        """The server's URL with a new, empty schema first on the search path."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.url}?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m",
                      "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
