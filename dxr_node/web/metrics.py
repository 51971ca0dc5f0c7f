"""/metrics in the Prometheus text exposition format (version 0.0.4).

Computed from the database at each scrape rather than from in-process counters: the
SCP, the worker processes and the dispatcher all write the store, so it is the one
place that sees everything, and the figures survive restarts.
"""

from __future__ import annotations

from collections.abc import Iterable

from dxr_node import __version__
from dxr_node.node.states import DispatchState
from dxr_node.node.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, value: float, **labels: str) -> str:
    if labels:
        inner = ",".join(f'{k}="{_label_value(str(v))}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def histogram_samples(name: str, buckets: tuple[float, ...], cumulative: list[int],
                      count: int, total: float) -> list[str]:
    """Cumulative ``_bucket`` lines, then ``_sum`` and ``_count``."""
    lines = [_sample(f"{name}_bucket", n, le=f"{bound:g}")
             for bound, n in zip(buckets, cumulative, strict=True)]
    lines.append(_sample(f"{name}_bucket", count, le="+Inf"))
    lines.append(_sample(f"{name}_sum", round(total, 6)))
    lines.append(_sample(f"{name}_count", count))
    return lines


def render_metrics(store: Store) -> str:
    counts = store.counts()
    destinations = store.destination_health()
    lines: list[str] = []
    lines += _family("dxr_build_info", "gauge", "dxr-node version.",
                     [_sample("dxr_build_info", 1, version=__version__)])
    lines += _family("dxr_instances_received_total", "counter",
                     "Instances received by C-STORE, duplicates included.",
                     [_sample("dxr_instances_received_total", store.received_total())])
    lines += _family("dxr_jobs", "gauge", "Analysis jobs by state.",
                     [_sample("dxr_jobs", n, state=s) for s, n in counts["jobs"].items()])
    lines += _family("dxr_queue_depth", "gauge",
                     "Work waiting: analysis jobs queued or running, dispatches pending.",
                     [_sample("dxr_queue_depth",
                              counts["jobs"]["queued"] + counts["jobs"]["running"],
                              queue="analysis"),
                      _sample("dxr_queue_depth", counts["dispatches"]["pending"],
                              queue="dispatch")])
    lines += _family("dxr_analysis_duration_seconds", "histogram",
                     "Time from a worker claiming an image to its recorded result.",
                     histogram_samples("dxr_analysis_duration_seconds", DURATION_BUCKETS_S,
                                       *store.analysis_duration_histogram(DURATION_BUCKETS_S)))
    lines += _family("dxr_dispatches", "gauge", "Dispatches by destination and state.",
                     [_sample("dxr_dispatches", d[state] or 0, destination=d["destination"],
                              state=state)
                      for d in destinations for state in DispatchState])
    # A gauge, not a counter: an operator retry resets a dispatch's attempts to 0.
    lines += _family("dxr_dispatch_attempts", "gauge",
                     "C-STORE attempts of the current dispatches by destination (an "
                     "operator retry starts a dispatch's count again).",
                     [_sample("dxr_dispatch_attempts", d["attempts"] or 0,
                              destination=d["destination"]) for d in destinations])
    lines += _family("dxr_dispatch_failures", "gauge",
                     "Dispatches whose last attempt failed (failed for good or waiting "
                     "for a retry), by destination.",
                     [_sample("dxr_dispatch_failures", d["with_error"] or 0,
                              destination=d["destination"]) for d in destinations])
    from dxr_node.node.review_store import ReviewStore

    review = ReviewStore(store)
    queue = review.counts()
    lines += _family("dxr_review_queue", "gauge",
                     "Results by reader review state (awaiting includes QC-rejected ones).",
                     [_sample("dxr_review_queue", queue[state], state=state)
                      for state in ("awaiting", "awaiting_qc_rejected", "drafts", "approved",
                                    "rejected")])
    lines += _family("dxr_review_actions_total", "counter", "Reader review actions by kind.",
                     [_sample("dxr_review_actions_total", n, action=action)
                      for action, n in review.review_actions_total().items()])
    by_problem = store.problem_counts()
    lines += _family("dxr_results_by_problem", "gauge",
                     "Analysis results carrying each QC finding (problem code), by severity "
                     "(rejection or note); a result counts once per code.",
                     [_sample("dxr_results_by_problem", n, code=code, severity=severity)
                      for severity, counts in by_problem.items()
                      for code, n in counts.items()])
    spool = store.spool_usage()
    lines += _family("dxr_spool_bytes", "gauge", "Bytes of received images in the spool.",
                     [_sample("dxr_spool_bytes", spool["bytes"])])
    return "\n".join(lines) + "\n"
