"""Evaluation: metrics (:mod:`.metrics` + :mod:`.landmarks`, :mod:`.identity`, :mod:`.syncnet`, :mod:`.fid`),
protocols (:mod:`.protocols`: self-driven, cross-driven, ground truth, comparison video) and
tables / CI comparison (:mod:`.report`).

Entry points::

    from talkgs.eval import evaluate_variant, evaluate_subject_ground_truth    # one call per stage
    from talkgs.eval import evaluate_self_driven, evaluate_cross_driven, evaluate_ground_truth
    from talkgs.eval import write_metrics, metrics_path, build_tables, compare_metrics

Submodules import torch / MediaPipe lazily where they can; importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EvalWeights",
    "evaluate_variant",
    "evaluate_subject_ground_truth",
    "evaluate_self_driven",
    "evaluate_cross_driven",
    "evaluate_ground_truth",
    "write_comparison_video",
    "efficiency_metrics",
    "unavailable",
    "write_metrics",
    "metrics_path",
    "build_tables",
    "compare_metrics",
    "metrics_from_dvc_diff",
]

_WHERE = {
    "EvalWeights": "run",
    "evaluate_variant": "run",
    "evaluate_subject_ground_truth": "run",
    "evaluate_self_driven": "protocols",
    "evaluate_cross_driven": "protocols",
    "evaluate_ground_truth": "protocols",
    "write_comparison_video": "protocols",
    "efficiency_metrics": "metrics",
    "unavailable": "metrics",
    "write_metrics": "report",
    "metrics_path": "report",
    "build_tables": "report",
    "compare_metrics": "report",
    "metrics_from_dvc_diff": "report",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
