"""The report never loads the pool: counts are streamed, the scatter uses a seeded sample of at most 20,000
rows (checked on a run of 10^5 scored rows, in a fresh process whose Arrow memory peak is measured)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa

from mak_ray import storage
from mak_ray.layout import RunLayout
from mak_ray.report.collect import SCATTER_ROWS, collect

N = 100_000
ROWS_PER_PART = 1000


def _fake_scores(run: str) -> pa.Table:
    layout = RunLayout(run)
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b", "c", "ood-x"])[rng.integers(0, 4, N)]
    failed = rng.random(N) < 0.01
    table = pa.table(
        {
            "id": pa.array([f"s3://bucket/pool/{i:09d} with space.jpg" for i in range(N)], pa.string()),
            "ecle": pa.array(rng.random(N).astype(np.float32), mask=failed),
            "proximity": pa.array(rng.random(N).astype(np.float32), mask=failed),
            "label": pa.array(labels.tolist(), pa.string()),
            "error": pa.array(["corrupt" if f else None for f in failed], pa.string()),
            "shard": pa.array([f"{i // ROWS_PER_PART:06d}" for i in range(N)], pa.string()),
        }
    )
    for k in range(0, N, ROWS_PER_PART):
        storage.write_parquet(table.slice(k, ROWS_PER_PART), layout.scores.part(f"{k:09d}", "part-0.parquet"))
    picks = [
        "s3://bucket/pool/000000007 with space.jpg",
        "s3://bucket/pool/000099999 with space.jpg",
        "not\nin pool",
    ]
    storage.write_parquet(
        pa.table({"id": picks, "order": [0, 1, 2], "ecle": [0.5, 0.5, 0.5], "proximity": [0.1, 0.1, 0.1]}),
        layout.selection("mak").parquet,
    )
    return table


PROBE = """
import json, sys
import pyarrow as pa
from mak_ray.report.collect import collect
data = collect(sys.argv[1])
print(json.dumps({"max_memory": pa.default_memory_pool().max_memory(), "sample": data.pool.sample.num_rows,
                  "scored": data.pool.scored, "failed": data.pool.failed, "counts": data.pool.class_counts,
                  "labels": data.selections["mak"].labels}))
"""


def test_report_of_a_big_pool_holds_only_the_sample(tmp_path):
    run = str(tmp_path / "run")
    table = _fake_scores(run)
    full_bytes = table.select(["id", "label", "ecle", "proximity", "error"]).nbytes
    out = subprocess.run([sys.executable, "-c", PROBE, run], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ok = table.filter(pa.compute.is_null(table["error"]))
    assert got["scored"] == ok.num_rows and got["failed"] == N - ok.num_rows
    want_counts = {r["values"]: r["counts"] for r in pa.compute.value_counts(ok["label"]).to_pylist()}
    assert got["counts"] == want_counts
    assert got["sample"] == SCATTER_ROWS
    assert got["labels"][:2] == [table["label"][7].as_py(), table["label"][N - 1].as_py()]
    assert got["labels"][2] is None  # the id with a line break is not in the pool: reported as such
    assert got["max_memory"] < 0.4 * full_bytes, (got["max_memory"], full_bytes)


def test_the_scatter_sample_is_seeded_and_uniform(tmp_path):
    run = str(tmp_path / "run")
    _fake_scores(run)
    a, b = collect(run), collect(run)
    assert a.pool.sample.equals(b.pool.sample)
    share_ood = np.mean([str(v).startswith("ood") for v in a.pool.sample.column("label").to_pylist()])
    assert abs(share_ood - 0.25) < 0.02  # a uniform sample keeps the pool's mix
