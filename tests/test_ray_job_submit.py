"""The cluster path end to end: ``ray start --head`` a real local cluster, ``ray job submit`` the tiny
pipeline with its inputs on the moto S3 endpoint, wait for SUCCEEDED, and check the outputs in S3.

Also the security rules on that run: the job writes only under its output prefix, and the
secret key appears in no output object and in no log (job logs, and every file of the cluster's log folder).

The cluster gets its own short temp dir and free ports, and is stopped by the PIDs of its own processes
(those whose command line names its temp dir, and their descendants): other Ray instances on this machine
(other tests, other sessions) are left alone. Never a bare ``ray stop``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.rayprocs import stop_cluster

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
EXCLUDES = [
    ".git",
    ".venv",
    "runs",
    "demo-data",
    "bench-out",
    "/data",
    "**/__pycache__",
    ".pytest_cache",
    "*.egg-info",
    ".ruff_cache",
]
JOB_TIMEOUT_S = 8 * 60
PIPELINE_JOB_TIMEOUT_S = 15 * 60  # every stage of the tiny pipeline: ~7 min on 2 CPUs shared with other jobs


@dataclass
class LocalCluster:
    temp_dir: str
    dashboard_url: str
    env: dict[str, str]  # environment of the cluster and of the `ray job` CLI calls
    secret: str  # the AWS secret key the cluster was started with (moto accepts any)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ray_cluster(s3_endpoint: str) -> Iterator[LocalCluster]:
    """``ray start --head`` on 2 CPUs, free ports and a short temp dir; AWS_* in its environment (not in a
    runtime_env), with the venv first on PATH so that a job's ``python`` is the venv's interpreter."""
    temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")
    secret = f"mak-secret-{uuid.uuid4().hex}"
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        AWS_SECRET_ACCESS_KEY=secret,
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    dashboard_port = free_port()
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head",
        "--num-cpus", "2", "--num-gpus", "0",
        "--temp-dir", temp_dir,
        "--node-ip-address", "127.0.0.1",
        "--port", str(free_port()),
        "--include-dashboard", "true",
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard_port),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--ray-client-server-port", str(free_port()),
        "--node-manager-port", str(free_port()),
        "--object-manager-port", str(free_port()),
        "--object-store-memory", str(500 * 1024 * 1024),
        "--disable-usage-stats",
    ]  # fmt: skip
    try:
        started = subprocess.run(cmd, env=env, cwd=temp_dir, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, f"ray start failed:\n{started.stdout}\n{started.stderr}"
        url = f"http://127.0.0.1:{dashboard_port}"
        _wait_for_job_api(url)
        yield LocalCluster(temp_dir=temp_dir, dashboard_url=url, env=env, secret=secret)
    finally:
        left = stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"cluster processes still alive after stop: {sorted(left)}"


def _wait_for_job_api(url: str, timeout_s: float = 90.0) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            JobSubmissionClient(url).list_jobs()
            return
        except Exception:  # noqa: BLE001 - the dashboard is still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


# ------------------------------------------------------------------------------------------ helpers


def submit(cluster: LocalCluster, entrypoint: list[str], env_vars: dict[str, str] | None = None) -> str:
    """``ray job submit --no-wait`` with the repository as working dir; returns the submission id."""
    job_id = f"mak-{uuid.uuid4().hex[:10]}"
    runtime_env = {"env_vars": {"PYTHONUNBUFFERED": "1", **(env_vars or {})}, "excludes": EXCLUDES}
    cmd = [
        str(VENV_BIN / "ray"), "job", "submit",
        "--address", cluster.dashboard_url,
        "--submission-id", job_id,
        "--no-wait",
        "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps(runtime_env),
        "--", *entrypoint,
    ]  # fmt: skip
    res = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"ray job submit failed:\n{res.stdout}\n{res.stderr}"
    assert cluster.secret not in res.stdout + res.stderr
    return job_id


def wait_for_job(cluster: LocalCluster, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> tuple[str, str]:
    """Poll until the job ends; returns (status, logs). On timeout the job is stopped."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url)
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while not status.is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            break
        time.sleep(2.0)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    return (status.value if isinstance(status, JobStatus) else str(status)), logs


def bucket_keys(s3_endpoint: str, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def objects_containing(s3_endpoint: str, bucket: str, keys: list[str], needle: bytes) -> list[str]:
    """Keys whose raw bytes contain ``needle`` (directory markers such as "a/b/" included)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    return [k for k in keys if needle in s3.get_object(Bucket=bucket, Key=k)["Body"].read()]


def upload_dir(s3_endpoint: str, local: Path, bucket: str, prefix: str) -> int:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    files = [p for p in local.rglob("*") if p.is_file()]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda p: s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local).as_posix()}"), files
            )
        )
    return len(files)


def grep_tree(root: str, needle: str) -> list[str]:
    """Files under ``root`` whose bytes contain ``needle``."""
    hits = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    if needle.encode() in f.read():
                        hits.append(path)
            except OSError:
                continue
    return hits


# ------------------------------------------------------------------------------------------ tests

SMOKE = """
import os, sys, ray
from mak_ray import storage
ray.init()
@ray.remote
def put(uri):
    storage.write_json(uri, {"exe": sys.executable, "endpoint": os.environ.get("AWS_ENDPOINT_URL")})
    return uri
print("wrote", ray.get(put.remote(sys.argv[1])))
print("driver python", sys.executable, "mak_ray from", os.path.dirname(storage.__file__))
"""


def test_smoke_job_runs_in_venv_and_reaches_s3(
    ray_cluster: LocalCluster, s3_bucket: str, s3_endpoint: str
) -> None:
    """A trivial job: its driver and a task run the venv's Python, import mak_ray, and write to moto."""
    from mak_ray import storage

    uri = f"{s3_bucket}/smoke/out.json"
    job_id = submit(ray_cluster, ["python", "-c", SMOKE, uri])
    status, logs = wait_for_job(ray_cluster, job_id, timeout_s=180)
    assert status == "SUCCEEDED", logs
    got = storage.read_json(uri)
    assert Path(got["exe"]).parent == VENV_BIN, got
    assert got["endpoint"] == s3_endpoint
    assert "wrote" in logs and ray_cluster.secret not in logs
    assert not grep_tree(
        ray_cluster.temp_dir, ray_cluster.secret
    )  # nor in any file of the cluster's temp dir
    # the working dir was shipped: the driver imports mak_ray from the unpacked package, not from the checkout
    line = next(x for x in logs.splitlines() if x.startswith("driver python"))
    assert "runtime_resources/working_dir_files/" in line, line


@pytest.mark.timeout(PIPELINE_JOB_TIMEOUT_S + 300)
def test_pipeline_job_on_s3(
    ray_cluster: LocalCluster, s3_bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    """The tiny pipeline as a submitted job, inputs and outputs on S3; outputs complete, nothing written
    outside the run's prefix, and the secret key in no output and no log."""
    from mak_ray import storage
    from mak_ray.config import load_config
    from mak_ray.demo.make import make_demo_data
    from mak_ray.layout import RunLayout
    from mak_ray.select.output import read_selection_ids

    local = tmp_path / "demo"
    info = make_demo_data(str(local), "tiny", synthetic=True)
    bucket = s3_bucket[len("s3://") :]
    upload_dir(s3_endpoint, local, bucket, "inputs")
    input_keys = set(bucket_keys(s3_endpoint, bucket))
    inputs = {
        k: f"{s3_bucket}/inputs/{Path(v).relative_to(local).as_posix()}" for k, v in info["paths"].items()
    }
    out = f"{s3_bucket}/runs/tiny"
    overrides = [f"data.{k}={inputs[k]}" for k in ("target", "pool", "eval_train", "eval_test")]
    overrides.append(f"run.output_uri={out}")
    # every stage still runs; fewer methods and epochs keep the job within a few minutes on 2 busy CPUs
    overrides += [
        "select.methods=[mak,random]",
        "pretrain.epochs=1",
        "retrain.epochs=1",
        "evaluate.epochs=10",
    ]

    t0 = time.monotonic()
    job_id = submit(
        ray_cluster, ["python", "-m", "jobs.pipeline", "--config", "configs/tiny.yaml", *overrides]
    )
    status, logs = wait_for_job(ray_cluster, job_id, timeout_s=PIPELINE_JOB_TIMEOUT_S)
    seconds = time.monotonic() - t0
    ended = "timed out" if status in ("RUNNING", "PENDING") else f"ended {status}"
    assert status == "SUCCEEDED", f"job {job_id} {ended} after {seconds:.0f} s; logs:\n{logs[-20000:]}"
    print(f"pipeline job {job_id} SUCCEEDED in {seconds:.0f} s")

    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), overrides)
    layout = RunLayout(out)
    for method in cfg.select.methods:
        ids = read_selection_ids(layout.selection(method))
        assert len(ids) == cfg.select.budget == len(set(ids)), method
    summary = storage.read_json(layout.summary)
    assert summary["inputs"] == info["sizes"]["pool"]
    assert summary["inputs"] == summary["scored"] + summary["failed"]
    assert summary["selected"] == {m: cfg.select.budget for m in cfg.select.methods}
    assert "<html" in storage.read_text(layout.report_file("index.html")).lower()

    # security: all rules checked before asserting so that one report shows every breach:
    # the job wrote only under its output prefix (an empty "runs/" directory marker counts: with a bucket
    # policy scoped to the run's prefix that PUT is refused), left the inputs as they were, and the secret
    # key is in no output object, not in the job's logs and in no file of the cluster's temp dir.
    keys = set(bucket_keys(s3_endpoint, bucket))
    problems = []
    outside = sorted(k for k in keys - input_keys if not k.startswith("runs/tiny/"))
    if outside:
        problems.append(f"objects written outside the output prefix runs/tiny/: {outside[:20]}")
    if {k for k in keys if k.startswith("inputs/")} != input_keys:
        problems.append("the input objects changed")
    secret = ray_cluster.secret.encode()
    leaked = objects_containing(s3_endpoint, bucket, sorted(keys - input_keys), secret)
    if leaked:
        problems.append(f"secret key found in outputs: {leaked}")
    if ray_cluster.secret in logs:
        problems.append("secret key found in the job logs")
    in_files = grep_tree(ray_cluster.temp_dir, ray_cluster.secret)
    if in_files:
        problems.append(f"secret key found in cluster files: {in_files[:10]}")
    assert not problems, "\n".join(problems)
