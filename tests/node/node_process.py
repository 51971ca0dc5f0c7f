"""`dxr-node serve` as a real child process for end-to-end and fault tests.

Imported as a plain module (pytest puts this folder on sys.path), like dcmtk_peers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

from dcmtk_peers import free_port, wait_listening

DXR_NODE = [sys.executable, "-m", "dxr_node.cli"]


class NodeProcess:
    """One running `dxr-node serve`; its log (stderr) goes to ``log_path``."""

    def __init__(self, data_dir: Path, port: int, args: Sequence[str], log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "ab")  # closed in stop() or kill()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DXR_NODE")}
        env["DXR_NODE__WEB__PORT"] = "0"  # the console on any free port: nodes run side by side
        self.process = subprocess.Popen(
            [*DXR_NODE, "serve", "--data-dir", str(data_dir), "--port", str(port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # its own process group: kill() reaches the workers
        )
        try:
            wait_listening(port, self.process, timeout_s=60)
        except Exception:
            self.kill()
            raise

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (graceful shutdown); returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL the node and all its worker processes at once (as a power cut would)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self._log.close()

    def status(self) -> dict:
        """`dxr-node status --json` for this node's data directory."""
        result = subprocess.run([*DXR_NODE, "status", "--json", "--data-dir",
                                 str(self.data_dir)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@contextmanager
def serve(data_dir: Path, *args: str, port: int | None = None, log_path: Path | None = None):
    """Run `dxr-node serve` for the duration of the block; yields a NodeProcess."""
    port = port or free_port()
    node = NodeProcess(data_dir, port, args, log_path or data_dir.parent / "node.log")
    try:
        yield node
    finally:
        if node.process.poll() is None:
            node.stop()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str,
             interval_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
