"""Measuring instruments for the engine: real-image runs, metamorphic checks, wide phantoms.

These modules judge the engine from outside (they import ``engine`` and ``phantom``; no
other wing imports them). They must never feed back into tuning it: their figures are
what a reviewer compares before and after a change.
"""
