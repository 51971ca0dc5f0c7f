"""The radiogrammetry engine: pixels in, measurements out (pure, no node/report imports)."""

from dxr_node.engine.result import Analysis, BoneMeasurement

__all__ = ["Analysis", "BoneMeasurement"]
