"""`dxr-node phantom OUTDIR`: write synthetic hand radiographs and their truth file."""

from __future__ import annotations

import argparse
import sys
import time

from dxr_node.phantom.generate import write_phantom_set


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        print("dxr-node phantom: --n must be at least 1", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        truth = write_phantom_set(
            args.outdir, args.n, args.seed,
            variant=getattr(args, "variant", "adult"),
            transfer_syntax=getattr(args, "transfer_syntax", "explicit"),
            for_processing=getattr(args, "for_processing", False),
            previews=getattr(args, "previews", False),
            same_anatomy=getattr(args, "same_anatomy", False),
        )
    except (OSError, RuntimeError, ValueError) as error:
        print(f"dxr-node phantom: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(truth)} phantom(s) and truth.json to {args.outdir} "
          f"in {time.monotonic() - started:.1f} s")
    return 0
