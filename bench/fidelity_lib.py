"""Ray-free pieces of the fidelity experiment (issue 21): data, pretraining, scoring, retraining, probing.

Everything calls the library's own functions (model, train step, seeded views, ECLE, proximity, K-center,
linear probe) in one process, so a variant of the selection costs seconds once a model and its scores are
cached under ``cache_dir``. Labels are used only to measure.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mak_ray.augment import clean_batch, seeded_views
from mak_ray.config import EvalSection, ModelSection, TrainSection
from mak_ray.demo import fashion_mnist
from mak_ray.demo.longtail import balanced_subset, build_split, long_tail_counts
from mak_ray.demo.ood import make_ood_images
from mak_ray.evaluate.linear import fit_linear, predict
from mak_ray.mak import ecle
from mak_ray.models import build_model
from mak_ray.train.loop import make_optimizer, train_step

log = logging.getLogger(__name__)

IMAGE_SIZE = 28
REAL_KINDS = ("ood-digits", "ood-faces", "ood-objects")


@dataclass(frozen=True)
class Setup:
    """The issue's held-out setup: LT target (imbalance 50), 600/class + real near-OOD pool, K = 300."""

    n_max: int = 500
    imbalance: float = 50.0
    pool_per_class: int = 600
    n_ood: int = 3000
    ood_kinds: tuple[str, ...] = REAL_KINDS
    eval_train_per_class: int = 200
    eval_test_per_class: int = 500
    k: int = 300
    n_tail: int = 3  # the tail: the n_tail rarest target classes


@dataclass
class Data:
    target_x: np.ndarray  # uint8 [N, 28, 28]
    target_y: np.ndarray  # int64 class ids
    pool_x: np.ndarray
    pool_y: np.ndarray  # class id, or -1 for OOD
    pool_kind: list[str]  # class name or OOD kind
    eval_train: tuple[np.ndarray, np.ndarray]
    eval_test: tuple[np.ndarray, np.ndarray]
    tail: list[int]  # class ids of the n_tail rarest target classes
    counts: dict[int, int]


def make_data(setup: Setup, seed: int) -> Data:
    """The target, pool and eval sets of one seed (the tail order is seeded with ``100 + seed``)."""
    train_x, train_y = fashion_mnist.load_split("train")
    test_x, test_y = fashion_mnist.load_split("test")
    counts = long_tail_counts(setup.n_max, 10, setup.imbalance, seed=100 + seed)
    t_idx, rest = build_split(train_y, counts, seed + 1)
    rng = np.random.default_rng([seed, 2])
    pool_idx = np.concatenate(
        [rng.choice(rest[train_y[rest] == c], setup.pool_per_class, replace=False) for c in range(10)]
    )
    ood_x, ood_kind = make_ood_images(setup.n_ood, IMAGE_SIZE, seed=seed + 7, kinds=setup.ood_kinds)
    pool_x = np.concatenate([train_x[pool_idx], ood_x])
    pool_y = np.concatenate([train_y[pool_idx], -np.ones(setup.n_ood, dtype=np.int64)])
    kinds = [fashion_mnist.CLASS_NAMES[c] for c in train_y[pool_idx]] + list(ood_kind)
    order = rng.permutation(len(pool_y))
    ev_tr = balanced_subset(train_y, setup.eval_train_per_class, seed + 3)
    ev_te = balanced_subset(test_y, setup.eval_test_per_class, seed + 4)
    tail = sorted(sorted(counts, key=lambda c: (counts[c], c))[: setup.n_tail])
    return Data(
        train_x[t_idx],
        train_y[t_idx],
        pool_x[order],
        pool_y[order],
        [kinds[i] for i in order],
        (train_x[ev_tr], train_y[ev_tr]),
        (test_x[ev_te], test_y[ev_te]),
        tail,
        counts,
    )


def rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[..., None], 3, axis=-1)


def train_simclr(
    model: torch.nn.Module,
    images: np.ndarray,
    section: TrainSection,
    seed: int,
) -> list[float]:
    """SimCLR on ``images`` (uint8 [N, 28, 28]) with the library's step; returns the per-epoch mean loss."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 11])
    steps = len(images) // section.batch_size
    opt, sched = make_optimizer(model, section, section.batch_size, steps)
    model.train()
    losses = []
    dev = torch.device("cpu")
    for ep in range(section.epochs):
        perm = rng.permutation(len(images))
        tot = 0.0
        for s in range(steps):
            batch = rgb(images[perm[s * section.batch_size : (s + 1) * section.batch_size]])
            tot += float(train_step(model, opt, sched, batch, IMAGE_SIZE, section.temperature, dev))
        losses.append(tot / max(1, steps))
        log.info("epoch %d/%d loss %.4f", ep + 1, section.epochs, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def embed(model: torch.nn.Module, images: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Clean-pass (backbone features, projections), float32."""
    feats, projs = [], []
    for s in range(0, len(images), batch):
        f = model.embed(clean_batch(rgb(images[s : s + batch]), IMAGE_SIZE))
        feats.append(f.numpy())
        projs.append(model.head(f).numpy())
    return np.concatenate(feats), np.concatenate(projs)


@torch.no_grad()
def view_projections(
    model: torch.nn.Module, images: np.ndarray, keys: list[str], views: int, seed: int, batch: int = 256
) -> np.ndarray:
    """``[views, N, D]`` projections of the seeded SimCLR views (the scorer's views)."""
    out = []
    for s in range(0, len(images), batch):
        v = seeded_views(rgb(images[s : s + batch]), keys[s : s + batch], views, seed, IMAGE_SIZE)
        r, b = v.shape[:2]
        out.append(model(v.view(r * b, *v.shape[2:])).view(r, b, -1).numpy())
    return np.concatenate(out, axis=1)


def score_all(model: torch.nn.Module, data: Data, seed: int, views: int = 10, bank_size: int = 1024) -> dict:
    """Pool and target: ECLE against one pool bank, clean features and projections, mean view projection."""
    pool_keys = [f"pool-{i}" for i in range(len(data.pool_x))]
    tgt_keys = [f"target-{i}" for i in range(len(data.target_x))]
    t0 = time.perf_counter()
    pv = view_projections(model, data.pool_x, pool_keys, views, seed)
    tv = view_projections(model, data.target_x, tgt_keys, views, seed)
    bank_idx = np.sort(np.random.default_rng([seed, 0xBA4C]).choice(len(pool_keys), bank_size, replace=False))
    bank = pv[:, bank_idx]
    pe = ecle(pv, bank, temperature=0.2, batch_size=512, repeats=10, seed=seed, keys=pool_keys)
    te = ecle(tv, bank, temperature=0.2, batch_size=512, repeats=10, seed=seed, keys=tgt_keys)
    pf, pp = embed(model, data.pool_x)
    tf, tp = embed(model, data.target_x)
    return {
        "pool_ecle": pe,
        "target_ecle": te,
        "pool_feat": pf,
        "pool_proj": pp,
        "target_feat": tf,
        "target_proj": tp,
        "pool_vmean": pv.mean(0),
        "target_vmean": tv.mean(0),
        "score_s": np.float64(time.perf_counter() - t0),
    }


def model_cfg(width: int) -> ModelSection:
    return ModelSection(arch="resnet18", width=width, small_stem=True, proj_dim=128)


def pretrain_section(epochs: int, temperature: float = 0.2) -> TrainSection:
    return TrainSection(epochs=epochs, batch_size=128, lr=0.5, warmup_epochs=2, temperature=temperature)


def cached_run(
    cache: Path,
    data: Data,
    seed: int,
    width: int,
    epochs: int,
    temperature: float = 0.2,
    pool_epochs: int = 0,
) -> tuple[torch.nn.Module, dict]:
    """Pretrain and score, both cached under ``cache``.

    ``pool_epochs > 0``: first SimCLR on target + the unlabelled pool for that many epochs (a backbone that has
    seen more than the target, without labels), then ``epochs`` on the target alone, as an ``init_checkpoint``
    followed by the usual pretraining would.
    """
    cache.mkdir(parents=True, exist_ok=True)
    cfg = model_cfg(width)
    model = build_model(cfg)
    mpath, spath = cache / "model.pt", cache / "scores.npz"
    if mpath.exists():
        model.load_state_dict(torch.load(mpath, weights_only=True))
        model.eval()
    else:
        torch.manual_seed(seed)
        model = build_model(cfg)
        t0 = time.perf_counter()
        losses = []
        if pool_epochs > 0:
            both = np.concatenate([data.target_x, data.pool_x])
            losses += train_simclr(model, both, pretrain_section(pool_epochs, temperature), seed + 900)
        losses += train_simclr(model, data.target_x, pretrain_section(epochs, temperature), seed)
        torch.save(model.state_dict(), mpath)
        meta = {
            "losses": losses,
            "pretrain_s": time.perf_counter() - t0,
            "width": width,
            "epochs": epochs,
            "pool_epochs": pool_epochs,
        }
        (cache / "meta.json").write_text(json.dumps(meta))
    if spath.exists():
        scores = dict(np.load(spath))
    else:
        scores = score_all(model, data, seed)
        np.savez(spath, **scores)
    return model, scores


def retrain_and_probe(
    pretrained: torch.nn.Module,
    width: int,
    data: Data,
    picks: np.ndarray | None,
    seed: int,
    epochs: int = 10,
    from_scratch: bool = False,
) -> dict:
    """SimCLR on target + picks, then a linear probe on the eval sets.

    Warm-started from the pretrained model by default (as the demo retrains); ``from_scratch`` trains a fresh
    model of the same shape instead, as the paper retrains, so the picks shape the whole representation.
    """
    if from_scratch:
        torch.manual_seed(seed + 500)
    model = build_model(model_cfg(width))
    if not from_scratch:
        model.load_state_dict(pretrained.state_dict())
    imgs = (
        data.target_x
        if picks is None or len(picks) == 0
        else np.concatenate([data.target_x, data.pool_x[picks]])
    )
    t0 = time.perf_counter()
    train_simclr(model, imgs, pretrain_section(epochs), seed + 500)
    t_train = time.perf_counter() - t0
    return probe(model, data, seed) | {"retrain_s": t_train}


def probe(model: torch.nn.Module, data: Data, seed: int, eval_cfg: EvalSection | None = None) -> dict:
    eval_cfg = eval_cfg or EvalSection(epochs=100, batch_size=256)
    xtr, ytr = data.eval_train
    xte, yte = data.eval_test
    ftr, _ = embed(model, xtr)
    fte, _ = embed(model, xte)
    lin = fit_linear(ftr, ytr, 10, eval_cfg, seed)
    pred = predict(lin, fte)
    per_class = {int(c): float((pred[yte == c] == c).mean()) for c in range(10)}
    return {
        "acc": float((pred == yte).mean()),
        "few_acc": float(np.mean([per_class[c] for c in data.tail])),
        "per_class": per_class,
    }


def setup_dict(setup: Setup) -> dict:
    return asdict(setup)
