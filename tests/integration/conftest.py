"""The integration tests reuse the node tests' peers (dcmtk, `dxr-node serve`)."""

from __future__ import annotations

import sys
from pathlib import Path

_NODE_TESTS = str(Path(__file__).resolve().parents[1] / "node")
if _NODE_TESTS not in sys.path:
    sys.path.append(_NODE_TESTS)
