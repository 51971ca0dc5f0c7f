"""`dxr-node user add|disable|enable|list` on a node database, and what the accounts
table keeps (an argon2 hash, never the password)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dxr_node.node.review_store import ReviewStore
from dxr_node.node.store import Store

PASSWORD = "long enough secret"


def _user(data_dir, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DXR_NODE")}
    return subprocess.run([sys.executable, "-m", "dxr_node.cli", "user", *args,
                           "--data-dir", str(data_dir)], input=password, text=True,
                          capture_output=True, timeout=60, env=env)


@pytest.mark.slow
def test_add_list_disable_enable(tmp_path):
    added = _user(tmp_path, "add", "ann", "--role", "reviewer", "--name", "Reader^Ann",
                  "--password-stdin", password=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    again = _user(tmp_path, "add", "ann", "--password-stdin", password=PASSWORD + "\n")
    assert again.returncode == 2 and "exists" in again.stderr
    short = _user(tmp_path, "add", "bob", "--password-stdin", password="short\n")
    assert short.returncode == 2 and "at least 10" in short.stderr
    assert _user(tmp_path, "list").stdout == "ann\treviewer\tenabled\tReader^Ann\n"

    with Store(tmp_path / "dxr-node.sqlite") as store:
        stored = store._read("SELECT password_hash FROM users")[0][0]
        assert stored.startswith("$argon2id$") and PASSWORD not in stored
        assert ReviewStore(store).authenticate("ann", PASSWORD).role == "reviewer"
        assert ReviewStore(store).authenticate("ann", "wrong password") is None

    assert _user(tmp_path, "disable", "ann").returncode == 0
    with Store(tmp_path / "dxr-node.sqlite") as store:
        assert ReviewStore(store).authenticate("ann", PASSWORD) is None
    assert _user(tmp_path, "enable", "ann").returncode == 0
    assert _user(tmp_path, "disable", "nobody").returncode == 2
