"""Reader review in a real browser (Debian's chromium driven by Playwright) on a real node
with ``review.mode = "hold-until-verified"`` and a dcmtk storescp PACS.

A phantom is sent; nothing reaches the PACS. Its engine result is then given a
misplaced MC3 (the stored measurement moved onto the gap towards MC4, as a mislocated
bone would look). A viewer account cannot approve (403). A reviewer signs in, clicks
MC3's proximal and distal ends on the radiograph, sees the re-measured values and
approves; the PACS then receives exactly one final SR, SC, GSPS and PDF, the SR
VERIFIED by the reader, naming the preliminary SR as predecessor, with MC3 within
0.02 mm of the phantom's truth. Screenshots before and after go to artifacts/review/.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from console_testing import free_port
from test_console_browser import CHROMIUM, CHROMIUM_ARGS, _healthy, _listening, _wait

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "review"
PASSWORD = "correct horse battery"
TOLERANCE_MM = 0.02

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
    pytest.mark.skipif(not (shutil.which("storescu") and shutil.which("storescp")),
                       reason="needs dcmtk storescu and storescp"),
]


def _add_user(data_dir: Path, env: dict, name: str, role: str, person: str) -> None:
    subprocess.run([sys.executable, "-m", "dxr_node.cli", "user", "add", name, "--role", role,
                    "--name", person, "--password-stdin", "--data-dir", str(data_dir)],
                   input=PASSWORD + "\n", text=True, check=True, env=env, timeout=60,
                   capture_output=True)


def _api(url: str, user: str, method: str = "GET") -> tuple[int, dict]:
    token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(url, method=method,
                                     headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def node(tmp_path):
    scp_port, console_port, pacs_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DXR_NODE")}
    data_dir = tmp_path / "node"
    _add_user(data_dir, env, "ann", "reviewer", "Reader^Ann")
    _add_user(data_dir, env, "vic", "viewer", "Viewer^Vic")
    env.update(DXR_NODE__WEB__PORT=str(console_port), DXR_NODE__REVIEW__MODE="hold-until-verified",
               DXR_NODE__REVIEW__ORGANISATION="Test Hospital",
               DXR_NODE__SEND_OBJECTS="SR,SC,GSPS,PDF")
    pacs_dir = tmp_path / "pacs"
    pacs_dir.mkdir()
    pacs = subprocess.Popen(["storescp", "-aet", "PACS", "+xa", "-od", str(pacs_dir),
                             str(pacs_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = open(tmp_path / "node.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dxr_node.cli", "serve", "--data-dir", str(data_dir),
         "--port", str(scp_port), "--workers", "1",
         "--destination", f"PACS@127.0.0.1:{pacs_port}"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{console_port}"
    try:
        _wait(lambda: _listening(pacs_port), 30, "storescp")
        _wait(lambda: _healthy(url) or process.poll() is not None, 60, "the node's console")
        assert process.poll() is None, (tmp_path / "node.log").read_text()
        yield {"url": url, "scp_port": scp_port, "pacs": pacs_dir, "data": data_dir}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
        pacs.terminate()
        pacs.wait(timeout=30)


def _misplace(database: Path, bone: str, toward: str) -> None:
    """Move ``bone``'s stored measurement halfway towards ``toward``, values made wrong:
    what a reader sees when the locator put a band on the wrong place."""
    with sqlite3.connect(database) as db:
        (raw,) = db.execute("SELECT analysis_json FROM results WHERE job_id = 1").fetchone()
        analysis = json.loads(raw)
        moved, other = analysis["bones"][bone], analysis["bones"][toward]
        dr = (other["center_rc"][0] - moved["center_rc"][0]) / 2
        dc = (other["center_rc"][1] - moved["center_rc"][1]) / 2

        def shift(value):
            if isinstance(value[0], list):
                return [shift(v) for v in value]
            return [value[0] + dr, value[1] + dc]

        for key in ("center_rc", "proximal_rc", "distal_rc", "roi_rc", "outer_edge_a_rc",
                    "inner_edge_a_rc", "inner_edge_b_rc", "outer_edge_b_rc"):
            moved[key] = shift(moved[key])
        moved["cortical_thickness_mm"] *= 1.3
        moved["width_mm"] *= 1.2
        db.execute("UPDATE results SET analysis_json = ? WHERE job_id = 1",
                   (json.dumps(analysis),))


def _tracked_values(item, found: dict, group: str | None = None) -> dict:
    """{tracking identifier: {concept meaning: value}} of an SR tree's NUM items."""
    for child in item.get("ContentSequence", []):
        name = child.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" \
            in child else ""
        if name == "Tracking Identifier":
            group = str(child.TextValue)
        if child.ValueType == "NUM" and group:
            value = float(child.MeasuredValueSequence[0].NumericValue)
            found.setdefault(group, {})[name] = value
        _tracked_values(child, found, group)
    return found


def test_reviewer_corrects_a_misplaced_bone_and_pacs_gets_the_verified_sr(node, tmp_path):
    from playwright.sync_api import sync_playwright

    from dxr_node.phantom.generate import write_phantom_set

    write_phantom_set(tmp_path / "phantom", 1, seed=5)
    truth = json.loads((tmp_path / "phantom" / "truth.json").read_text())["phantom_0000.dcm"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = node["url"]
    subprocess.run(["storescu", "-aec", "DXRNODE", "127.0.0.1", str(node["scp_port"]),
                    str(tmp_path / "phantom" / "phantom_0000.dcm")],
                   check=True, timeout=60, capture_output=True)
    _wait(lambda: _api(f"{url}/api/review/queue", "ann")[1].get("total") == 1, 180,
          "the exam in the review queue")
    status, exam = _api(f"{url}/api/exams/1", "ann")
    assert exam["dispatches"] == []  # held: nothing queued for the PACS
    assert list(node["pacs"].iterdir()) == []
    preliminary_sr = next(o["sop_instance_uid"] for o in exam["objects"] if o["kind"] == "SR")
    if {"MC3", "MC4"} <= set(exam["analysis"]["bones"]):
        _misplace(node["data"] / "dxr-node.sqlite", "MC3", "MC4")
    # else the engine lost MC3 itself (a QC rejection): the reader places it all the same.
    assert _api(f"{url}/api/exams/1/approve", "vic", "POST")[0] == 403  # a viewer

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{url}/review/1")  # a local browser sees it, read only
            assert "Sign in with a reviewer account" in page.content()
            with page.expect_navigation():
                page.click("p.alert a[href^='/login']")
            assert "/login" in page.url
            page.fill("input[name=username]", "ann")
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.url.endswith("/review/1")
            image = page.locator("#radiograph")
            _wait(lambda: image.evaluate("img => img.complete && img.naturalWidth > 0"), 30,
                  "the radiograph")
            assert page.locator("svg#marks g.bone").count() == len(exam["analysis"]["bones"])
            page.screenshot(path=ARTIFACTS / "review_before.png")

            page.click("button.place[data-bone=MC3]")
            cols, rows = truth["cols"], truth["rows"]
            for end in ("proximal_rc", "distal_rc"):
                box = image.bounding_box()  # the image as scaled on screen
                r, c = truth["bones"]["MC3"][end]
                page.mouse.click(box["x"] + (c + 0.5) * box["width"] / cols,
                                 box["y"] + (r + 0.5) * box["height"] / rows)
            page.wait_for_selector("svg#marks g.bone.reader", timeout=60_000)
            row = page.locator("tr[data-bone-row=MC3]")
            assert "reader" in row.inner_text()
            page.screenshot(path=ARTIFACTS / "review_corrected.png")

            # Dragging an existing end works too: MC2's head 12 px further along its axis.
            mc2 = _api(f"{url}/api/exams/1/review", "ann")[1]["analysis"]["bones"].get("MC2")
            if mc2 is not None:
                (r0, c0), (r1, c1) = mc2["proximal_rc"], mc2["distal_rc"]
                norm = ((r1 - r0) ** 2 + (c1 - c0) ** 2) ** 0.5
                target = (r1 + 12 * (r1 - r0) / norm, c1 + 12 * (c1 - c0) / norm)
                box = image.bounding_box()

                def screen(point):
                    return (box["x"] + (point[1] + 0.5) * box["width"] / cols,
                            box["y"] + (point[0] + 0.5) * box["height"] / rows)

                page.mouse.move(*screen((r1, c1)))
                page.mouse.down()
                page.mouse.move(*screen(target), steps=6)
                with page.expect_navigation():
                    page.mouse.up()
                assert "reader" in page.locator("tr[data-bone-row=MC2]").inner_text()
                dragged = _api(f"{url}/api/exams/1/review", "ann")[1]["analysis"]["bones"]["MC2"]
                assert abs(dragged["distal_rc"][0] - target[0]) < 3
                assert abs(dragged["distal_rc"][1] - target[1]) < 3
                assert dragged["proximal_rc"] == pytest.approx(mc2["proximal_rc"], abs=1e-6)

            with page.expect_navigation(timeout=120_000):  # builds and signs 4 objects
                page.click("button.approve", timeout=120_000)
            assert "Approved: 4 final object(s) issued" in page.content()
            _wait(lambda: len(list(node["pacs"].iterdir())) >= 4, 90, "the final objects")
            page.reload()
            page.screenshot(path=ARTIFACTS / "exam_after_approval.png", full_page=True)
        finally:
            browser.close()

    received = [pydicom.dcmread(p) for p in node["pacs"].iterdir()]
    assert sorted(ds.Modality for ds in received) == ["DOC", "OT", "PR", "SR"]
    (sr,) = [ds for ds in received if ds.Modality == "SR"]
    assert sr.VerificationFlag == "VERIFIED" and sr.PreliminaryFlag == "FINAL"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Reader^Ann"
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == preliminary_sr
    values = _tracked_values(sr, {})
    mc3 = next(v for k, v in values.items() if k.startswith("MC3"))
    expected = truth["bones"]["MC3"]
    assert abs(mc3["Cortical thickness"] - expected["cortical_thickness_mm"]) < TOLERANCE_MM
    assert abs(mc3["Width"] - expected["width_mm"]) < TOLERANCE_MM
    dciodvfy = shutil.which("dciodvfy")
    for path in node["pacs"].iterdir() if dciodvfy else ():
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True,
                                timeout=120)
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"
    correction = next(a for a in _api(f"{url}/api/exams/1/review", "ann")[1]["actions"]
                      if a["action"] == "correct")
    placed = correction["after"]["bones"]["MC3"]
    (ARTIFACTS / "measured.json").write_text(json.dumps({
        "truth": {k: expected[k] for k in ("cortical_thickness_mm", "width_mm", "length_mm",
                                           "proximal_rc", "distal_rc")},
        "clicked": {k: placed[k] for k in ("proximal_rc", "distal_rc", "length_mm")},
        "remeasure_seconds": correction["after"]["remeasure_seconds"],
        "final_sr_mm": {"cortical_thickness_mm": mc3["Cortical thickness"],
                        "width_mm": mc3["Width"]}}, indent=1))
