"""The pipeline's stages and the selection methods, named once for the CLI, the jobs, the config, the report
and the tests.

This module imports nothing heavy: the config validates method names against it, and the CLI builds its
subcommands from it.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS: tuple[str, ...] = ("mak", "random", "tailness", "proximity", "kcenter")
"""Selection methods: MAK and its ablations (see :mod:`mak_ray.select.methods`)."""

DIVERSE_METHODS = frozenset({"mak", "kcenter"})
"""Methods that finish with greedy K-center over their candidates."""

TARGET_ONLY = "target_only"
"""The evaluated model trained on the target set alone (the pretrained model)."""


@dataclass(frozen=True)
class StageSpec:
    """One stage: what it is called, what it reads, and where its code lives (``mak_ray.stages.<module>``)."""

    name: str
    module: str
    help: str
    needs: tuple[str, ...] = ()  # earlier stages whose outputs it reads
    needs_data: tuple[str, ...] = ()  # ``data.*`` inputs it reads

    @property
    def command(self) -> str:
        """The CLI subcommand and the ``jobs`` entrypoint name."""
        return self.name.replace("_", "-")


_SPECS = (
    StageSpec(
        "pretrain",
        "pretrain",
        "SimCLR pretraining on the target set (Ray Train)",
        needs_data=("target",),
    ),
    StageSpec(
        "embed_target",
        "embed",
        "embed the target set without augmentation and fit the K-means centroids",
        needs=("pretrain",),
        needs_data=("target",),
    ),
    StageSpec(
        "score",
        "score",
        "stream the pool through Ray Data actors: ECLE, embedding, proximity to Parquet",
        needs=("pretrain", "embed_target"),
        needs_data=("pool",),
    ),
    StageSpec(
        "select",
        "select",
        "MAK selection and the configured baselines (random, tailness, proximity, kcenter)",
        needs=("embed_target", "score"),
    ),
    StageSpec(
        "retrain",
        "retrain",
        "retrain SimCLR on the target plus each selection",
        needs=("select",),
        needs_data=("target", "pool"),
    ),
    StageSpec(
        "evaluate",
        "evaluate",
        "linear probe and few-shot evaluation of each model",
        needs=("pretrain", "embed_target", "retrain"),
        needs_data=("eval_train", "eval_test"),
    ),
    StageSpec(
        "report",
        "report",
        "HTML report with histograms, OOD shares, scatter plot, accuracy table and timings",
    ),
)

STAGE_SPECS: dict[str, StageSpec] = {s.name: s for s in _SPECS}
STAGES: tuple[str, ...] = tuple(s.name for s in _SPECS)
"""The stages in pipeline order."""
