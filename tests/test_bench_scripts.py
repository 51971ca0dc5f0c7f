"""The benchmark scripts still run against the current code (their figures are printed,
not asserted: machines are noisy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_console_runs_on_a_small_database():
    proc = subprocess.run([str(REPO / "scripts" / "bench_console"), "--exams", "60",
                           "--repeat", "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exams page" in proc.stdout and "exams API" in proc.stdout


@pytest.mark.slow
def test_bench_engine_quick_run_prints_every_figure(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_engine.py"),
                           "--quick", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for heading in ("ACCURACY", "PRECISION", "SPEED", "REAL", "MEMORY"):
        assert heading in proc.stdout, proc.stdout
