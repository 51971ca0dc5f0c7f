"""The benchmark scripts still run against the current code and their figures hold.

Accuracy figures are asserted against the engine's goals (phantom truth is exact, so these
are stable); times are only checked to be present, never bounded: machines are noisy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_console_runs_on_a_small_database():
    proc = subprocess.run([str(REPO / "scripts" / "bench_console"), "--exams", "60",
                           "--repeat", "2", "--json"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["exams"] == 60 and report["repeat"] == 2
    requests = report["requests"]
    assert {"exams page", "exams API", "overview page", "metrics"} <= set(requests)
    for name, figures in requests.items():
        # (with 2 requests the script's p95 is the faster one, so no order with the median)
        assert 0 < figures["median_ms"] <= figures["max_ms"], name
        assert 0 < figures["p95_ms"] <= figures["max_ms"], name
        assert figures["bytes"] > 0, name


@pytest.mark.slow
def test_bench_engine_quick_run_meets_the_accuracy_goals(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_engine.py"),
                           "--quick", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for heading in ("ACCURACY", "PRECISION", "SPEED", "REAL", "MEMORY"):
        assert heading in proc.stdout, proc.stdout
    summary = json.loads((REPO / "artifacts" / "bench_engine" / "summary.json").read_text())
    acc = summary["accuracy"]
    assert acc["images"] == 12
    assert acc["measured"] >= 11, acc["failures"]  # the quick set: one rejection at most
    assert acc["wrong_bone"] == []
    assert acc["T_mae_mm"] <= 0.050 and acc["W_mae_mm"] <= 0.100  # the engine's goals
    assert all(b["n"] >= 11 for b in acc["per_bone"].values()), acc["per_bone"]
    prec = summary["precision"]
    assert prec["failures"] == [] and len(prec["cv_percent"]) == prec["anatomies"] == 2
    assert prec["rms_cv_percent"] <= 0.5  # the precision goal (RMS CV of DXR-BMD)
    speed = summary["speed"]
    assert speed["images"] == 3 and speed["analysis_s_median"] > 0
    assert summary["peak_memory_mb"]["analysis"] > summary["peak_memory_mb"]["imports"] > 0


@pytest.mark.slow
def test_bench_wide_small_run_prints_every_figure():
    proc = subprocess.run([str(REPO / "scripts" / "bench_wide"), "--n", "2", "--hands", "1",
                           "--repeats", "2", "--jobs", "1", "--no-previews"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for heading in ("measured", "wrong bones reported ok", "T MAE", "DXR-BMD error",
                    "PRECISION"):
        assert heading in proc.stdout, proc.stdout


def _bench_realworld(image: str, *options: str, timeout: int = 600
                     ) -> subprocess.CompletedProcess:
    """scripts/bench_realworld on one real image of ../shared/realdata (skipped without)."""
    if not (REPO.parent / "shared" / "realdata" / image).is_file():
        pytest.skip("real radiographs not available (../shared/realdata absent)")
    proc = subprocess.run([str(REPO / "scripts" / "bench_realworld"), "--only", image,
                           "--jobs", "1", *options], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_bench_realworld_runs_on_one_real_image():
    proc = _bench_realworld("shsnet_rsna_train_img1.png", "--metamorphic", "--no-previews",
                            timeout=1200)
    assert "wrong bones reported ok: 0" in proc.stdout, proc.stdout
    assert "all" in proc.stdout and "/8 agree" in proc.stdout, proc.stdout


def test_bench_realworld_work_scales_probe_runs_both_sizes():
    """--work-scales analyses the image again with the locator's working copy at 448 and
    576 px and judges each against the shipped 512 px run."""
    proc = _bench_realworld("shsnet_rsna_train_img43.png", "--work-scales", "--no-previews")
    assert "WORKING SCALE" in proc.stdout, proc.stdout
    summary = json.loads((REPO / "artifacts" / "realworld"
                          / "summary_work_scales_only.json").read_text())
    assert set(summary["work_scales"]) == {"448", "576"}, summary["work_scales"]
    assert [r["transform"] for r in summary["records"]] == ["original", "work0.875",
                                                            "work1.125"]
    for size, figures in summary["work_scales"].items():
        assert figures["images"] == 1
        assert f"{size} px: {figures['ok']}/1 ok, {figures['agree']}/1 agree" in proc.stdout


@pytest.mark.slow
def test_bench_realworld_turned_copies_of_one_annotated_image():
    proc = _bench_realworld("shsnet_rsna_train_img1.png", "--turned")
    assert "4 copies" in proc.stdout and "of which on another bone: 0" in proc.stdout, (
        proc.stdout)


@pytest.mark.slow
def test_bench_cluster_small_run_figures_are_sane():
    proc = subprocess.run([str(REPO / "scripts" / "bench_cluster"), "--images", "4",
                           "--nodes", "1,2", "--senders", "2", "--store-images", "20",
                           "--json"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 and "not installed" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    runs = [*report["postgresql_runs"], report["sqlite_run"]]
    assert [r["nodes"] for r in report["postgresql_runs"]] == [1, 2]
    for run in runs:  # every image acknowledged and its SR delivered, figures present
        assert run["acknowledged"] == run["delivered_srs"] == run["images"] == 4
        assert run["images_per_minute"] > 0
        assert 0 < run["latency_median_s"] <= run["latency_p95_s"]
    for backend in ("sqlite", "postgresql"):
        assert report["store_cost"][backend]["ms_per_image"] > 0
    assert report["postgresql_vs_sqlite"]["store_ms_ratio"] > 0
