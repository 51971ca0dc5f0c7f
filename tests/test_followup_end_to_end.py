"""Follow-up across the whole chain: a phantom patient examined twice, a year apart.

The first exam goes through a node worker into the node's database; the second is
analysed with `dxr-node analyze --history DB`, which must compare it with the first.
The true change comes from the phantom's geometry, not from the engine.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from statistics import fmean

import numpy as np
import pydicom
import pytest

from dxr_node.engine import indices
from dxr_node.node.config import NodeConfig
from dxr_node.node.store import InstanceInfo, Store
from dxr_node.node.worker import run_job
from dxr_node.phantom.acquisition import repositioned
from dxr_node.phantom.anatomy import with_cortical_thickness
from dxr_node.phantom.dicom import to_dataset, write_dataset
from dxr_node.phantom.generate import image_specs
from dxr_node.phantom.render import render

FIRST_DATE = dt.date(2025, 3, 3)
SECOND_DATE = dt.date(2026, 3, 3)


def _exam(tmp: Path, name: str, anatomy, acquisition, patient, date: dt.date) -> tuple[Path, dict]:
    pixels, truth = render(anatomy, acquisition)
    ds = to_dataset(pixels, acquisition, dataclasses.replace(patient, study_date=date),
                    f"followup-{name}")
    path = tmp / f"{name}.dcm"
    write_dataset(ds, path)
    return path, truth


def _true_dxr_bmd(truth: dict) -> float:
    vpa = fmean(indices.vpa_mm(truth["bones"][b]["cortical_thickness_mm"],
                               truth["bones"][b]["width_mm"]) for b in ("MC2", "MC3", "MC4"))
    return indices.dxr_bmd_g_cm2(vpa)


def _record_first_exam(config: NodeConfig, path: Path) -> None:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    with Store(config.database_path) as store:
        store.add_instance(InstanceInfo(
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), path=str(path),
            size_bytes=path.stat().st_size, study_instance_uid=str(ds.StudyInstanceUID),
            patient_id=str(ds.PatientID), study_date=str(ds.StudyDate), modality=ds.Modality))
        job = store.claim_job("test")
        assert run_job(config, store, job) == "done"


def _analyze_with_history(db: Path, path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "dxr_node.cli", "analyze", "--json",
                           "--history", str(db), str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("thickness_factor", [0.9, 1.0])
def test_change_since_prior_exam(tmp_path, thickness_factor):
    anatomy, acquisition, patient = image_specs(seed=31, index=0)
    acquisition = dataclasses.replace(acquisition, pixel_spacing_mm=0.1)
    first, first_truth = _exam(tmp_path, "first", anatomy, acquisition, patient, FIRST_DATE)
    later = repositioned(acquisition, np.random.default_rng(5))
    second, second_truth = _exam(tmp_path, "second",
                                 with_cortical_thickness(anatomy, thickness_factor), later,
                                 patient, SECOND_DATE)
    config = NodeConfig(data_dir=tmp_path / "node")
    _record_first_exam(config, first)

    record = _analyze_with_history(config.database_path, second)
    prior = record["prior"]
    assert prior is not None, record["clinical_reasons"]
    assert prior["date"] == FIRST_DATE.strftime("%Y%m%d")
    true_change = (_true_dxr_bmd(second_truth) / _true_dxr_bmd(first_truth) - 1) * 100
    assert prior["change_percent"] == pytest.approx(true_change, abs=0.5)
    days = (SECOND_DATE - FIRST_DATE).days
    assert prior["change_percent_per_year"] == pytest.approx(
        prior["change_percent"] * 365.25 / days, rel=1e-3)
    least_significant = 2.77 * prior["precision_cv_percent"]
    assert prior["significant"] is (abs(prior["change_percent"]) > least_significant)
    # A 10 % thinner cortex is a real loss; the same bone re-imaged is not.
    assert prior["significant"] is (thickness_factor < 1.0)


@pytest.mark.slow
def test_same_exam_sent_twice_is_not_its_own_prior(tmp_path):
    anatomy, acquisition, patient = image_specs(seed=31, index=0)
    path, _ = _exam(tmp_path, "only", anatomy, acquisition, patient, FIRST_DATE)
    config = NodeConfig(data_dir=tmp_path / "node")
    _record_first_exam(config, path)
    record = _analyze_with_history(config.database_path, path)
    assert record["status"] == "ok"
    assert record["prior"] is None
