"""Every artefact path of a run, and its done markers, in one place.

A run lives under ``run.output_uri`` (a local folder or ``s3://bucket/prefix``). Stages talk to each other only
through these files, so this module is the contract between them: each stage, the report and the tests ask a
:class:`RunLayout` for paths, and nothing else joins run paths. Ids from pool data never become path parts;
the only names taken from outside are shard ids (made by the planner) and method and model names (from the
registry).

```
config.yaml  timings.json  summary.json
plan/<input>/      plan.json and the manifest of one input (pool, target, eval_train, eval_test)
pretrain/          model.pt, train_metrics.json, Ray Train's run folder pretrain/pretrain/
embed/target/      sharded output (embeddings), centroids.npy, reference.json (the target's own distances)
score/             sharded output (ecle, proximity, nn_distance, embeddings), bank.npy, bank.json,
                   diagnostics.json
select/<method>/   selection.parquet, selection.txt, summary.json (candidates/ while the stage runs)
retrain/data/<set>/  the training rows fetched once (target, and each method's selected pool objects)
retrain/<method>/  model.pt, train_metrics.json, Ray Train's run folder
embed/eval/<model>/<split>/   sharded output (embeddings of the evaluation sets)
evaluate/<model>/  metrics.json, metrics.md
report/            index.html, report_data.json, the plots as PNG
```

Each stage folder, and each part folder of a stage made of parts (``select/<method>``, ``retrain/<method>``,
``evaluate/<model>``), holds ``_SUCCESS`` (written last, with the stage's summary) and ``_FINGERPRINT.json``
(what its output was made from, :mod:`mak_ray.fingerprint`).

A *sharded output* (:class:`ShardedOutput`) is what the scoring engine writes: ``shard=<sid>/part-*.parquet``,
batches of finished-shard markers under ``_markers/``, ``params.json`` (what the rows depend on: model,
bank, centroids, scoring settings) and ``summary.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mak_ray import storage
from mak_ray.registry import STAGE_SPECS

SUCCESS = "_SUCCESS"
FINGERPRINT = "_FINGERPRINT.json"


def success_marker(stage_dir: str) -> str:
    return storage.join(stage_dir, SUCCESS)


def fingerprint_file(stage_dir: str) -> str:
    """Beside ``_SUCCESS``: what the output in ``stage_dir`` was made from (see :mod:`mak_ray.fingerprint`)."""
    return storage.join(stage_dir, FINGERPRINT)


def done(stage_dir: str) -> bool:
    """Whether the stage (or part of a stage) that writes ``stage_dir`` finished: its marker is written last."""
    return storage.exists(success_marker(stage_dir))


def mark_done(stage_dir: str, info: dict | None = None) -> None:
    storage.write_json(success_marker(stage_dir), info or {})


def read_done(stage_dir: str) -> dict:
    """The information a finished stage left in its marker."""
    return storage.read_json(success_marker(stage_dir))


@dataclass(frozen=True)
class ShardedOutput:
    """The scoring engine's output: Parquet parts per shard, one marker per finished shard, a summary."""

    root: str
    SHARD_PREFIX = "shard="
    MARKERS = "_markers"

    def shard_dir(self, sid: str) -> str:
        return storage.join(self.root, f"{self.SHARD_PREFIX}{sid}")

    def part(self, sid: str, name: str) -> str:
        return storage.join(self.shard_dir(sid), name)

    @property
    def markers_dir(self) -> str:
        return storage.join(self.root, self.MARKERS)

    def marker_batch(self, name: str) -> str:
        """One batch of finished-shard markers (JSON lines: shard, rows, scored, failed by reason)."""
        return storage.join(self.markers_dir, f"{name}.jsonl")

    @property
    def params(self) -> str:
        """What the rows depend on; a rerun with other params starts the output afresh."""
        return storage.join(self.root, "params.json")

    @property
    def summary(self) -> str:
        return storage.join(self.root, "summary.json")

    def file(self, name: str) -> str:
        """A stage's own file beside the shards (the negative bank, the centroids)."""
        return storage.join(self.root, name)


@dataclass(frozen=True)
class PlanFolder:
    """The plan of one input (:mod:`mak_ray.data.manifest`): ``plan.json``, the manifest folders (the part
    files and shard index inside are named by the manifest module), and small samples drawn from it."""

    root: str
    MANIFEST_PREFIX = "manifest-"

    @property
    def plan(self) -> str:
        return storage.join(self.root, "plan.json")

    def manifest(self, token: str) -> str:
        return storage.join(self.root, f"{self.MANIFEST_PREFIX}{token}")

    def sample(self, name: str) -> str:
        """Rows drawn from the manifest for one purpose (the negative bank's candidates), as a manifest part."""
        return storage.join(self.root, "samples", f"{name}.parquet")


@dataclass(frozen=True)
class TrainOutput:
    """What a training run leaves: the final model, its metric history, and Ray Train's run folder."""

    root: str
    run_name: str

    @property
    def model(self) -> str:
        return storage.join(self.root, "model.pt")

    @property
    def metrics(self) -> str:
        return storage.join(self.root, "train_metrics.json")


@dataclass(frozen=True)
class SelectionOutput:
    """One method's selection."""

    root: str

    @property
    def parquet(self) -> str:
        return storage.join(self.root, "selection.parquet")

    @property
    def text(self) -> str:
        return storage.join(self.root, "selection.txt")

    @property
    def summary(self) -> str:
        return storage.join(self.root, "summary.json")

    @property
    def candidates_dir(self) -> str:
        """Working files of the select stage: the method's candidates, one Parquet file per task."""
        return storage.join(self.root, "candidates")

    def candidates(self, task: int) -> str:
        return storage.join(self.candidates_dir, f"part-{task:05d}.parquet")


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run under ``root`` (see the module docstring for the tree)."""

    root: str

    def _at(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    # --- run-level files
    @property
    def config(self) -> str:
        return self._at("config.yaml")

    @property
    def timings(self) -> str:
        return self._at("timings.json")

    @property
    def summary(self) -> str:
        return self._at("summary.json")

    # --- stages
    def stage_dir(self, stage: str) -> str:
        """The folder whose ``_SUCCESS`` says that ``stage`` finished."""
        return {
            "pretrain": self._at("pretrain"),
            "embed_target": self.target_embeddings.root,
            "score": self.scores.root,
            "select": self._at("select"),
            "retrain": self._at("retrain"),
            "evaluate": self._at("evaluate"),
            "report": self.report_dir,
        }[stage]

    def part_dir(self, stage: str, part: str) -> str:
        """The folder whose ``_SUCCESS`` says that one part of a stage made of parts finished:
        ``select/<method>``, ``retrain/<method>`` or ``evaluate/<model>``."""
        return {
            "select": lambda: self.selection(part).root,
            "retrain": lambda: self.retrain(part).root,
            "evaluate": lambda: self.evaluation(part),
        }[stage]()

    def outputs(self, stage: str, part: str | None = None) -> list[str]:
        """Every folder that a stage, or one of its parts, writes; deleted before it runs again from scratch.
        A stage made of parts has only its markers of its own (its parts are listed per part)."""
        if part is None:
            return [] if STAGE_SPECS[stage].parts else [self.stage_dir(stage)]
        if stage == "evaluate":
            return [self.evaluation(part), *(self.eval_embeddings(part, s).root for s in ("train", "test"))]
        return [self.part_dir(stage, part)]

    @property
    def pretrain(self) -> TrainOutput:
        return TrainOutput(self._at("pretrain"), "pretrain")

    @property
    def target_embeddings(self) -> ShardedOutput:
        return ShardedOutput(self._at("embed", "target"))

    @property
    def centroids(self) -> str:
        return self.target_embeddings.file("centroids.npy")

    @property
    def target_reference(self) -> str:
        """The target's own distance distributions (nearest-neighbour and centroid distance quantiles): what the
        ``mak_gated`` gate and the score diagnostics compare the pool with."""
        return self.target_embeddings.file("reference.json")

    @property
    def scores(self) -> ShardedOutput:
        return ShardedOutput(self._at("score"))

    @property
    def bank(self) -> str:
        return self.scores.file("bank.npy")

    @property
    def diagnostics(self) -> str:
        """Label-free figures of how far the model separates the pool from the target, and their warnings."""
        return self.scores.file("diagnostics.json")

    @property
    def bank_info(self) -> str:
        """What the bank was drawn with (model digest, sizes, seed): it is kept while they hold."""
        return self.scores.file("bank.json")

    def plan(self, name: str) -> str:
        """The plan folder (:class:`PlanFolder`) of one input: ``pool``, ``target``, ``eval_train``,
        ``eval_test``."""
        return self._at("plan", name)

    def retrain_data(self, name: str) -> str:
        """Training rows fetched once for retraining: ``target``, or a method's selected pool objects."""
        return self._at("retrain", "data", name)

    def selection(self, method: str) -> SelectionOutput:
        return SelectionOutput(self._at("select", method))

    def retrain(self, method: str) -> TrainOutput:
        return TrainOutput(self._at("retrain", method), f"retrain-{method}")

    def eval_embeddings(self, model: str, split: str) -> ShardedOutput:
        return ShardedOutput(self._at("embed", "eval", model, split))

    def evaluation(self, model: str) -> str:
        """The folder of one model's evaluation (metrics.json, metrics.md)."""
        return self._at("evaluate", model)

    def metrics_json(self, model: str) -> str:
        return storage.join(self.evaluation(model), "metrics.json")

    def metrics_md(self, model: str) -> str:
        return storage.join(self.evaluation(model), "metrics.md")

    @property
    def report_dir(self) -> str:
        return self._at("report")

    def report_file(self, name: str) -> str:
        return storage.join(self.report_dir, name)
