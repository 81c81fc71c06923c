"""The pipeline's stages and the selection methods, named once for the CLI, the jobs, the config, the report
and the tests.

This module imports nothing heavy: the config validates method names against it, and the CLI builds its
subcommands from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

METHODS: tuple[str, ...] = ("mak_gated", "mak", "random", "tailness", "proximity", "kcenter")
"""Selection methods: MAK, its label-free gated variant, and the ablations (see :mod:`mak_ray.select.methods`)."""

DIVERSE_METHODS = frozenset({"mak", "mak_gated", "kcenter"})
"""Methods that finish with greedy K-center over their candidates."""

TARGET_ONLY = "target_only"
"""The evaluated model trained on the target set alone (the pretrained model)."""


@dataclass(frozen=True)
class StageSpec:
    """One stage: what it is called, what it reads, and where its code lives (``mak_ray.stages.<module>``).

    ``config``, ``needs``, ``consumes`` and ``needs_data`` are also what the stage's fingerprint records
    (:mod:`mak_ray.fingerprint`), so a rerun skips the stage only while none of them changed. ``config`` names
    the fields that decide the *content* of the output; settings that only decide how or where the work runs
    (actor counts, CPUs, checkpoint period) are left out, so changing them never redoes finished work.
    """

    name: str
    module: str
    help: str
    needs: tuple[str, ...] = ()  # earlier stages whose outputs it reads
    needs_data: tuple[str, ...] = ()  # ``data.*`` inputs it reads
    config: tuple[str, ...] = ()  # dotted config fields its output depends on
    consumes: tuple[str, ...] = ()  # earlier stages whose outputs it reads when present, without needing them
    # "method": one part per selection method (``<stage>/<method>``); "model": one per evaluated model
    parts: Literal["method", "model"] | None = None
    # when only its input listing changed, a rerun keeps the finished shards that are still planned (the
    # scoring engine drops the shards no longer in the input and scores the new ones) instead of starting over
    resumes_on_new_inputs: bool = False
    # raised when a new mak-ray version writes this stage's output with more in it or other meaning, so that
    # outputs written before are redone; recorded in the fingerprint only from 2 on (older records lack it)
    output_version: int = 1

    @property
    def command(self) -> str:
        """The CLI subcommand and the ``jobs`` entrypoint name."""
        return self.name.replace("_", "-")

    def part_names(self, methods: list[str]) -> list[str]:
        """The stage's parts for the configured selection ``methods`` (none for a stage without parts)."""
        if self.parts == "method":
            return list(methods)
        if self.parts == "model":
            return [TARGET_ONLY, *methods]
        return []


# How images are read and decoded: every stage that reads images depends on these.
_READ = ("data.format", "data.id_column", "data.image_column", "data.image_size", "data.max_pixels")
_LABELS = ("data.labels_from_parent", "data.label_column")


def _train(section: str) -> tuple[str, ...]:
    fields = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "temperature", "warmup_epochs")
    # num_workers splits the global batch, so it changes the gathered negatives and the BatchNorm statistics
    return (*(f"{section}.{f}" for f in (*fields, "num_workers")), "run.seed", *_READ)


_MODEL = ("model.arch", "model.small_stem", "model.proj_dim", "model.width", "model.init_checkpoint")

_SPECS = (
    StageSpec(
        "pretrain",
        "pretrain",
        "SimCLR pretraining on the target set (Ray Train)",
        needs_data=("target",),
        config=(*_MODEL, *_train("pretrain")),
    ),
    StageSpec(
        "embed_target",
        "embed",
        "embed the target set without augmentation, fit the K-means centroids, and record the target's own "
        "distance quantiles",
        needs=("pretrain",),
        needs_data=("target",),
        config=(*_READ, *_LABELS, "score.embedding_dtype", "score.centroids", "run.seed"),
        output_version=2,  # reference.json
    ),
    StageSpec(
        "score",
        "score",
        "stream the pool through Ray Data actors: ECLE, embedding, proximity and nearest-target distance to "
        "Parquet, and the diagnostics",
        output_version=2,  # nn_distance, diagnostics.json
        needs=("pretrain", "embed_target"),
        needs_data=("pool",),
        config=(
            *(f"score.{f}" for f in ("views", "ecle_batch_size", "ecle_repeats", "temperature", "bank_size")),
            "score.embedding_dtype",
            "run.seed",
            *_READ,
            *_LABELS,
            # the shard cut: the output and its markers are per shard
            "data.files_per_shard",
            "data.parquet_rows_per_shard",
        ),
        resumes_on_new_inputs=True,
    ),
    StageSpec(
        "select",
        "select",
        "MAK selection, its gated variant and the configured baselines (random, tailness, proximity, kcenter)",
        needs=("embed_target", "score"),
        config=(
            *(
                f"select.{f}"
                for f in (
                    "budget",
                    "core_ratio",
                    "loss_weight",
                    "gate_quantile",
                    "kcenter_shards",
                    "per_shard_k",
                )
            ),
            "run.seed",
        ),
        parts="method",
    ),
    StageSpec(
        "retrain",
        "retrain",
        "retrain SimCLR on the target plus each selection",
        needs=("pretrain", "embed_target", "score", "select"),
        needs_data=("target", "pool"),
        config=(*_MODEL, *_train("retrain"), "retrain.from_pretrained"),
        parts="method",
    ),
    StageSpec(
        "evaluate",
        "evaluate",
        "linear probe and few-shot evaluation of each model",
        needs=("pretrain", "embed_target", "retrain"),
        needs_data=("eval_train", "eval_test"),
        config=(
            *(f"evaluate.{f}" for f in ("lr", "epochs", "weight_decay", "batch_size", "few_shot")),
            "evaluate.many_threshold",
            "evaluate.few_threshold",
            "score.embedding_dtype",
            "run.seed",
            *_READ,
            *_LABELS,
        ),
        parts="model",
    ),
    StageSpec(
        "report",
        "report",
        "HTML report with histograms, OOD shares, scatter plot, accuracy table and timings",
        consumes=("pretrain", "embed_target", "score", "select", "retrain", "evaluate"),
        config=("evaluate.many_threshold", "evaluate.few_threshold"),
    ),
)

STAGE_SPECS: dict[str, StageSpec] = {s.name: s for s in _SPECS}
STAGES: tuple[str, ...] = tuple(s.name for s in _SPECS)
"""The stages in pipeline order."""
