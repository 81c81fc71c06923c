"""Flaky storage (issue 9): a proxy in front of moto fails ~25% of S3 requests with 500 InternalError,
503 SlowDown or a connection reset. Storage calls and the scoring stage retry with backoff and give the
same results as without faults.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mak_ray import storage
from tests.faultproxy import FAULT_KINDS, FaultProxy

REPO = Path(__file__).resolve().parent.parent
FAULT_RATE = 0.25


@pytest.fixture
def proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The fault proxy in front of moto, with AWS_ENDPOINT_URL pointing at it for this test only.

    It starts with no faults so that a test can set up its data first; the storage module caches one
    filesystem per endpoint, so the proxy's endpoint gets its own client (and its own retry state).
    """
    with FaultProxy(s3_endpoint, fault_rate=0.0, seed=1234) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        yield p


def sample_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": [f"img-{seed}-{i:05d}" for i in range(n)],
            "ecle": pa.array(rng.random(n, dtype=np.float32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(n * 8).astype(np.float16)), 8),
            "label": pa.array([None if i % 7 == 0 else f"c{i % 5}" for i in range(n)], pa.string()),
        }
    )


def with_endpoint(endpoint: str, fn, *args):
    """Call ``fn`` with AWS_ENDPOINT_URL temporarily set to ``endpoint`` (fault-free reads for checking)."""
    saved = os.environ["AWS_ENDPOINT_URL"]
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        return fn(*args)
    finally:
        os.environ["AWS_ENDPOINT_URL"] = saved


def assert_every_kind_injected(proxy: FaultProxy) -> None:
    print(f"faults injected: {dict(proxy.faults)}, forwarded: {dict(proxy.forwarded)}")
    for kind in FAULT_KINDS:
        assert proxy.faults[kind] > 0, f"no {kind} fault was injected: {dict(proxy.faults)}"


def test_writes_listing_and_parquet_reads_survive_faults(
    proxy: FaultProxy, s3_bucket: str, s3_endpoint: str
) -> None:
    """Multipart uploads, HEAD, listing and Parquet reads retry through 500, 503 and resets."""
    proxy.fault_rate = FAULT_RATE
    root = f"{s3_bucket}/flaky"
    tables = {i: sample_table(300 + 50 * i, seed=i) for i in range(8)}
    for i, t in tables.items():
        storage.write_parquet(t, storage.join(root, "scores", f"shard={i:02d}", "part-0.parquet"))
        storage.write_json(storage.join(root, "scores", "_markers", f"{i:02d}.json"), {"shard": i, "rows": t.num_rows})
    big = np.random.default_rng(7).bytes(6 * 1024 * 1024)
    storage.write_bytes(storage.join(root, "bank.bin"), big)

    listed = storage.list_files(storage.join(root, "scores"), (".parquet",))
    assert listed == [storage.join(root, "scores", f"shard={i:02d}", "part-0.parquet") for i in range(8)]
    markers = storage.list_files(storage.join(root, "scores", "_markers"))
    assert markers == [storage.join(root, "scores", "_markers", f"{i:02d}.json") for i in range(8)]
    for i, t in tables.items():
        assert storage.read_parquet(listed[i]).equals(t)
    whole = storage.read_parquet(storage.join(root, "scores"), columns=["id", "ecle"])
    expected = pa.concat_tables([t.select(["id", "ecle"]) for t in tables.values()])
    assert whole.sort_by("id").equals(expected.sort_by("id"))
    assert storage.read_bytes(storage.join(root, "bank.bin")) == big
    assert storage.exists(storage.join(root, "bank.bin"))
    assert not storage.exists(storage.join(root, "nothing-here"))

    # what landed in the bucket is exactly what was written: read it back without the proxy
    clean = with_endpoint(s3_endpoint, storage.read_parquet, storage.join(root, "scores"))
    assert clean.sort_by("id").equals(pa.concat_tables(tables.values()).sort_by("id"))
    for i, t in tables.items():
        marker = with_endpoint(s3_endpoint, storage.read_json, storage.join(root, "scores", "_markers", f"{i:02d}.json"))
        assert marker == {"shard": i, "rows": t.num_rows}
    assert with_endpoint(s3_endpoint, storage.read_bytes, storage.join(root, "bank.bin")) == big
    assert_every_kind_injected(proxy)
    assert proxy.total_faults >= 0.1 * sum(proxy.forwarded.values())


def test_small_object_reads_survive_faults(proxy: FaultProxy, s3_bucket: str) -> None:
    """Markers, summaries and configs are tiny objects; their reads must retry like everything else.

    pyarrow's S3 reader hands the SDK a buffer sized like the requested range and the SDK writes an error
    response's XML body into it. When the body is longer than the object (a 30-byte JSON vs ~200 bytes of
    ``<Error>...``), the write overflows, curl aborts, and the SDK reports a *non-retryable*
    ``INTERNAL_FAILURE: Failed to flush response stream``: the SDK retry strategy never sees the 500/503.
    So small reads need a retry above pyarrow (in mak_ray.storage).
    """
    root = f"{s3_bucket}/small"
    objects = {storage.join(root, f"{i:02d}.json"): {"shard": i, "ok": True} for i in range(10)}
    for uri, obj in objects.items():
        storage.write_json(uri, obj)
    storage.write_text(storage.join(root, "ids.txt"), "a\nb\n")
    proxy.fault_rate = FAULT_RATE
    for _ in range(3):
        for uri, obj in objects.items():
            assert storage.read_json(uri) == obj
        assert storage.read_text(storage.join(root, "ids.txt")).split() == ["a", "b"]
    assert_every_kind_injected(proxy)
