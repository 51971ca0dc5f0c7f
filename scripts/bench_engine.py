"""Engine benchmark: accuracy, precision, real images, speed and memory in one run.

Prints every figure the engine issue asks for and writes artifacts/bench_engine/
(summary.json, overlay previews of phantoms and real images). Run it as
`scripts/bench_engine` (add `--quick` for a smaller run).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# One core, as the speed goal says: set before numpy/OpenCV start their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

from dxr_node.engine.analyze import analyze  # noqa: E402
from dxr_node.engine.image import load_radiograph, to_display_uint8  # noqa: E402
from dxr_node.engine.result import BONE_NAMES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"
OUT = REPO / "artifacts" / "bench_engine"
NEIGHBOURS = ("MC2", "MC3", "MC4", "MC5")


def generate(outdir: Path, n: int, seed: int, **options) -> dict:
    """Render phantoms in a child process so its memory is not the engine's peak."""
    code = ("import sys, json; from dxr_node.phantom.generate import write_phantom_set; "
            "write_phantom_set(sys.argv[1], n=int(sys.argv[2]), seed=int(sys.argv[3]), "
            "**json.loads(sys.argv[4]))")
    subprocess.run([sys.executable, "-c", code, str(outdir), str(n), str(seed),
                    json.dumps(options)], check=True)
    return json.loads((outdir / "truth.json").read_text())


def right_bone(name: str, center_rc, truth_bones: dict, spacing: float) -> bool:
    def distance(bone: dict) -> float:
        p = np.asarray(center_rc, float)
        a, b = np.asarray(bone["proximal_rc"], float), np.asarray(bone["distal_rc"], float)
        t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0, 1)
        return float(np.linalg.norm(p - (a + t * (b - a))))
    distances = {n: distance(truth_bones[n]) for n in NEIGHBOURS if n in truth_bones}
    half_width_px = truth_bones[name]["width_mm"] / 2 / spacing
    return min(distances, key=distances.get) == name and distances[name] < half_width_px


def analyse_file(path: Path, spacing: float | None = None):
    radiograph = load_radiograph(path, spacing)
    started = time.perf_counter()
    result = analyze(radiograph, started=started)
    return result, radiograph, (time.perf_counter() - started)


def save_preview(result, radiograph, target: Path) -> None:
    """The overlay a radiologist would see (secondary capture), with the clinical panel."""
    from dxr_node.clinical import interpret
    from dxr_node.reports import render_overlay

    interpretation = interpret(result, radiograph.dataset)
    rgb = render_overlay(to_display_uint8(radiograph.pixels), result, interpretation)
    target.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(target), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def accuracy(workdir: Path, n: int, previews: int) -> dict:
    truth = generate(workdir / "accuracy", n, seed=2026)
    errors = {"T": [], "W": []}
    per_bone = {b: {"T": [], "W": []} for b in BONE_NAMES}
    failures, wrong_bone, seconds = [], [], []
    for index, (name, record) in enumerate(truth.items()):
        result, radiograph, elapsed = analyse_file(workdir / "accuracy" / name)
        seconds.append(elapsed)
        if index < previews:
            save_preview(result, radiograph, OUT / "phantoms" / name.replace(".dcm", ".png"))
        if result.status != "ok":
            failures.append(f"{name}: {'; '.join(result.reasons)}")
        for bone_name, bone in result.bones.items():
            true_bone = record["bones"][bone_name]
            if not right_bone(bone_name, bone.center_rc, record["bones"],
                              record["pixel_spacing_mm"]):
                wrong_bone.append(f"{name}:{bone_name}")
                continue
            dt = bone.cortical_thickness_mm - true_bone["cortical_thickness_mm"]
            dw = bone.width_mm - true_bone["width_mm"]
            errors["T"].append(dt)
            errors["W"].append(dw)
            per_bone[bone_name]["T"].append(dt)
            per_bone[bone_name]["W"].append(dw)
    spacings = sorted({r["pixel_spacing_mm"] for r in truth.values()})
    rotations = [abs(r["rotation_deg"]) for r in truth.values()]
    return {
        "images": len(truth),
        "measured": len(truth) - len(failures),
        "failures": failures,
        "wrong_bone": wrong_bone,
        "spacing_range_mm": [spacings[0], spacings[-1]],
        "max_rotation_deg": max(rotations),
        "hands": sorted({r["laterality"] for r in truth.values()}),
        "T_mae_mm": _mae(errors["T"]), "T_bias_mm": _mean(errors["T"]),
        "W_mae_mm": _mae(errors["W"]), "W_bias_mm": _mean(errors["W"]),
        "T_max_abs_mm": max(map(abs, errors["T"]), default=None),
        "W_max_abs_mm": max(map(abs, errors["W"]), default=None),
        "per_bone": {b: {"T_mae_mm": _mae(v["T"]), "W_mae_mm": _mae(v["W"]), "n": len(v["T"])}
                     for b, v in per_bone.items()},
        "seconds_per_image_mixed": statistics.median(seconds),
    }


def precision(workdir: Path, anatomies: int, repeats: int) -> dict:
    cvs, failures = [], []
    for seed in range(anatomies):
        folder = workdir / f"precision_{seed}"
        truth = generate(folder, repeats, seed=100 + seed, same_anatomy=True)
        values = []
        for name in truth:
            result, _, _ = analyse_file(folder / name)
            if result.status == "ok":
                values.append(result.dxr_bmd_g_cm2)
            else:
                failures.append(f"anatomy {seed} {name}: {'; '.join(result.reasons)}")
        if len(values) >= 2:
            cvs.append(statistics.stdev(values) / statistics.fmean(values) * 100)
    rms = math.sqrt(statistics.fmean([c * c for c in cvs])) if cvs else None
    return {"anatomies": anatomies, "repeats": repeats, "cv_percent": cvs,
            "rms_cv_percent": rms, "failures": failures}


def speed(workdir: Path, n: int) -> dict:
    """Seconds per image at 0.1 mm (about 2000 x 2500 pixels) on one core, after warm-up."""
    folder = workdir / "speed"
    code = ("import sys; from pathlib import Path; from dataclasses import replace; "
            "from dxr_node.phantom.generate import image_specs; "
            "from dxr_node.phantom.render import render; "
            "from dxr_node.phantom.dicom import to_dataset, write_dataset; "
            "out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)\n"
            "for i in range(int(sys.argv[2])):\n"
            "    anatomy, acq, patient = image_specs(7, i)\n"
            "    acq = replace(acq, pixel_spacing_mm=0.1)\n"
            "    pixels, _ = render(anatomy, acq)\n"
            "    write_dataset(to_dataset(pixels, acq, patient, f'speed-{i}'), "
            "out / f'speed_{i}.dcm')")
    subprocess.run([sys.executable, "-c", code, str(folder), str(n)], check=True)
    files = sorted(folder.glob("*.dcm"))
    analyse_file(files[0])  # warm-up: imports, first allocations
    analysis_s, report_s, shapes = [], [], []
    from dxr_node.clinical import interpret
    from dxr_node.reports import build_reports

    for path in files:
        result, radiograph, elapsed = analyse_file(path)
        analysis_s.append(elapsed)
        shapes.append(radiograph.pixels.shape)
        started = time.perf_counter()
        build_reports(radiograph.dataset, result, interpret(result, radiograph.dataset),
                      to_display_uint8(radiograph.pixels), kinds=("SR", "SC", "GSPS", "PDF"))
        report_s.append(time.perf_counter() - started)
    return {"images": len(files), "image_shape": list(shapes[0]),
            "analysis_s_median": statistics.median(analysis_s),
            "analysis_s_max": max(analysis_s),
            "reports_s_median": statistics.median(report_s),
            "reports_s_max": max(report_s)}


def peak_memory(folder: Path) -> dict:
    """Peak RSS (MB) of a new process: after imports, after analysis, after reports."""
    code = ("import json, sys; from pathlib import Path\n"
            "def rss():  # VmHWM: this process's own peak (ru_maxrss survives exec)\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024\n"
            "from dxr_node.pipeline import process_file\n"
            "out = {'imports': rss()}\n"
            "files = sorted(Path(sys.argv[1]).glob('*.dcm'))\n"
            "for f in files: process_file(f, kinds=())\n"
            "out['analysis'] = rss()\n"
            "for f in files: process_file(f, kinds=('SR', 'SC', 'GSPS', 'PDF'))\n"
            "out['with_reports'] = rss()\n"
            "print(json.dumps(out))")
    run = subprocess.run([sys.executable, "-c", code, str(folder)], check=True,
                         capture_output=True, text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def real_images() -> dict:
    manifest = REALDATA / "MANIFEST.tsv"
    if not manifest.is_file():
        return {"skipped": f"{REALDATA} absent"}
    landmarks_file = REPO / "tests" / "data" / "realdata_landmarks.json"
    landmarks = json.loads(landmarks_file.read_text()) if landmarks_file.is_file() else {}
    rows = []
    with manifest.open() as handle:
        for entry in csv.DictReader(handle, delimiter="\t"):
            path = REALDATA / entry["file"]
            result, radiograph, elapsed = analyse_file(path, 0.1)
            save_preview(result, radiograph, OUT / "real" / (path.stem + ".png"))
            marks = landmarks.get(entry["file"], {})
            rows.append({
                "file": entry["file"], "age": entry["age"], "status": result.status,
                "reasons": list(result.reasons), "laterality": result.laterality,
                "mci": {b: round(m.mci, 3) for b, m in result.bones.items()},
                "near_landmark": {b: _near(m.center_rc, marks) == b
                                  for b, m in result.bones.items() if marks},
                "seconds": round(elapsed, 3),
            })
    return {"images": rows}


def _near(center_rc, marks: dict) -> str | None:
    points = {k: v for k, v in marks.items() if k in BONE_NAMES and isinstance(v, list)}
    if not points:
        return None
    return min(points, key=lambda k: math.dist(center_rc, points[k]))


def _mean(values):
    return statistics.fmean(values) if values else None


def _mae(values):
    return statistics.fmean(abs(v) for v in values) if values else None


def _fmt(value, spec=".3f"):
    return "n/a" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    parser.add_argument("--workdir", default=None, help="where phantoms are written")
    args = parser.parse_args()
    import tempfile

    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dxr-bench-"))
    n_acc, anatomies, n_speed = (12, 2, 3) if args.quick else (40, 6, 8)

    summary = {"accuracy": accuracy(workdir, n_acc, previews=4)}
    acc = summary["accuracy"]
    print(f"ACCURACY  {acc['measured']}/{acc['images']} phantoms measured "
          f"(spacing {acc['spacing_range_mm'][0]}-{acc['spacing_range_mm'][1]} mm, "
          f"rotation up to {acc['max_rotation_deg']:.1f} deg, hands {acc['hands']})")
    print(f"          regions on the wrong bone: {len(acc['wrong_bone'])} {acc['wrong_bone']}")
    print(f"          T MAE {_fmt(acc['T_mae_mm'])} mm (bias {_fmt(acc['T_bias_mm'], '+.3f')},"
          f" max {_fmt(acc['T_max_abs_mm'])})   goal <= 0.050")
    print(f"          W MAE {_fmt(acc['W_mae_mm'])} mm (bias {_fmt(acc['W_bias_mm'], '+.3f')},"
          f" max {_fmt(acc['W_max_abs_mm'])})   goal <= 0.100")
    for failure in acc["failures"]:
        print(f"          not measured: {failure}")

    summary["precision"] = prec = precision(workdir, anatomies, repeats=5)
    print(f"PRECISION {prec['anatomies']} anatomies x {prec['repeats']} acquisitions: "
          f"RMS CV of DXR-BMD {_fmt(prec['rms_cv_percent'])} %   goal <= 0.5 %  "
          f"(per anatomy: {', '.join(_fmt(c, '.2f') for c in prec['cv_percent'])})")
    for failure in prec["failures"]:
        print(f"          not measured: {failure}")

    summary["speed"] = spd = speed(workdir, n_speed)
    print(f"SPEED     {spd['images']} images {spd['image_shape'][0]}x{spd['image_shape'][1]} "
          f"at 0.1 mm, one core: analysis median {spd['analysis_s_median']:.2f} s "
          f"(max {spd['analysis_s_max']:.2f})   goal <= 0.5 s (issue 9; 0.3 s aimed at)")
    print(f"          report objects (SR+SC+GSPS+PDF): median {spd['reports_s_median']:.2f} s "
          f"(max {spd['reports_s_max']:.2f})   goal <= 0.3 s")

    summary["real"] = real = real_images()
    if "skipped" in real:
        print(f"REAL      skipped: {real['skipped']}")
    else:
        print("REAL      file                          status    lat  MCI (MC2/MC3/MC4)  "
              "on annotated bone")
        for row in real["images"]:
            mci = "/".join(_fmt(row["mci"].get(b), ".2f") for b in BONE_NAMES)
            near = ",".join(f"{b}:{'y' if v else 'N'}" for b, v in row["near_landmark"].items())
            print(f"          {row['file']:30} {row['status']:9} {row['laterality'] or '-':4}"
                  f" {mci:18} {near}")
            if row["status"] != "ok":
                print(f"            reasons: {'; '.join(row['reasons'])}")

    summary["peak_memory_mb"] = peak_mb = peak_memory(workdir / "speed")
    print(f"MEMORY    peak resident set of a fresh process analysing and reporting the 0.1 mm "
          f"images: {peak_mb['analysis']:.0f} MB (imports {peak_mb['imports']:.0f}, with "
          f"report objects {peak_mb['with_reports']:.0f})   goal <= 500 MB")
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"previews and summary.json in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
