"""Linear-probe evaluation of frozen features: full-shot and few-shot, many/medium/few accuracy."""

from mak_ray.evaluate.fewshot import few_shot_subset, per_class_count
from mak_ray.evaluate.groups import GROUPS, class_groups, group_of
from mak_ray.evaluate.linear import LinearProbe, fit_linear, predict, predict_logits
from mak_ray.evaluate.metrics import compute_metrics, per_class_accuracy
from mak_ray.evaluate.results import (
    Features,
    evaluate_features,
    features_from_table,
    markdown_table,
    write_results,
)

__all__ = [
    "GROUPS",
    "Features",
    "LinearProbe",
    "class_groups",
    "compute_metrics",
    "evaluate_features",
    "features_from_table",
    "few_shot_subset",
    "fit_linear",
    "group_of",
    "markdown_table",
    "per_class_accuracy",
    "per_class_count",
    "predict",
    "predict_logits",
    "write_results",
]
