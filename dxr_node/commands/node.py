"""Entry points of `dxr-node serve | status | retry | send` (parsed in dxr_node/cli.py).

Exit status: 0 success, 1 something failed (e.g. an object not acknowledged), 2 usage
error such as a bad configuration or a missing file (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dxr_node.node.config import ConfigError, NodeConfig, cli_overrides, load_config
from dxr_node.node.database import DATABASE_ERRORS
from dxr_node.node.integration_store import IntegrationStore
from dxr_node.node.logs import log_event
from dxr_node.node.store import Store, StoreError

CONFIG_ENV = "DXR_NODE_CONFIG"  # a config file for containers, when --config is not given


def _fail(message: str) -> int:
    print(f"dxr-node: error: {message}", file=sys.stderr)
    return 2


def _config(args: argparse.Namespace, **overrides: Any) -> NodeConfig:
    path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or None
    data_dir = getattr(args, "data_dir", None)
    return load_config(path, overrides={**overrides, "data_dir": data_dir})


def _open_existing_store(config: NodeConfig) -> Store:
    if config.database_url:
        return Store(config.database_url)
    path = config.database_path
    if not path.is_file():
        raise StoreError(f"no node database at {path} (has `dxr-node serve` run with this "
                         "--data-dir / --config?)")
    return Store(path)


# --- serve -------------------------------------------------------------------------------

class _Console:
    """The operator console (dxr_node.web) as the node's start/stop callbacks: wired
    here, at the command line, because the node itself never imports the web wing."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.server: Any = None

    def start(self, scp_listening: Callable[[], bool],
              analysis_problem: Callable[[], str | None] | None = None) -> None:
        from dxr_node.web.app import ConsoleServer
        from dxr_node.web.auth import ConsoleConfigError

        # Access was checked before anything started; what is left here (the port is
        # taken) must not stop images being received: log it loudly and go on.
        try:
            server = ConsoleServer(self.config, scp_listening, analysis_problem)
            server.start()
        except ConsoleConfigError as exc:
            log_event(logging.getLogger("dxr_node.node"), "console_unavailable",
                      logging.ERROR, reason=str(exc))
            return
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def serve(args: argparse.Namespace) -> int:
    from dxr_node.node.logs import configure_logging
    from dxr_node.node.service import ServiceError, run

    try:
        config = _config(args, **cli_overrides(
            host=args.host, port=args.port, ae_title=args.ae_title, workers=args.workers,
            destinations=args.destination, allow_aets=args.allow_aet, no_scp=args.no_scp,
            no_workers=args.no_workers, no_dispatch=args.no_dispatch,
            node_name=args.node_name))
    except ConfigError as exc:
        return _fail(str(exc))
    configure_logging(config.log_level)
    console = None
    if config.web.enabled:  # refuse an open console before anything starts
        from dxr_node.web.auth import ConsoleConfigError, check_console_access

        try:
            check_console_access(config.web)
        except ConsoleConfigError as exc:
            return _fail(str(exc))
        console = _Console(config)
    try:
        return run(config, start_console=console.start if console else None,
                   stop_console=console.stop if console else None)
    except (ServiceError, StoreError) as exc:
        return _fail(str(exc))


# --- status ------------------------------------------------------------------------------

def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def collect_status(store: Store, *, limit: int = 10) -> dict[str, Any]:
    """Everything `dxr-node status` shows, as one JSON-ready dict."""
    return {
        "database": store.location,
        "instances": store.instance_count(),
        **store.counts(),
        "destinations": store.destination_health(),
        "messages": IntegrationStore(store).counts(),  # HL7/FHIR results and charges
        "recent_results": store.recent_results(limit),
        "failures": store.open_failures(limit),  # the console's list, the same rule
        "skipped": store.skipped(limit),
        "nodes": store.nodes(),  # the nodes sharing this database (one, on SQLite)
    }


def render_status(status: dict[str, Any]) -> str:
    lines = [f"database  {status['database']}", f"instances {status['instances']}"]
    lines.append("jobs      " + "  ".join(f"{k} {v}" for k, v in status["jobs"].items()))
    lines.append("dispatch  " + "  ".join(f"{k} {v}" for k, v in status["dispatches"].items()))
    lines.append("messages  " + "  ".join(f"{k} {v}" for k, v in status["messages"].items()))
    for d in status["destinations"]:
        line = (f"  -> {d['destination']}: sent {d['sent']}  pending {d['pending']}  "
                f"failed {d['failed']}  last success {_when(d['last_success_at'])}")
        if d["last_failure_reason"] and (d["pending"] or d["failed"]):
            line += f"  last error {_when(d['last_failure_at'])}: {d['last_failure_reason']}"
        lines.append(line)
    lines.append("")
    lines.append("recent results")
    if not status["recent_results"]:
        lines.append("  (none yet)")
    for r in status["recent_results"]:
        lines.append(
            f"  job {r['job_id']:<5} {_when(r['finished_at'])}  {r['status']:<8} "
            f"BMD {_number(r['dxr_bmd_g_cm2'])} g/cm2  MCI {_number(r['mci'])}  "
            f"T {_number(r['t_score'], 1)}  {r['category'] or ''}  "
            f"objects {r['objects']}  sop {r['sop_instance_uid']}"
        )
        if r["status"] != "ok" and r["reasons"]:
            lines.append(f"            reasons: {'; '.join(r['reasons'])}")
    lines.append("")
    lines.append("failures")
    if not status["failures"]:
        lines.append("  (none)")
    for f in status["failures"]:
        target = f" -> {f['destination']}" if f["destination"] else ""
        waiting = (f"  (retry at {_when(f['next_attempt_at'])})"
                   if f["state"] == "pending" else "")
        subject = (f"job {f['job_id']} {f['kind']}" if f["what"] == "message"
                   else f"sop {f['sop_instance_uid']}")
        lines.append(f"  {f['what']} {f['id']}{target}  {_when(f['updated_at'])}  attempts "
                     f"{f['attempts']}{waiting}  {subject}: {f['reason']}")
    if len(status["nodes"]) > 1:
        lines.append("")
        lines.append("nodes")
        for n in status["nodes"]:
            state = f"stopped {_when(n['stopped_at'])}" if n["stopped_at"] \
                else f"heartbeat {_when(n['heartbeat_at'])}"
            lines.append(f"  {n['name']:<16} {n['host']}  {n['roles']}  {state}  "
                         f"analysing {n['running_jobs']}  sending {n['sending_dispatches']}")
    if status["skipped"]:
        lines.append("")
        lines.append("skipped (not analysed)")
        for s in status["skipped"]:
            lines.append(f"  job {s['job_id']}  sop {s['sop_instance_uid']}: {s['reason']}")
    return "\n".join(lines)


def status(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        with _open_existing_store(config) as store:
            report = collect_status(store)
    except (ConfigError, StoreError) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_status(report))
    return 0


# --- retry -------------------------------------------------------------------------------

def retry(args: argparse.Namespace) -> int:
    with_jobs = getattr(args, "jobs", False)
    try:
        config = _config(args)
        with _open_existing_store(config) as store:
            done = store.retry_all_failures(jobs=with_jobs)  # what the console's button does
    except (ConfigError, StoreError) as exc:
        return _fail(str(exc))
    print(f"re-queued {done['dispatches']} failed or waiting dispatch(es)"
          + (f" and {done['jobs']} failed analysis job(s)" if with_jobs else "")
          + " (a running node picks them up; otherwise at its next start)")
    return 0


# --- copy-db -----------------------------------------------------------------------------

def copy_db(args: argparse.Namespace) -> int:
    """Copy a stopped node's database into a new, empty one (SQLite <-> PostgreSQL)."""
    from dxr_node.node.database import is_postgres_url
    from dxr_node.node.transfer import copy_database

    if not is_postgres_url(args.source) and not Path(args.source).is_file():
        return _fail(f"no node database at {args.source}")
    try:
        with Store(args.source) as source, Store(args.target) as target:
            copied = copy_database(source, target)
    except StoreError as exc:
        return _fail(str(exc))
    except DATABASE_ERRORS as exc:  # e.g. the target's server went away mid-copy
        return _fail(f"copy failed, nothing was copied: {str(exc).strip().splitlines()[0]}")
    print(f"copied {sum(copied.values())} rows ("
          + ", ".join(f"{table} {n}" for table, n in copied.items() if n) + ")")
    return 0


# --- send --------------------------------------------------------------------------------

def _parse_host_port(text: str) -> tuple[str, int]:
    match = re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):(\d{1,5})", text.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"--to {text!r}: expected HOST:PORT, e.g. 127.0.0.1:11112")
    return match.group(1).strip("[]"), int(match.group(2))


def send(args: argparse.Namespace) -> int:
    from dxr_node.node.config import Destination, check_ae_title
    from dxr_node.node.dispatch import SENT, send_files

    try:
        host, port = _parse_host_port(args.to)
        called, calling = check_ae_title(args.aet), check_ae_title(args.calling_aet)
    except ValueError as exc:
        return _fail(str(exc))
    destination = Destination(name=called, ae_title=called, host=host, port=port)
    paths = [Path(p) for p in args.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return _fail(f"no such file: {', '.join(missing)}")
    # The port is given here; the config model has it optional (DICOMweb destinations).
    deliveries = send_files(destination, paths, calling_aet=calling)  # type: ignore[arg-type]
    for d in deliveries:
        status = "-" if d.status is None else f"0x{d.status:04X}"
        print(f"{d.outcome:<6} {status}  {d.path}  {d.reason}")
    return 0 if all(d.outcome == SENT for d in deliveries) else 1
