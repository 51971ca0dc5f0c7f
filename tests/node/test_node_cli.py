"""`dxr-node status | retry | send` through the real command line entry point."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
from dcmtk_peers import free_port, received_uids, storescp
from test_scp import write_dx

from dxr_node.cli import main
from dxr_node.node.store import InstanceInfo, ProducedObject, Store


@pytest.fixture
def data_dir(tmp_path):
    """A node database with one analysed image, one skipped and one failed dispatch."""
    data = tmp_path / "data"
    with Store(data / "dxr-node.sqlite") as store:
        explicit_le = "1.2.840.10008.1.2.1"
        store.add_instance(InstanceInfo("1.2.3", "1.2.840.10008.5.1.4.1.1.1.1", explicit_le,
                                        "/spool/1.2.3.dcm", 100, patient_id="P"))
        store.add_instance(InstanceInfo("1.2.4", "1.2.840.10008.5.1.4.1.1.2", explicit_le,
                                        "/spool/1.2.4.dcm", 100),
                           skip_reason="not a CR/DX image (SOP class 1.2.840.10008.5.1.4.1.1.2)")
        job = store.claim_job("w")
        store.finish_job(job.id, status="ok",
                         analysis={"dxr_bmd_g_cm2": 0.5512, "mci": 0.45, "reasons": []},
                         interpretation={"t_score": -1.4, "category": "low bone mass"},
                         objects=[ProducedObject("SR", "1.2.840.10008.5.1.4.1.1.88.33", "9.1",
                                                 "/objects/9.1.dcm")],
                         destinations=["PACS"])
        (dispatch,) = store.claim_dispatches("PACS", 10)
        store.dispatch_failed(dispatch.id, "association rejected (calling AE not recognised)")
    return data


def test_status_text_shows_counts_results_and_reasons(data_dir, capsys):
    assert main(["status", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "done 1" in out and "skipped 1" in out and "failed 1" in out
    assert "BMD 0.551 g/cm2" in out and "T -1.4" in out and "low bone mass" in out
    assert "calling AE not recognised" in out
    assert "-> PACS: sent 0  pending 0  failed 1" in out
    assert "not a CR/DX image" in out


def test_status_json_and_retry(data_dir, capsys):
    assert main(["status", "--data-dir", str(data_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dispatches"]["failed"] == 1 and report["instances"] == 2
    assert report["recent_results"][0]["category"] == "low bone mass"

    assert main(["retry", "--data-dir", str(data_dir)]) == 0
    assert "re-queued 1 failed or waiting dispatch" in capsys.readouterr().out
    main(["status", "--data-dir", str(data_dir), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["dispatches"]["failed"] == 0 and report["dispatches"]["pending"] == 1


def test_status_without_database_is_a_clear_error(tmp_path, capsys):
    assert main(["status", "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dxr-node: error: no node database at") and "Traceback" not in err


def test_serve_with_bad_config_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "node.toml"
    bad.write_text("port = 0\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert "port: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main(["serve", "--destination", "nonsense"]) == 2
    assert "expected AET@HOST:PORT" in capsys.readouterr().err


def test_send_delivers_files_to_a_dcmtk_storescp(tmp_path, capsys):
    files = [tmp_path / f"in{i}.dcm" for i in range(2)]
    uids = sorted(write_dx(f) for f in files)
    with storescp(tmp_path / "pacs", aet="PACS") as port:
        code = main(["send", *map(str, files), "--to", f"127.0.0.1:{port}", "--aet", "PACS"])
    assert code == 0, capsys.readouterr()
    assert received_uids(tmp_path / "pacs") == uids


def test_send_reports_failure_and_bad_arguments(tmp_path, capsys):
    path = tmp_path / "in.dcm"
    write_dx(path)
    assert main(["send", str(path), "--to", f"127.0.0.1:{free_port()}"]) == 1  # nobody there
    assert main(["send", str(tmp_path / "missing.dcm"), "--to", "127.0.0.1:104"]) == 2
    assert main(["send", str(path), "--to", "127.0.0.1"]) == 2
    assert main(["send", str(path), "--to", "h:1", "--aet", "X" * 17]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "expected HOST:PORT" in err and "not a valid AE" in err


def test_serve_on_a_taken_port_says_so(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "dxr_node.cli", "serve", "--port", str(port), "--workers",
             "1", "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "DXR_NODE__WEB__ENABLED": "false"})
    assert result.returncode == 2
    assert f"dxr-node: error: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_analyze_history_that_is_not_a_node_database_is_one_line_exit_2(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    image = tmp_path / "hand.dcm"
    write_dx(image)
    for history, message in ((other, "is not a dxr-node database (no schema version)"),
                             (junk, "is not a usable dxr-node database")):
        result = subprocess.run(
            [sys.executable, "-m", "dxr_node.cli", "analyze", str(image), "--history",
             str(history)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert message in result.stderr and len(result.stderr.splitlines()) == 1
    with sqlite3.connect(other) as db:  # left as it was: no node tables, no WAL
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_status_and_retry_count_what_the_console_counts(tmp_path, capsys):
    """A dispatch waiting to retry after an error is an open failure in `status` too, and
    `retry` (like the console's button) clears its error and gives it fresh attempts."""
    data = tmp_path / "data"
    with Store(data / "dxr-node.sqlite") as store:
        store.add_instance(InstanceInfo("1.2.3", "1.2.840.10008.5.1.4.1.1.1.1",
                                        "1.2.840.10008.1.2.1", "/spool/1.2.3.dcm", 100))
        store.add_instance(InstanceInfo("1.2.5", "1.2.840.10008.5.1.4.1.1.1.1",
                                        "1.2.840.10008.1.2.1", "/spool/1.2.5.dcm", 100))
        job = store.claim_job("w")
        store.finish_job(job.id, status="ok", analysis={}, interpretation=None,
                         objects=[ProducedObject("SR", "1.2.840.10008.5.1.4.1.1.88.33", "9.1",
                                                 "/objects/9.1.dcm")], destinations=["PACS"])
        (waiting,) = store.claim_dispatches("PACS", 10)
        store.dispatch_retry_later(waiting.id, "cannot reach PACS@pacs:104", time.time() + 600)
        store.fail_job(store.claim_job("w").id, "unreadable image")
        console_count = store.open_failure_count()
    assert console_count == 2
    assert main(["status", "--data-dir", str(data), "--json"]) == 0
    failures = json.loads(capsys.readouterr().out)["failures"]
    assert sorted(f["what"] for f in failures) == ["dispatch", "job"]
    assert main(["status", "--data-dir", str(data)]) == 0
    assert "cannot reach PACS@pacs:104" in capsys.readouterr().out

    assert main(["retry", "--data-dir", str(data)]) == 0
    assert "re-queued 1 failed or waiting dispatch(es) (" in capsys.readouterr().out
    with Store(data / "dxr-node.sqlite") as store:
        assert [f["what"] for f in store.open_failures()] == ["job"]  # jobs only with --jobs
        row = store._read("SELECT attempts, error FROM dispatches")[0]
        assert (row["attempts"], row["error"]) == (0, None)
    assert main(["retry", "--data-dir", str(data), "--jobs"]) == 0
    assert "and 1 failed analysis job(s)" in capsys.readouterr().out
    with Store(data / "dxr-node.sqlite") as store:
        assert store.open_failures() == [] and store.counts()["jobs"]["queued"] == 1
