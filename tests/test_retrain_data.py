"""Retraining reads only what it trains on: the selected objects by id, once, whatever the pool's size
(requests counted by the moto server's recorder, over HTTP)."""

from __future__ import annotations

import io
import json
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mak_ray import storage
from mak_ray.config import DataSection
from mak_ray.data import names
from mak_ray.data.fetch import fetch_ids, fetch_shards, read_parts
from mak_ray.data.manifest import plan_input
from tests.samples import good_image_bytes, tar_of_images


@pytest.fixture
def recorded(s3_endpoint, tmp_path):
    """The requests the moto server answers from now on, as ``(method, key, query)``."""
    import requests
    from moto.moto_api import recorder

    saved = recorder._location
    recorder._location = str(tmp_path / "moto-recording")
    requests.post(f"{s3_endpoint}/moto-api/recorder/reset-recording", timeout=10)

    def start() -> None:
        requests.post(f"{s3_endpoint}/moto-api/recorder/reset-recording", timeout=10)
        requests.post(f"{s3_endpoint}/moto-api/recorder/start-recording", timeout=10)

    def made() -> list[tuple[str, str, str]]:
        text = requests.get(f"{s3_endpoint}/moto-api/recorder/download-recording", timeout=10).text
        out = []
        for line in text.splitlines():
            e = json.loads(line)
            u = urlparse(e["url"])
            out.append((e["method"], unquote(u.path), u.query))
        return out

    yield start, made
    requests.post(f"{s3_endpoint}/moto-api/recorder/stop-recording", timeout=10)
    recorder._location = saved


def _folder_pool(root: str, n: int, rng) -> list[str]:
    keys = [f"c{i % 4}/img{i:05d}.png" for i in range(n)]
    for k in keys:
        storage.write_bytes(f"{root}/{k}", good_image_bytes(rng))
    return keys


@pytest.mark.parametrize("n", [40, 160])
def test_selected_files_are_fetched_with_one_get_each(ray_session, s3_bucket, recorded, tmp_path, n):
    start, made = recorded
    rng = np.random.default_rng(n)
    pool = f"{s3_bucket}/pool"
    keys = _folder_pool(pool, n, rng)
    bucket = s3_bucket[len("s3://") :]
    picked = [keys[i] for i in (1, 5, 17, 22, 39)]
    rows = pa.table({"id": [names.s3_id(bucket, f"pool/{k}") for k in picked]})
    start()
    info = fetch_ids(rows, None, [], DataSection(image_size=16), str(tmp_path / "out"))
    reqs = made()
    gets = sorted(k for m, k, q in reqs if m == "GET" and not q)
    assert gets == sorted(f"/{bucket}/pool/{k}" for k in picked)  # one GET per selected object, no other
    assert not [r for r in reqs if "list-type" in r[2]]  # no listing
    assert info["rows"] == info["usable"] == 5
    want = sum(len(storage.read_bytes(f"{pool}/{k}")) for k in picked)
    assert info["bytes_read"] == want
    got = storage.read_parquet(str(tmp_path / "out"))
    assert sorted(got.column("id").to_pylist()) == sorted(rows.column("id").to_pylist())
    for rid, img in zip(got.column("id").to_pylist(), got.column("image").to_pylist()):
        assert img == storage.read_bytes("s3://" + names.id_to_path(rid)[1].decode())


def test_tar_members_are_read_from_their_tar_only(s3_bucket, recorded, tmp_path):
    start, made = recorded
    rng = np.random.default_rng(1)
    bucket = s3_bucket[len("s3://") :]
    for t in range(5):
        storage.write_bytes(f"{s3_bucket}/tars/t{t}.tar", tar_of_images(rng, [f"k{i}" for i in range(10)]))
    tar_id = names.s3_id(bucket, "tars/t3.tar")
    rows = pa.table({"id": [f"{tar_id}#k2", f"{tar_id}#k7", f"{tar_id}#nope"]})
    start()
    info = fetch_ids(rows, None, [], DataSection(image_size=16), str(tmp_path / "out"))
    objects = {k for m, k, q in made() if m == "GET" and not q}
    assert objects == {f"/{bucket}/tars/t3.tar"}
    assert info["rows"] == 3 and info["usable"] == 2 and info["failed"] == {"read_error:not_found": 1}


def test_parquet_rows_are_read_from_their_shard_only(s3_bucket, recorded, tmp_path):
    start, made = recorded
    rng = np.random.default_rng(2)
    bucket = s3_bucket[len("s3://") :]
    for f in range(4):
        buf = io.BytesIO()
        ids = [f"f{f} row\n{i}" for i in range(50)]  # ids from the data may hold spaces and line breaks
        pq.write_table(
            pa.table({"id": ids, "image": [good_image_bytes(rng) for _ in ids], "label": ["x"] * 50}),
            buf,
            row_group_size=10,
        )
        storage.write_bytes(f"{s3_bucket}/pq/p{f}.parquet", buf.getvalue())
    data = DataSection(image_size=16, parquet_rows_per_shard=1000)
    plan = plan_input(f"{s3_bucket}/pq", data, str(tmp_path / "plan"))
    units = plan.shard_table()
    shard_of = {s: i for i, s in enumerate(units.column("shard").to_pylist())}
    p2 = sorted(shard_of)[2]  # the third file's shard (ids sort like names)
    rows = pa.table({"id": ["f2 row\n3", "f2 row\n41"], "shard": [p2, p2]})
    start()
    info = fetch_ids(rows, units, plan.part_uris, data, str(tmp_path / "out"))
    objects = {k for m, k, q in made() if m == "GET" and "list-type" not in q and "pq/" in k}
    assert objects == {f"/{bucket}/pq/p2.parquet"}
    assert info["usable"] == 2
    got = storage.read_parquet(str(tmp_path / "out"))
    assert sorted(got.column("id").to_pylist()) == ["f2 row\n3", "f2 row\n41"]
    assert set(got.column("label").to_pylist()) == {"x"}


def test_fetched_sets_train_from_their_own_files(ray_session, tmp_path):
    """The target set fetched whole, a selection by id, and the training dataset over both: decoded rows
    of exactly the fetched usable images."""
    from mak_ray.config import config_from_dict
    from mak_ray.train.dataset import fetched_dataset

    rng = np.random.default_rng(3)
    target = tmp_path / "target"
    for i in range(12):
        storage.write_bytes(str(target / f"a/{i}.png"), good_image_bytes(rng))
    storage.write_bytes(str(target / "a/zero.png"), b"")
    pool_keys = _folder_pool(str(tmp_path / "pool"), 30, rng)
    cfg = config_from_dict({"run": {"output_uri": str(tmp_path / "run")}, "data": {"image_size": 16}})
    plan = plan_input(str(target), cfg.data, str(tmp_path / "plan"))
    t = fetch_shards(plan.shard_table(), plan.part_uris, cfg.data, str(tmp_path / "data" / "target"))
    assert (t["rows"], t["usable"], t["failed"]) == (13, 12, {"empty": 1})
    picked = [names.local_id(str(tmp_path / "pool" / k).encode()) for k in pool_keys[:7]]
    s = fetch_ids(pa.table({"id": picked}), None, [], cfg.data, str(tmp_path / "data" / "m"))
    assert s["usable"] == 7
    assert len(read_parts(str(tmp_path / "data" / "target"))) >= 1
    ds = fetched_dataset(cfg, [str(tmp_path / "data" / "target"), str(tmp_path / "data" / "m")])
    images = np.concatenate([b["image"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")])
    assert images.shape == (19, 16, 16, 3) and images.dtype == np.uint8
