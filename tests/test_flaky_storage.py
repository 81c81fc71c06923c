"""Flaky storage: a proxy in front of moto fails ~25% of S3 requests with 500 InternalError,
503 SlowDown or a connection reset. Storage calls and the scoring stage retry with backoff and give the
same results as without faults.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mak_ray import storage
from tests.faultproxy import FAULT_KINDS, FaultProxy
from tests.rayprocs import stop_cluster

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
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.standard_normal(n * 8).astype(np.float16)), 8
            ),
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


class RecordingUpstream:
    """A loopback HTTP server that records the raw bytes of each request and answers 200 with a fixed body."""

    def __init__(self) -> None:
        import socketserver

        self.requests: list[bytes] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                raw = b""
                while not raw.endswith(b"\r\n\r\n"):
                    raw += self.rfile.readline()
                head = raw.decode("latin-1").lower()
                if "transfer-encoding: chunked" in head:
                    while True:  # chunk-size line, then data; a zero size ends the body after the blank line
                        size_line = self.rfile.readline()
                        raw += size_line
                        size = int(size_line.split(b";")[0], 16)
                        if size == 0:
                            raw += self.rfile.readline()
                            break
                        raw += self.rfile.read(size + 2)
                elif "content-length:" in head:
                    n = int(head.split("content-length:")[1].split("\r\n")[0])
                    raw += self.rfile.read(n)
                outer.requests.append(raw)
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def raw_exchange(url: str, request: bytes) -> bytes:
    """Send raw request bytes, return everything the server answers until it closes or goes quiet."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(request)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and (out.endswith(b"hello") or out.endswith(b"</Error>")):
                    break
        except ConnectionResetError:
            return out + b"<RESET>"
        except TimeoutError:
            pass
    return out


def test_proxy_forwards_verbatim_and_injects_each_fault() -> None:
    """Headers (Host, case, order) and bodies, plain and chunked, reach the upstream byte for byte;
    each fault kind gives what an S3 client sees from a real server."""
    upstream = RecordingUpstream()
    plain = (
        b"PUT /bkt/a%20b.json?x-id=PutObject HTTP/1.1\r\nHost: s3.example:9000\r\nX-Amz-Date: 20260101T000000Z\r\n"
        b"authorization: AWS4-HMAC-SHA256 Credential=k/x, Signature=abc\r\nContent-Length: 11\r\n"
        b"Connection: close\r\n\r\nhello world"
    )
    chunked = (
        b"PUT /bkt/c HTTP/1.1\r\nHost: 127.0.0.1:1\r\nContent-Encoding: aws-chunked\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5;chunk-signature=ab\r\nhello\r\n0;chunk-signature=cd\r\n\r\n"
    )
    try:
        with FaultProxy(upstream.url, fault_rate=0.0) as proxy:
            for request in (plain, chunked):
                assert raw_exchange(proxy.url, request).endswith(b"hello")
            assert upstream.requests == [plain, chunked]
            # Expect: 100-continue is answered by the proxy and not forwarded (clients never sign it)
            expect = plain.replace(b"Connection: close\r\n", b"Expect: 100-continue\r\nConnection: close\r\n")
            answer = raw_exchange(proxy.url, expect)
            assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")
            assert upstream.requests[-1] == plain
        for kind, expected in (("500", b"<Code>InternalError</Code>"), ("503", b"<Code>SlowDown</Code>")):
            with FaultProxy(upstream.url, fault_rate=1.0, kinds=(kind,)) as proxy:
                answer = raw_exchange(proxy.url, plain)
            assert answer.startswith(f"HTTP/1.1 {kind} ".encode()) and expected in answer
            assert proxy.faults[kind] == 1
        with FaultProxy(upstream.url, fault_rate=1.0, kinds=("reset",)) as proxy:
            assert raw_exchange(proxy.url, plain) == b"<RESET>"
        assert proxy.faults["reset"] == 1
        assert len(upstream.requests) == 3  # failed requests never reach the upstream
    finally:
        upstream.close()


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
    tables = {i: sample_table(300 + 50 * i, seed=i) for i in range(6)}
    for i, t in tables.items():
        storage.write_parquet(t, storage.join(root, "scores", f"shard={i:02d}", "part-0.parquet"))
        storage.write_json(
            storage.join(root, "scores", "_markers", f"{i:02d}.json"), {"shard": i, "rows": t.num_rows}
        )
    big = np.random.default_rng(7).bytes(6 * 1024 * 1024)
    storage.write_bytes(storage.join(root, "bank.bin"), big)

    listed = storage.list_files(storage.join(root, "scores"), (".parquet",))
    assert listed == [storage.join(root, "scores", f"shard={i:02d}", "part-0.parquet") for i in range(6)]
    markers = storage.list_files(storage.join(root, "scores", "_markers"))
    assert markers == [storage.join(root, "scores", "_markers", f"{i:02d}.json") for i in range(6)]
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
        marker = with_endpoint(
            s3_endpoint, storage.read_json, storage.join(root, "scores", "_markers", f"{i:02d}.json")
        )
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
    objects = {storage.join(root, f"{i:02d}.json"): {"shard": i, "ok": True} for i in range(8)}
    for uri, obj in objects.items():
        storage.write_json(uri, obj)
    storage.write_text(storage.join(root, "ids.txt"), "a\nb\n")
    proxy.fault_rate = FAULT_RATE
    for _ in range(3):
        for uri, obj in objects.items():
            assert storage.read_json(uri) == obj
        assert storage.read_text(storage.join(root, "ids.txt")).split() == ["a", "b"]
    assert_every_kind_injected(proxy)


# ------------------------------------------------------------------------------------------ the score stage


def seed_score_inputs(root: str, pool: str) -> list[str]:
    """A run prefix where pretrain and embed_target are complete: a seeded random model and centroids.

    Scoring only needs *a* model and centroids; training one would cost minutes and test nothing here.
    """
    import torch

    from mak_ray.config import load_config
    from mak_ray.layout import RunLayout
    from mak_ray.models import build_model, save_model
    from tests.runs import record_done

    overrides = [f"data.pool={pool}", f"run.output_uri={root}", "score.num_actors=1"]
    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), overrides)
    layout = RunLayout(root)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    save_model(model, cfg.model, layout.pretrain.model)
    record_done(cfg, "pretrain")
    centroids = (
        np.random.default_rng(0).standard_normal((cfg.score.centroids, model.feature_dim)).astype(np.float32)
    )
    storage.write_npy(layout.centroids, centroids)
    target = np.random.default_rng(1).standard_normal((20, model.feature_dim)).astype(np.float16)
    storage.write_parquet(
        pa.table(
            {
                "id": [f"t{i}" for i in range(20)],
                "label": ["c"] * 20,
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(target.ravel()), model.feature_dim),
                "error": pa.array([None] * 20, pa.string()),
            }
        ),
        layout.target_embeddings.part("t", "part-0.parquet"),
    )
    record_done(cfg, "embed_target")
    return overrides


def run_score_job(overrides: list[str], endpoint: str, timeout_s: float = 150) -> subprocess.CompletedProcess:
    """``python -m jobs.score`` in a subprocess with its own local Ray instance, talking to S3 at ``endpoint``.

    A subprocess because Ray workers inherit the environment at start: the session's Ray instance already
    points at the fault-free endpoint. The instance gets its own temp dir, so it is stopped on its own.
    """
    ray_tmp = tempfile.mkdtemp(prefix="fs-", dir="/tmp")
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.score", "--config", "configs/tiny.yaml", *overrides]
    try:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    finally:
        stop_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_score_stage_under_faults_matches_fault_free_run(
    ray_session: None, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    """Score the tiny pool twice, once straight to moto (in this process, on the session's Ray instance) and
    once through the fault proxy (the score job in a subprocess): same rows, same ECLE, proximity and
    embeddings, nothing failed, nothing lost or duplicated."""
    from mak_ray.config import load_config
    from mak_ray.demo.make import make_demo_data
    from mak_ray.pipeline import run_stage

    info = make_demo_data(str(tmp_path / "demo"), "tiny", synthetic=True)
    pool = f"{s3_bucket}/inputs/pool"
    part = sorted(Path(info["paths"]["pool"]).glob("*.parquet"))[0]  # one shard (100 images) keeps it short
    storage.write_bytes(f"{pool}/{part.name}", part.read_bytes())
    n_pool = pq.ParquetFile(part).metadata.num_rows
    runs = {"clean": f"{s3_bucket}/runs/clean", "flaky": f"{s3_bucket}/runs/flaky"}
    overrides = {name: seed_score_inputs(root, pool) for name, root in runs.items()}

    t0 = time.monotonic()
    run_stage("score", load_config(str(REPO / "configs" / "tiny.yaml"), overrides["clean"]))
    t1 = time.monotonic()
    with FaultProxy(s3_endpoint, fault_rate=FAULT_RATE, seed=99) as proxy:
        flaky = run_score_job(overrides["flaky"], proxy.url)
    print(f"score job: {t1 - t0:.0f} s fault-free, {time.monotonic() - t1:.0f} s through the proxy")
    print(f"faults injected: {dict(proxy.faults)}, forwarded: {dict(proxy.forwarded)}")
    assert flaky.returncode == 0, flaky.stderr[-8000:]
    for kind in FAULT_KINDS:
        assert proxy.faults[kind] > 0, f"no {kind} fault was injected: {dict(proxy.faults)}"

    columns = ["id", "ecle", "proximity", "embedding", "label", "error"]
    tables = {
        name: storage.read_parquet(f"{root}/score", columns=columns).sort_by("id")
        for name, root in runs.items()
    }
    assert tables["clean"].num_rows == n_pool
    assert tables["clean"].column("error").null_count == n_pool  # nothing failed, in either run
    ids = tables["flaky"].column("id").to_pylist()
    assert len(ids) == len(set(ids)) == n_pool
    for col in columns:
        assert tables["flaky"].column(col).equals(tables["clean"].column(col)), col
    summaries = {name: storage.read_json(f"{root}/score/summary.json") for name, root in runs.items()}
    for key in ("inputs", "scored", "failed", "failed_by_reason"):
        assert summaries["flaky"][key] == summaries["clean"][key], key
    assert summaries["flaky"]["inputs"] == summaries["flaky"]["scored"] == n_pool


def test_forbidden_object_is_a_failed_row_not_a_retry_loop(proxy: FaultProxy, s3_bucket: str) -> None:
    """An object answered 403 AccessDenied (as under a bucket policy or ACL) becomes one failed row at once."""
    import time

    from mak_ray.config import DataSection
    from mak_ray.data import read_shard
    from tests.plans import shards as plan_shards
    from tests.samples import good_image_bytes

    rng = np.random.default_rng(0)
    for name in ("a.png", "secret.png", "c.png"):
        storage.write_bytes(f"{s3_bucket}/pool/cls/{name}", good_image_bytes(rng))
    proxy.deny = ("/pool/cls/secret.png",)
    shards = plan_shards(f"{s3_bucket}/pool", DataSection(files_per_shard=10))
    t0 = time.monotonic()
    batches = [b for s in shards for b in read_shard(s, DataSection(image_size=16))]
    rows = pa.concat_tables([b.select(["id", "error"]) for b in batches])  # frames differ in shape per batch
    elapsed = time.monotonic() - t0
    errors = dict(zip(rows["id"].to_pylist(), rows["error"].to_pylist()))
    assert errors == {
        f"{s3_bucket}/pool/cls/a.png": None,
        f"{s3_bucket}/pool/cls/secret.png": "read_error:access_denied",
        f"{s3_bucket}/pool/cls/c.png": None,
    }
    assert proxy.faults["403"] >= 1
    assert elapsed < 10, f"a 403 must not be retried with backoff ({elapsed:.1f} s)"
    with pytest.raises(OSError):
        storage.read_bytes(f"{s3_bucket}/pool/cls/secret.png")
