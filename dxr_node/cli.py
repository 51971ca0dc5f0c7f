"""Command line: argument parsing only; each subcommand delegates to its wing.

Exit status everywhere: 0 success, 1 some input rejected/failed, 2 usage error or
unreadable input (one clear line on stderr, never a traceback for a user mistake).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from dxr_node import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 with usage: keep that
        self.print_usage(sys.stderr)
        self.exit(2, f"dxr-node: error: {message}\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _delegate(target: str):
    """Resolve 'module:function' lazily so one subcommand's imports never slow another."""

    def run(args: argparse.Namespace) -> int:
        module_name, func_name = target.split(":")
        return getattr(importlib.import_module(module_name), func_name)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dxr-node", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dxr-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("analyze", help="measure metacarpals II-IV on hand radiographs")
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM, PNG, JPEG or TIFF files")
    p.add_argument("--json", action="store_true", help="one JSON object per input (JSON Lines)")
    p.add_argument("--out", metavar="DIR", help="write SR, overlay, GSPS and PDF objects here")
    p.add_argument("--pixel-spacing", type=_positive_float, metavar="MM",
                   help="pixel spacing for images without one (PNG/JPEG/TIFF)")
    p.add_argument("--sex", choices=["F", "M"], help="override the header's PatientSex")
    p.add_argument("--age", type=_positive_float, metavar="YEARS",
                   help="override the age from the header")
    p.add_argument("--history", metavar="DB",
                   help="node database with prior results (a file, or postgresql://...)")
    p.set_defaults(func=_delegate("dxr_node.commands.analyze:run"))

    p = sub.add_parser("phantom", help="write synthetic hand radiographs with known geometry")
    p.add_argument("outdir", metavar="OUTDIR")
    p.add_argument("--n", type=int, default=10, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="adult",
                   choices=["adult", "paediatric", "toddler", "non-hand"])
    p.add_argument("--transfer-syntax", default="explicit", metavar="NAME",
                   help="explicit, rle, j2k-lossless; with dcmtk: jpeg-lossless-sv1, "
                        "jpeg-lossless, jpeg-baseline, jpeg-extended, jpeg-ls")
    p.add_argument("--for-processing", action="store_true",
                   help="DX For Processing: raw linear (LIN) intensities")
    p.add_argument("--same-anatomy", action="store_true",
                   help="image one hand N times (precision study)")
    p.add_argument("--previews", action="store_true", help="also write PNG previews")
    p.set_defaults(func=_delegate("dxr_node.phantom.cli:run"))

    p = sub.add_parser("serve", help="run the DICOM node (C-STORE SCP, workers, dispatch)")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--host", metavar="ADDR")
    p.add_argument("--port", type=int, metavar="N")
    p.add_argument("--ae-title", metavar="AET")
    p.add_argument("--data-dir", metavar="DIR", help="holds the spool and the database")
    p.add_argument("--workers", type=int, metavar="N")
    p.add_argument("--destination", action="append", metavar="AET@HOST:PORT", default=None)
    p.add_argument("--allow-aet", action="append", metavar="AET", default=None)
    p.add_argument("--node-name", metavar="NAME",
                   help="this node's name in a cluster (default: the host name)")
    p.add_argument("--no-scp", action="store_true", help="do not receive images")
    p.add_argument("--no-workers", action="store_true", help="do not analyse images")
    p.add_argument("--no-dispatch", action="store_true", help="do not send results")
    p.set_defaults(func=_delegate("dxr_node.commands.node:serve"))

    p = sub.add_parser("status", help="queue counts, recent results and failures")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_delegate("dxr_node.commands.node:status"))

    p = sub.add_parser("retry", help="re-dispatch failed items")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--jobs", action="store_true",
                   help="also re-queue failed analysis jobs (e.g. after a fix)")
    p.set_defaults(func=_delegate("dxr_node.commands.node:retry"))

    p = sub.add_parser("copy-db", help="copy a node database into a new one (e.g. SQLite "
                       "to PostgreSQL, to start a cluster)")
    p.add_argument("source", metavar="FROM", help="a database file or postgresql:// URL")
    p.add_argument("target", metavar="TO", help="a new database file or postgresql:// URL")
    p.set_defaults(func=_delegate("dxr_node.commands.node:copy_db"))

    p = sub.add_parser("send", help="push DICOM files to a node or PACS (C-STORE)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--to", required=True, metavar="HOST:PORT")
    p.add_argument("--aet", default="DXRNODE", help="called AE title")
    p.add_argument("--calling-aet", default="DXRSEND")
    p.set_defaults(func=_delegate("dxr_node.commands.node:send"))

    p = sub.add_parser("user", help="console accounts of readers (viewer, reviewer, admin)")
    p.add_argument("action", choices=("add", "disable", "enable", "list"))
    p.add_argument("username", nargs="?", default="")
    p.add_argument("--role", choices=("viewer", "reviewer", "admin"), default="viewer")
    p.add_argument("--name", metavar="PN",
                   help="the reader's name as the final SR names the verifier, e.g. "
                        "'Reader^Ann' (default: the username)")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin (for scripts)")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--data-dir", metavar="DIR")
    p.set_defaults(func=_delegate("dxr_node.commands.users:run"))

    p = sub.add_parser("reference", help="check a DXR-BMD reference table (default: packaged)")
    p.add_argument("file", nargs="?", metavar="FILE", help="a site's own table (JSON)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_delegate("dxr_node.clinical.cli:run"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
