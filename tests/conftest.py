"""Shared fixtures: one local Ray instance and one moto S3 server (real HTTP on 127.0.0.1) per session."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port; AWS_* variables point every client at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
        )
    }
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="testing-key-id",
        AWS_SECRET_ACCESS_KEY="testing-secret-key",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
    )
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket per test, as ``s3://name``."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(s3_endpoint: str) -> Iterator[None]:
    """One local Ray instance for the whole session, on 2 CPUs and a short temp dir.

    It depends on ``s3_endpoint`` so that the workers, which inherit the environment at start, reach moto.
    """
    import tempfile

    import ray

    if ray.is_initialized():
        yield
        return
    # Unix socket paths are limited to ~100 bytes, so keep the temp dir short.
    tmp = tempfile.mkdtemp(prefix="mr-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def docs_clone(tmp_path_factory) -> Iterator:
    """A fresh copy of the repository in which tests/test_docs.py runs the documents' local blocks (see
    tests/docblocks.py); its Ray processes are stopped by PID at the end of the session."""
    import shutil
    import tempfile

    from tests.docblocks import DocsClone
    from tests.rayprocs import stop_cluster

    ray_tmp = tempfile.mkdtemp(prefix="dt-", dir="/tmp")  # short: Unix socket paths are limited
    root = tmp_path_factory.mktemp("docs") / "mak-ray"
    root.mkdir()
    try:
        yield DocsClone(root, ray_tmp, timeout_s=1500)
    finally:
        stop_cluster(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def readme_run(docs_clone):
    """The README's local blocks (the quick start on the tiny preset), run once: tests/test_docs.py checks that
    they run, tests/test_pipeline_e2e.py checks the run they leave in ``runs/tiny``."""
    return docs_clone.run("README.md")


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory) -> str:
    """A seeded untrained ResNet-18 of width 8 (64 backbone features, 16-d projection), saved as a model file:
    the scoring tests need *a* model, not a trained one."""
    import torch

    from mak_ray.config import ModelSection
    from mak_ray.models import build_model, save_model

    torch.manual_seed(0)
    cfg = ModelSection(arch="resnet18", width=8, small_stem=True, proj_dim=16)
    uri = str(tmp_path_factory.mktemp("model") / "model.pt")
    save_model(build_model(cfg), cfg, uri)
    return uri


@pytest.fixture(scope="module")
def centroids():
    """Three unit centroids in the 64-d backbone space of ``model_uri``."""
    import numpy as np

    c = np.random.default_rng(5).normal(size=(3, 64)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)
