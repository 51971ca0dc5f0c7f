"""The console in a real browser (Debian's chromium driven by Playwright) on a real node:
a phantom sent with dcmtk storescu appears, its detail page opens, and the dispatches
that failed while the PACS (dcmtk storescp) was down are retried once it is up.
Screenshots go to artifacts/console/ for a person to look at."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from console_testing import free_port

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "console"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
    pytest.mark.skipif(not (shutil.which("storescu") and shutil.which("storescp")),
                       reason="needs dcmtk storescu and storescp"),
]


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _reload_until(page, selector: str, count: int, timeout_s: float, what: str) -> None:
    """Reload (the pages are server-rendered) until ``selector`` matches ``count`` times."""
    def shown() -> bool:
        page.reload()
        return page.locator(selector).count() == count
    _wait(shown, timeout_s, what)


@pytest.fixture
def node(tmp_path):
    """`dxr-node serve` with its console; the PACS destination is down at first."""
    scp_port, console_port, pacs_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DXR_NODE")}
    env.update(DXR_NODE__WEB__PORT=str(console_port), DXR_NODE__DISPATCH__MAX_ATTEMPTS="2",
               DXR_NODE__DISPATCH__INITIAL_BACKOFF_S="0.5")
    log = open(tmp_path / "node.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dxr_node.cli", "serve", "--data-dir", str(tmp_path / "node"),
         "--port", str(scp_port), "--workers", "1",
         "--destination", f"PACS@127.0.0.1:{pacs_port}"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{console_port}"
    try:
        _wait(lambda: _healthy(url) or process.poll() is not None, 60, "the node's console")
        assert process.poll() is None, (tmp_path / "node.log").read_text()
        yield {"url": url, "scp_port": scp_port, "pacs_port": pacs_port, "dir": tmp_path}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def test_operator_sees_an_exam_and_retries_a_failed_dispatch(node, tmp_path):
    from playwright.sync_api import sync_playwright

    from dxr_node.phantom.generate import write_phantom_set

    write_phantom_set(tmp_path / "phantom", 1, seed=5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pacs = None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{node['url']}/exams")
            assert "No exams received yet" in page.content()

            subprocess.run(["storescu", "-aec", "DXRNODE", "127.0.0.1", str(node["scp_port"]),
                            str(tmp_path / "phantom" / "phantom_0000.dcm")],
                           check=True, timeout=60, capture_output=True)
            # Rejected images get their objects too: either way there is something to send.
            _reload_until(page, ".badge.analysed, .badge.rejected", 1, 180,
                          "the exam to be analysed")
            box = page.locator("tr.link td:nth-child(8)").bounding_box()
            page.mouse.click(box["x"] + 5, box["y"] + 5)  # anywhere on the row opens it
            page.wait_for_url("**/exams/1")
            _reload_until(page, ".badge.d-failed", 3, 120, "SR, SC and GSPS to fail (no PACS)")
            overlay = page.locator("figure.overlay img")
            _wait(lambda: overlay.evaluate("img => img.complete && img.naturalWidth > 0"),
                  30, "the overlay image")
            assert page.locator("text=MC3").count() >= 1
            page.screenshot(path=ARTIFACTS / "detail_failed.png", full_page=True)
            page.goto(node["url"] + "/")
            assert "failing" in page.content()
            page.screenshot(path=ARTIFACTS / "overview.png", full_page=True)

            pacs_dir = tmp_path / "pacs"
            pacs_dir.mkdir()
            pacs = subprocess.Popen(["storescp", "-aet", "PACS", "+xa", "-od", str(pacs_dir),
                                     str(node["pacs_port"])], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            _wait(lambda: _listening(node["pacs_port"]), 30, "storescp")

            page.goto(node["url"] + "/exams/1")
            retries = page.locator("button:text('Retry')")
            assert retries.count() == 3
            while retries.count():
                with page.expect_navigation():
                    retries.first.click()
                assert "queued to be sent again" in page.content()
            _reload_until(page, ".badge.d-sent", 3, 60, "the three objects to be sent")
            assert len(list(pacs_dir.iterdir())) == 3  # what storescp received
            page.screenshot(path=ARTIFACTS / "detail.png", full_page=True)
            page.goto(node["url"] + "/failures")
            assert "Nothing failed" in page.content()
        finally:
            browser.close()
            if pacs is not None:
                pacs.terminate()
                pacs.wait(timeout=30)
