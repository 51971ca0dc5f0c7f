"""Fuzz `dxr-node analyze` (or, with --scp, the node's SCP) with mutated phantom DICOM
files (run through scripts/fuzz).

Small phantoms in several transfer syntaxes are mutated with a seeded RNG (bit flips,
truncations, byte splices, and edits of the attributes decoders and report writers trust:
Rows, Columns, bit depths, samples, photometric, frames, spacing, dates...). The cases go
through `dxr-node analyze --json` in batches, as a user's batch would; a batch that dies
or loses a line is re-run one file per process so the crash is pinned to its file.

Per case: a crash is a process killed by a signal or a missing output line; an internal
error is a reason starting "internal error" (a bug, not a rejection); a hang is a batch
past its deadline; "no reason" is an error without a reason. Exit status: 0 when all of
those are zero, 1 otherwise. Peak memory is the largest max-RSS of one analyze process
(a batch's peak bounds each of its inputs'; --batch 1 measures each input alone).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from dxr_node.phantom.acquisition import Acquisition
from dxr_node.phantom.anatomy import HandAnatomy
from dxr_node.phantom.dicom import TRANSFER_SYNTAXES, Patient, to_dataset, write_dataset
from dxr_node.phantom.render import render

# Coarse pixels keep each analysis short; the decoders see the same structures.
SMALL = Acquisition(pixel_spacing_mm=0.2, field_mm=(240.0, 190.0), marker=False,
                    noise_seed=3, photometric="MONOCHROME2")
SYNTAXES = ("explicit", "rle", "j2k-lossless", "jpeg-ls", "jpeg-lossless-sv1")
ANALYZE = [sys.executable, "-m", "dxr_node.cli", "analyze", "--json"]

# Attribute edits: (keyword, candidate values); None deletes the attribute.
EDITS: dict[str, list] = {
    "Rows": [0, 1, 3, 65535, "x4", "/2"],
    "Columns": [0, 1, 65535, "x4", "/2"],
    "BitsAllocated": [0, 1, 8, 12, 32, 64, None],
    "BitsStored": [0, 1, 15, 16, 17, 32],
    "HighBit": [0, 31, 40],
    "SamplesPerPixel": [0, 2, 3, 4, None],
    "PhotometricInterpretation": ["RGB", "YBR_FULL", "PALETTE COLOR", "XYZ", "", None],
    "PixelRepresentation": [1, 2, None],
    "NumberOfFrames": [0, 2, 100000, -1],
    "PlanarConfiguration": [0, 1, 2],
    "PixelSpacing": [[0, 0], [1e9, 1e9], [-0.1, -0.1], [0.1], ["nan", "nan"], None],
    "ImagerPixelSpacing": [[0.1], [0, 0], None],
    "RescaleSlope": [0, -1, 1e30, "nan"],
    "RescaleIntercept": [1e30, -1e30],
    "WindowCenter": [None, 0, [1, 2, 3]],
    "WindowWidth": [0, -5],
    "PatientSex": ["X1", "", "MALE"],
    "StudyDate": ["<b>2024</b>", "20241399", ""],
    "PatientBirthDate": ["19000000", "x"],
    "Modality": [None, "", "CT"],
    "SOPInstanceUID": [None, "", "1" * 80],
    "StudyInstanceUID": [None, ""],
    "ImageLaterality": ["Q", "LR", None],
    "PixelIntensityRelationship": ["LIN", "LOG"],
    "PixelIntensityRelationshipSign": [-1, 0, 5],
}


@dataclass
class Summary:
    cases: int = 0
    crashes: list[str] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    without_reason: list[str] = field(default_factory=list)
    tracebacks: int = 0
    bad_exit_status: list[int] = field(default_factory=list)
    objects_not_built: list[str] = field(default_factory=list)  # reported, not failing
    peak_rss_mb: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.crashes or self.internal_errors or self.hangs or self.without_reason
                    or self.tracebacks or self.bad_exit_status)


def make_bases(folder: Path) -> list[Path]:
    """One small phantom in each available transfer syntax."""
    anatomy = HandAnatomy.random(np.random.default_rng(8))
    pixels, _ = render(anatomy, SMALL)
    ds = to_dataset(pixels, SMALL, Patient.random(np.random.default_rng(8)), "fuzz-base")
    bases = []
    for syntax in SYNTAXES:
        tool = TRANSFER_SYNTAXES[syntax][1]
        if tool != "pydicom" and shutil.which(tool.split()[0]) is None:
            continue  # dcmtk absent: fuzz what we can make
        path = folder / f"base_{syntax}.dcm"
        write_dataset(ds, path, syntax)
        bases.append(path)
    return bases


def _edit(ds: pydicom.Dataset, keyword: str, value: object) -> None:
    if value is None:
        if keyword in ds:
            delattr(ds, keyword)
        return
    if value in ("x4", "/2"):
        current = int(ds.get(keyword, 1) or 1)
        value = current * 4 if value == "x4" else max(current // 2, 1)
    setattr(ds, keyword, value)


def mutate(base: bytes, base_path: Path, rng: np.random.Generator, out: Path) -> str:
    """Write one mutated file to ``out``; returns a description of the mutation."""
    kind = rng.choice(["bits", "truncate", "splice", "edit", "edit", "edit2"])
    data = bytearray(base)
    if kind == "bits":
        count = int(rng.integers(1, 40))
        for _ in range(count):
            position = int(rng.integers(132, len(data)))
            data[position] ^= 1 << int(rng.integers(0, 8))
        out.write_bytes(bytes(data))
        return f"{count} bit flips"
    if kind == "truncate":
        cut = int(rng.integers(0, len(data)))
        out.write_bytes(bytes(data[:cut]))
        return f"truncated at {cut} of {len(data)}"
    if kind == "splice":
        position = int(rng.integers(132, len(data)))
        length = int(rng.integers(1, 64))
        if rng.random() < 0.5:
            del data[position:position + length]
            what = "deleted"
        else:
            data[position:position] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
            what = "inserted"
        out.write_bytes(bytes(data))
        return f"{what} {length} bytes at {position}"
    ds = pydicom.dcmread(base_path)
    edits = []
    for _ in range(1 if kind == "edit" else 2):
        keyword = str(rng.choice(list(EDITS)))
        value = EDITS[keyword][int(rng.integers(0, len(EDITS[keyword])))]
        try:
            _edit(ds, keyword, copy.deepcopy(value))
        except (TypeError, ValueError, OverflowError):
            continue  # pydicom refuses to hold the value at all: not a file we can make
        edits.append(f"{keyword}={value!r}")
    try:
        ds.save_as(out)
    except Exception:  # noqa: BLE001  pydicom cannot even write it: fall back to bit flips
        return mutate(base, base_path, rng, out)
    return "edit " + ", ".join(edits)


def _run(files: list[Path], timeout_s: float) -> tuple[int | None, str, str, float]:
    """(exit status or None on hang, stdout, stderr, max RSS MB) of one analyze process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # --out: the report objects (SR, SC, GSPS, PDF) are built and written too.
        objects = files[0].parent / "objects"
        process = subprocess.Popen([*ANALYZE, "--out", str(objects), *map(str, files)],
                                   stdout=out, stderr=err,
                                   env={**os.environ, "DXR_NODE_DEBUG": ""})
        deadline = time.monotonic() + timeout_s
        status = rusage = None
        while time.monotonic() < deadline:
            pid, wait_status, rusage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                status = os.waitstatus_to_exitcode(wait_status)
                break
            time.sleep(0.05)
        if status is None:
            process.kill()
            _, _, rusage = os.wait4(process.pid, 0)
        out.seek(0)
        err.seek(0)
        rss = rusage.ru_maxrss / 1024 if rusage else 0.0
        return (status, out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"), rss)


def judge(files: list[Path], summary: Summary, timeout_s: float, describe: dict[str, str],
          single: bool = False) -> None:
    status, stdout, stderr, rss = _run(files, timeout_s * len(files))
    summary.peak_rss_mb = max(summary.peak_rss_mb, rss)
    records = {}
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[record.get("source")] = record
    lost = [f for f in files if str(f) not in records]
    if (status is None or status < 0 or lost) and not single:
        for path in files:  # pin the crash or hang to its file
            judge([path], summary, timeout_s, describe, single=True)
        return
    if "Traceback" in stderr:
        summary.tracebacks += 1
    if status is not None and status not in (0, 1, 2):
        summary.bad_exit_status.append(status)
    for path in files:
        label = f"{path.name} ({describe.get(path.name, '')})"
        if status is None:
            summary.hangs.append(label)
            continue
        record = records.get(str(path))
        if record is None:
            summary.crashes.append(f"{label}: exit {status}, {stderr.strip()[-200:]}")
            continue
        summary.outcomes[record["status"]] = summary.outcomes.get(record["status"], 0) + 1
        reasons = record.get("reasons") or []
        unbuilt = [r for r in reasons if str(r).startswith("report objects not")]
        if unbuilt:  # a reason, not a crash; but a measurable image should have objects
            summary.objects_not_built.append(f"{label}: {unbuilt[0]}")
        if any(p.get("code") == "internal_error" for p in record.get("problems") or []):
            summary.internal_errors.append(f"{label}: {reasons[0]}")
        elif record["status"] != "ok" and not reasons:
            summary.without_reason.append(label)


def fuzz(cases: int, seed: int, work: Path, batch: int, timeout_s: float) -> Summary:
    rng = np.random.default_rng(seed)
    bases = make_bases(work)
    originals = {path: path.read_bytes() for path in bases}
    describe: dict[str, str] = {}
    files = []
    for index in range(cases):
        base = bases[index % len(bases)]
        target = work / f"case_{index:04d}.dcm"
        describe[target.name] = f"{base.stem}: {mutate(originals[base], base, rng, target)}"
        files.append(target)
    summary = Summary(cases=cases)
    for start in range(0, len(files), batch):
        judge(files[start:start + batch], summary, timeout_s, describe)
    return summary


def fuzz_scp(cases: int, seed: int, work: Path, timeout_s: float) -> Summary:
    """The same cases C-STOREd into a running `dxr-node serve` (one association each).

    Judged from the node: it must stay up and answer every store; each job must end
    done, failed or skipped, a failure with its reason; a worker death is a crash, an
    "analysis error" an internal error, a job still open after the deadline a hang.
    """
    import socket as socketlib
    import sqlite3

    from pynetdicom import AE, _config

    rng = np.random.default_rng(seed)
    bases = make_bases(work)
    files, describe = [], {}
    for index in range(cases):
        # A SOP Instance UID of its own per case, else the node analyses one per base.
        base = work / f"base_{index:04d}.dcm"
        ds = pydicom.dcmread(bases[index % len(bases)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.{seed}{index:06d}"
        ds.save_as(base)
        target = work / f"case_{index:04d}.dcm"
        what = mutate(base.read_bytes(), base, rng, target)
        describe[target.name] = f"{bases[index % len(bases)].stem}: {what}"
        files.append(target)
    with socketlib.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = work / "node"
    log_path = work / "node.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DXR_NODE")}
    env.update(DXR_NODE__WEB__ENABLED="false", DXR_NODE__MIN_FREE_DISK_MB="1")
    with open(log_path, "wb") as log_file:
        node = subprocess.Popen([sys.executable, "-m", "dxr_node.cli", "serve", "--data-dir",
                                 str(data), "--port", str(port), "--workers", "1"],
                                stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    summary = Summary(cases=cases)
    try:
        deadline = time.monotonic() + 60
        while "event=ready" not in log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or node.poll() is not None:
                raise RuntimeError("the node did not start: " + log_path.read_text()[-500:])
            time.sleep(0.2)
        _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes as they are
        sent = 0
        for path in files:
            try:
                meta = pydicom.filereader.read_file_meta_info(path)
                contexts = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            except Exception:  # noqa: BLE001  no usable file meta: a sender could not send it
                summary.outcomes["not sendable"] = summary.outcomes.get("not sendable", 0) + 1
                continue
            ae = AE(ae_title="FUZZ")
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
            try:
                ae.add_requested_context(*contexts)
                assoc = ae.associate("127.0.0.1", port, ae_title="DXRNODE")
            except Exception:  # noqa: BLE001  e.g. a mutated UID pynetdicom will not send
                summary.outcomes["not sendable"] = summary.outcomes.get("not sendable", 0) + 1
                continue
            if not assoc.is_established:
                summary.crashes.append(f"{path.name}: association refused (node down?)")
                continue
            try:
                status = assoc.send_c_store(path).get("Status")
            except Exception as exc:  # noqa: BLE001  pynetdicom refuses to read the file
                status = f"not sent: {type(exc).__name__}"
            finally:
                if assoc.is_established:
                    assoc.release()
            key = f"store 0x{status:04X}" if isinstance(status, int) else str(status)
            summary.outcomes[key] = summary.outcomes.get(key, 0) + 1
            sent += 1
        database = data / "dxr-node.sqlite"
        deadline = time.monotonic() + timeout_s * max(sent, 1)
        while time.monotonic() < deadline:
            with sqlite3.connect(database, timeout=30) as db:
                open_jobs = db.execute("SELECT COUNT(*) FROM jobs WHERE state IN "
                                       "('queued','running')").fetchone()[0]
            if not open_jobs:
                break
            time.sleep(0.5)
        with sqlite3.connect(database, timeout=30) as db:
            rows = db.execute("SELECT j.state, j.error, i.sop_instance_uid FROM jobs j "
                              "JOIN instances i ON i.id = j.instance_id").fetchall()
        for state, error, uid in rows:
            summary.outcomes[f"job {state}"] = summary.outcomes.get(f"job {state}", 0) + 1
            if state in ("queued", "running"):
                summary.hangs.append(uid)
            elif state in ("failed", "skipped") and not error:
                summary.without_reason.append(uid)
            elif error and error.startswith("analysis error"):
                summary.internal_errors.append(f"{uid}: {error}")
        text = log_path.read_text(errors="replace")
        summary.crashes += [line for line in text.splitlines() if "event=worker_died" in line]
        summary.tracebacks = text.count("Traceback")
        if node.poll() is not None:
            summary.crashes.append(f"the node exited with {node.returncode}")
        summary.peak_rss_mb = _peak_rss_mb(node.pid)
    finally:
        if node.poll() is None:
            node.terminate()
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, 9)
                node.wait()
    return summary


def _peak_rss_mb(pid: int) -> float:
    """Largest VmHWM (peak resident memory) of the node and its worker processes."""
    peak = 0.0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if status.parent.name != str(pid) and fields.get("PPid", "").strip() != str(pid):
            continue
        peak = max(peak, int(fields.get("VmHWM", "0 kB").split()[0]) / 1024)
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--batch", type=int, default=20, help="files per analyze process")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds allowed per file before it counts as a hang")
    parser.add_argument("--keep", metavar="DIR", help="keep the cases in DIR")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--scp", action="store_true",
                        help="C-STORE the cases into a running dxr-node serve instead")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="pydicom")  # we write invalid values on purpose
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dxr-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        if args.scp:
            summary = fuzz_scp(args.cases, args.seed, work, args.timeout)
        else:
            summary = fuzz(args.cases, args.seed, work, args.batch, args.timeout)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps({**summary.__dict__, "seconds": round(seconds, 1)}))
    else:
        print(f"cases {summary.cases}  crashes {len(summary.crashes)}  internal errors "
              f"{len(summary.internal_errors)}  hangs {len(summary.hangs)}  without reason "
              f"{len(summary.without_reason)}  tracebacks {summary.tracebacks}  objects not "
              f"built {len(summary.objects_not_built)}  peak memory "
              f"{summary.peak_rss_mb:.0f} MB  ({seconds:.0f} s, seed {args.seed})")
        print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.outcomes.items())))
        for title, items in (("crash", summary.crashes), ("internal error",
                             summary.internal_errors), ("hang", summary.hangs),
                             ("no reason", summary.without_reason),
                             ("objects not built", summary.objects_not_built)):
            for item in items:
                print(f"  {title}: {item}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
