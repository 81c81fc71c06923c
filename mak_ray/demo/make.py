"""Write the demo's four input sets and a manifest: ``python -m mak_ray.demo.make --out DIR --preset small``.

Layout under ``out_dir`` (local or ``s3://``):

- ``target/<class>/<id>.png``: the long-tailed labelled target set (class = parent folder);
- ``pool/part-NNNNN.parquet``: the open-world pool, columns ``id``, ``image`` (PNG bytes), ``label``: a seeded
  subset of the train images left after the target, plus OOD images (labels ``ood-<kind>``), shuffled. The
  preset's ``ood_kinds`` and ``ood_weights`` say which kinds fill the OOD share and in what proportion: mostly
  real near-OOD images (``real_ood``: digits, faces, photo objects in the target's look), and a quarter
  generated junk (``ood``: textures, noise, shapes). Labels are there for reports only, never for selection;
- ``eval_train/`` and ``eval_test/``: balanced labelled Parquet sets for the linear and few-shot probes
  (``eval_train`` is drawn from the whole train split, like the paper's balanced linear-probe set, so it may
  overlap target and pool);
- ``manifest.json``: sizes (the pool's OOD count per kind among them), per-class counts per split, the
  head-to-tail class order and the tail classes.
  It is written last, so its presence means the demo data is complete; a rerun with the same settings
  returns it without rewriting anything.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from mak_ray import storage
from mak_ray.demo import fashion_mnist
from mak_ray.demo.longtail import balanced_subset, build_split, long_tail_counts, tail_classes, tail_order
from mak_ray.demo.ood import OOD_KINDS, make_ood_images
from mak_ray.demo.real_ood import REAL_OOD_KINDS
from mak_ray.demo.synthetic import SYNTHETIC_CLASSES, make_synthetic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"

# The pool's OOD share: three quarters real near-OOD (the hard case for proximity), evenly over the real kinds,
# and one quarter generated junk, evenly over the generated kinds.
DEMO_OOD_KINDS: tuple[str, ...] = REAL_OOD_KINDS + OOD_KINDS
DEMO_OOD_WEIGHTS: tuple[int, ...] = (3,) * len(REAL_OOD_KINDS) + (1,) * len(OOD_KINDS)


@dataclass(frozen=True)
class DemoPreset:
    """Sizes of one demo. ``None`` means "all of it" (pool: every train image left after the target)."""

    n_max: int  # head-class size of the long-tailed target
    imbalance_ratio: float  # head / tail size
    pool_size: int | None  # total pool (in-distribution + OOD); None: all remaining train images + OOD
    ood_fraction: float  # share of OOD images in the pool
    eval_train_per_class: int | None
    eval_test_per_class: int | None
    synthetic: bool = False  # generated classes instead of Fashion-MNIST
    image_size: int = 28  # synthetic images only (Fashion-MNIST is 28 px)
    synthetic_train_per_class: int = 6000  # size of the generated "train split" (Fashion-MNIST has 6000)
    synthetic_test_per_class: int = 1000
    shard_rows: int = 1000  # rows per Parquet shard
    budget_fraction: float = 0.1  # suggested selection budget K, relative to the target size
    ood_kinds: tuple[str, ...] = DEMO_OOD_KINDS  # the OOD kinds in the pool (labels), from ood.ALL_OOD_KINDS
    ood_weights: tuple[int, ...] = DEMO_OOD_WEIGHTS  # their relative shares of the pool's OOD images


PRESETS: dict[str, DemoPreset] = {
    # seconds, no dataset needed: target ~204 (n_max 50, ratio 10), pool 300 with 45 OOD, eval 20 / 10 per class
    "tiny": DemoPreset(
        n_max=50,
        imbalance_ratio=10,
        pool_size=300,
        ood_fraction=0.15,
        eval_train_per_class=20,
        eval_test_per_class=10,
        synthetic=True,
        image_size=16,
        synthetic_train_per_class=100,
        synthetic_test_per_class=10,
        shard_rows=100,
    ),
    # the whole pipeline in ~15 min on 2 CPU cores: target ~744, pool 4600 (4002 + 598 OOD), eval 100 / 100
    "small": DemoPreset(
        n_max=300,
        imbalance_ratio=100,
        pool_size=4600,
        ood_fraction=0.13,
        eval_train_per_class=100,
        eval_test_per_class=100,
        synthetic_train_per_class=1000,  # with --synthetic: 10000 generated images cover target + pool
        synthetic_test_per_class=100,
    ),
    # the fidelity bench's setup through the pipeline (~1 h on 2 CPUs): target ~1390 (n_max 500, ratio 50),
    # pool 9000 with a third real near-OOD (no generated kinds), eval 200 / 500 per class, K = the target size
    "nearood": DemoPreset(
        n_max=500,
        imbalance_ratio=50,
        pool_size=9000,
        ood_fraction=1 / 3,
        eval_train_per_class=200,
        eval_test_per_class=500,
        synthetic_train_per_class=3000,
        budget_fraction=1.0,
        ood_kinds=REAL_OOD_KINDS,
        ood_weights=(1,) * len(REAL_OOD_KINDS),
    ),
    # one GPU node: target ~2480, pool 20000 (17000 + 3000 OOD), eval 1000 per class, the full test set
    "medium": DemoPreset(
        n_max=1000,
        imbalance_ratio=100,
        pool_size=20000,
        ood_fraction=0.15,
        eval_train_per_class=1000,
        eval_test_per_class=None,
        synthetic_train_per_class=3000,
        shard_rows=2000,
    ),
    # GPU cluster: target ~12400, pool = all ~47600 remaining train images + 15% OOD, full train/test eval sets
    "full": DemoPreset(
        n_max=5000,
        imbalance_ratio=100,
        pool_size=None,
        ood_fraction=0.15,
        eval_train_per_class=None,
        eval_test_per_class=None,
        shard_rows=5000,
    ),
}


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _pool_sizes(preset: DemoPreset, remaining: int) -> tuple[int, int]:
    """(in-distribution, OOD) counts of the pool."""
    if preset.pool_size is None:
        n_in = remaining
        n_ood = int(round(n_in * preset.ood_fraction / (1.0 - preset.ood_fraction)))
    else:
        n_ood = int(round(preset.pool_size * preset.ood_fraction))
        n_in = preset.pool_size - n_ood
    if n_in > remaining:
        raise ValueError(
            f"pool needs {n_in} in-distribution images but only {remaining} remain after the target"
        )
    return n_in, n_ood


def _load_source(preset: DemoPreset, data_dir: str | None, seed: int) -> dict[str, Any]:
    if preset.synthetic:
        train_x, train_y = make_synthetic(preset.synthetic_train_per_class, preset.image_size, seed)
        test_x, test_y = make_synthetic(preset.synthetic_test_per_class, preset.image_size, seed + 1_000_003)
        return {
            "name": "synthetic",
            "classes": SYNTHETIC_CLASSES,
            "train": (train_x, train_y),
            "test": (test_x, test_y),
        }
    train = fashion_mnist.load_split("train", data_dir)
    test = fashion_mnist.load_split("test", data_dir)
    log.info(
        "Fashion-MNIST from %s: %d train, %d test images",
        data_dir or fashion_mnist.DEFAULT_DATA_DIR,
        len(train[1]),
        len(test[1]),
    )
    return {"name": "fashion-mnist", "classes": fashion_mnist.CLASS_NAMES, "train": train, "test": test}


def _write_parquet_shards(
    uri: str, ids: list[str], images: list[np.ndarray], labels: list[str], shard_rows: int
) -> int:
    shards = max(1, math.ceil(len(ids) / shard_rows))
    for s in range(shards):
        lo, hi = s * shard_rows, min(len(ids), (s + 1) * shard_rows)
        table = pa.table(
            {
                "id": pa.array(ids[lo:hi], pa.string()),
                "image": pa.array([png_bytes(im) for im in images[lo:hi]], pa.binary()),
                "label": pa.array(labels[lo:hi], pa.string()),
            }
        )
        storage.write_parquet(table, storage.join(uri, f"part-{s:05d}.parquet"))
    log.info("wrote %d rows in %d shard(s) to %s", len(ids), shards, uri)
    return shards


def _write_target_pngs(uri: str, ids: list[str], images: np.ndarray, labels: list[str]) -> None:
    def one(i: int) -> None:
        storage.write_bytes(storage.join(uri, labels[i], f"{ids[i]}.png"), png_bytes(images[i]))

    with ThreadPoolExecutor(max_workers=8) as ex:
        for k, _ in enumerate(ex.map(one, range(len(ids))), 1):
            if k % 2000 == 0:
                log.info("target: %d / %d PNG files written", k, len(ids))
    log.info("wrote %d target PNG files to %s", len(ids), uri)


def _settings(preset: DemoPreset) -> dict[str, Any]:
    """The preset as the manifest holds it (JSON types: tuples become lists)."""
    return json.loads(json.dumps(asdict(preset)))


def _same_request(manifest: dict[str, Any], preset_name: str, preset: DemoPreset, seed: int) -> bool:
    return (
        manifest.get("preset") == preset_name
        and manifest.get("seed") == seed
        and manifest.get("settings") == _settings(preset)
    )


def make_demo_data(
    out_dir: str,
    preset: str = "small",
    data_dir: str | None = None,
    seed: int = 0,
    synthetic: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build the demo data under ``out_dir`` and return its manifest (see the module doc for the layout).

    ``synthetic=True`` generates the classes instead of reading Fashion-MNIST (the ``tiny`` preset always does).
    An existing complete demo with the same preset, seed and sizes is reused unless ``overwrite``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    p = PRESETS[preset]
    if synthetic and not p.synthetic:
        p = replace(p, synthetic=True)
    manifest_uri = storage.join(out_dir, MANIFEST)
    if not overwrite and storage.exists(manifest_uri):
        old = storage.read_json(manifest_uri)
        if _same_request(old, preset, p, seed):
            log.info(
                "demo data already complete in %s (preset %s, seed %d): reusing it", out_dir, preset, seed
            )
            return old
        raise FileExistsError(
            f"{out_dir} already holds demo data with other settings (preset {old.get('preset')!r}, "
            f"seed {old.get('seed')!r}); pass --overwrite (overwrite=True) or choose another folder"
        )
    if overwrite:
        for part in ("target", "pool", "eval_train", "eval_test", MANIFEST):
            storage.delete(storage.join(out_dir, part))

    src = _load_source(p, data_dir, seed)
    classes: tuple[str, ...] = tuple(src["classes"])
    train_x, train_y = src["train"]
    test_x, test_y = src["test"]
    n_classes = len(classes)

    # target: long-tailed subset of the train split
    counts = long_tail_counts(p.n_max, n_classes, p.imbalance_ratio, seed)
    target_idx, rest_idx = build_split(train_y, counts, seed + 1)
    target_ids = [f"train-{i:05d}" for i in target_idx]
    target_labels = [classes[train_y[i]] for i in target_idx]
    _write_target_pngs(storage.join(out_dir, "target"), target_ids, train_x[target_idx], target_labels)

    # pool: seeded subset of the remaining train images + the preset's OOD kinds, shuffled together
    n_in, n_ood = _pool_sizes(p, len(rest_idx))
    rng = np.random.default_rng([seed, 2])
    pool_idx = np.sort(rng.choice(rest_idx, size=n_in, replace=False))
    ood_x, ood_labels = make_ood_images(
        n_ood, size=train_x.shape[1], seed=seed + 7, kinds=p.ood_kinds, weights=p.ood_weights
    )
    ood_counts = Counter(ood_labels)
    ood_per_kind = {k: ood_counts[k] for k in p.ood_kinds if ood_counts[k]}
    pool_ids = [f"train-{i:05d}" for i in pool_idx] + [f"ood-{j:05d}" for j in range(n_ood)]
    pool_images = list(train_x[pool_idx]) + list(ood_x)
    pool_labels = [classes[train_y[i]] for i in pool_idx] + list(ood_labels)
    order = rng.permutation(len(pool_ids))
    pool_ids = [pool_ids[k] for k in order]
    pool_images = [pool_images[k] for k in order]
    pool_labels = [pool_labels[k] for k in order]
    pool_shards = _write_parquet_shards(
        storage.join(out_dir, "pool"), pool_ids, pool_images, pool_labels, p.shard_rows
    )

    # balanced labelled eval sets
    ev_tr = balanced_subset(train_y, p.eval_train_per_class, seed + 3)
    ev_te = balanced_subset(test_y, p.eval_test_per_class, seed + 4)
    _write_parquet_shards(
        storage.join(out_dir, "eval_train"),
        [f"train-{i:05d}" for i in ev_tr],
        list(train_x[ev_tr]),
        [classes[train_y[i]] for i in ev_tr],
        p.shard_rows,
    )
    _write_parquet_shards(
        storage.join(out_dir, "eval_test"),
        [f"test-{i:05d}" for i in ev_te],
        list(test_x[ev_te]),
        [classes[test_y[i]] for i in ev_te],
        p.shard_rows,
    )

    def per_class(labels: list[str]) -> dict[str, int]:
        return dict(sorted(Counter(labels).items()))

    manifest = {
        "preset": preset,
        "seed": seed,
        "source": src["name"],
        "settings": _settings(p),
        "image_size": int(train_x.shape[1]),
        "channels": 1,
        "classes": list(classes),
        "head_to_tail": [classes[c] for c in tail_order(n_classes, seed)],
        "tail_classes": [classes[c] for c in tail_classes(counts)],
        "tail_rule": "lower half of the classes by target count",
        "counts": {
            "target": per_class(target_labels),
            "pool": per_class(pool_labels),
            "eval_train": per_class([classes[train_y[i]] for i in ev_tr]),
            "eval_test": per_class([classes[test_y[i]] for i in ev_te]),
        },
        "sizes": {
            "target": len(target_ids),
            "pool": len(pool_ids),
            "pool_in_distribution": n_in,
            "pool_ood": n_ood,
            "pool_ood_kinds": ood_per_kind,
            "pool_shards": pool_shards,
            "eval_train": int(len(ev_tr)),
            "eval_test": int(len(ev_te)),
        },
        "suggested_budget": max(1, int(round(p.budget_fraction * len(target_ids)))),
        "paths": {
            name: storage.join(out_dir, name) for name in ("target", "pool", "eval_train", "eval_test")
        },
    }
    storage.write_json(manifest_uri, manifest)
    log.info(
        "demo %s: target %d images (%s), pool %d (%d OOD: %s), eval_train %d, eval_test %d -> %s",
        preset,
        len(target_ids),
        ", ".join(f"{k}={v}" for k, v in manifest["counts"]["target"].items()),
        len(pool_ids),
        n_ood,
        _kinds_text(ood_per_kind),
        len(ev_tr),
        len(ev_te),
        out_dir,
    )
    return manifest


def _kinds_text(per_kind: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in per_kind.items()) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mak_ray.demo.make", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder or s3:// prefix")
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"folder with the Fashion-MNIST IDX files (default {fashion_mnist.DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="generate the classes instead of Fashion-MNIST"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace existing demo data in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        manifest = make_demo_data(
            args.out, args.preset, args.data_dir, args.seed, args.synthetic, args.overwrite
        )
    except fashion_mnist.FashionMnistMissing as e:
        log.error("%s", e)
        return 2
    except FileExistsError as e:
        log.error("%s", e)
        return 3
    sizes = manifest["sizes"]
    print(
        f"demo data in {args.out}: target {sizes['target']}, pool {sizes['pool']} ({sizes['pool_ood']} OOD: "
        f"{_kinds_text(sizes.get('pool_ood_kinds', {}))}), "
        f"eval_train {sizes['eval_train']}, eval_test {sizes['eval_test']}; suggested budget K={manifest['suggested_budget']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
