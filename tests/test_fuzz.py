"""Fuzz tier (issue 14): a fixed seed and a small bounded number of mutated phantoms
through `dxr-node analyze` (scripts/fuzz runs the long version). No crash, no traceback,
no internal error, no hang, a documented exit status and a reason for every file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_mutated_phantoms_are_each_rejected_with_a_reason_or_measured(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fuzz.py"), "--cases", "36", "--seed", "2024",
         "--batch", "12", "--timeout", "60", "--keep", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["cases"] == 36
    assert summary["crashes"] == []
    assert summary["internal_errors"] == []
    assert summary["hangs"] == []
    assert summary["without_reason"] == []
    assert summary["tracebacks"] == 0 and summary["bad_exit_status"] == []
    assert sum(summary["outcomes"].values()) == 36  # a line for every file
    assert summary["peak_rss_mb"] < 1024
    assert result.returncode == 0, result.stdout + result.stderr


def test_mutated_phantoms_into_the_scp_leave_the_node_up_and_every_job_explained(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fuzz.py"), "--scp", "--cases", "12",
         "--seed", "2024", "--timeout", "60", "--keep", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["crashes"] == [] and summary["internal_errors"] == []
    assert summary["hangs"] == [] and summary["without_reason"] == []
    assert summary["tracebacks"] == 0
    jobs = sum(v for k, v in summary["outcomes"].items() if k.startswith("job "))
    stores = sum(v for k, v in summary["outcomes"].items() if k.startswith("store "))
    assert stores + summary["outcomes"].get("not sendable", 0) == 12
    assert jobs == summary["outcomes"].get("store 0x0000", 0)  # each Success is a job
    assert result.returncode == 0, result.stdout + result.stderr
