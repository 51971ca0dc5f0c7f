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


@pytest.mark.slow
def test_bench_wide_small_run_prints_every_figure():
    proc = subprocess.run([str(REPO / "scripts" / "bench_wide"), "--n", "2", "--hands", "1",
                           "--repeats", "2", "--jobs", "1", "--no-previews"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for heading in ("measured", "wrong bones reported ok", "T MAE", "DXR-BMD error",
                    "PRECISION"):
        assert heading in proc.stdout, proc.stdout


@pytest.mark.slow
def test_bench_realworld_runs_on_one_real_image():
    if not (REPO.parent / "shared" / "realdata" / "shsnet_rsna_train_img1.png").is_file():
        pytest.skip("real radiographs not available (../shared/realdata absent)")
    proc = subprocess.run([str(REPO / "scripts" / "bench_realworld"), "--only",
                           "shsnet_rsna_train_img1.png", "--metamorphic", "--jobs", "1",
                           "--no-previews"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrong bones reported ok: 0" in proc.stdout, proc.stdout
    assert "all" in proc.stdout and "/8 agree" in proc.stdout, proc.stdout
