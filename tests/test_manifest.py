"""The plan as data: parallel listing into a manifest, locally and on the moto S3 server; reuse and rebuild;
position-independent shards; S3 ranges split anywhere give the same shards; the bounded look."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mak_ray import storage
from mak_ray.config import DataSection
from mak_ray.data import listing, names
from mak_ray.data.manifest import input_digest, plan_input, read_plan
from mak_ray.data.peek import peek_input
from tests.samples import good_image_bytes, tar_of_images


def _ids(plan) -> list[str]:
    return [i for u in plan.part_uris for i in storage.read_parquet(u, ["id"]).column("id").to_pylist()]


def _members(plan) -> dict[str, list[str]]:
    """{shard id: its member ids} from the manifest."""
    out: dict[str, list[str]] = {}
    for u in plan.part_uris:
        t = storage.read_parquet(u, ["id", "shard"])
        for i, s in zip(t.column("id").to_pylist(), t.column("shard").to_pylist()):
            out.setdefault(s, []).append(i)
    return out


def _write_inputs(root: str, rng) -> dict[str, list[str]]:
    """A folder pool (two levels), a tar pool and a Parquet pool under ``root``; returns the relative names."""
    files = [f"c{i % 3}/sub{i % 2}/img{i:03d}.png" for i in range(60)] + [f"top{i}.jpg" for i in range(5)]
    for f in files:
        storage.write_bytes(storage.join(root, "folder", f), good_image_bytes(rng))
    storage.write_bytes(storage.join(root, "folder", "notes.txt"), b"not an image")
    tars = [f"shard-{k}.tar" for k in range(3)]
    for k, t in enumerate(tars):
        storage.write_bytes(
            storage.join(root, "tar", t), tar_of_images(rng, [f"s{k}/k{i}" for i in range(4)])
        )
    pqs = [f"part-{k}.parquet" for k in range(2)]
    for k, p in enumerate(pqs):
        buf = io.BytesIO()
        pq.write_table(
            pa.table({"id": [f"r{k}-{i}" for i in range(30)], "image": [b"x"] * 30}), buf, row_group_size=10
        )
        storage.write_bytes(storage.join(root, "parquet", p), buf.getvalue())
    return {"folder": sorted(files), "tar": tars, "parquet": pqs}


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "in")
    return request.getfixturevalue("s3_bucket") + "/in"


def test_manifest_round_trip_folder_tar_parquet(root, tmp_path):
    """Every object once, with its shard; the same shards (by relative names) locally and on S3."""
    rels = _write_inputs(root, np.random.default_rng(0))
    base = names.root_id(root)
    data = DataSection(files_per_shard=8, parquet_rows_per_shard=10)

    folder = plan_input(storage.join(root, "folder"), data, str(tmp_path / "p-folder"))
    assert folder.format == "images" and folder.objects == 65 and folder.skipped == {"suffix": 1}
    assert folder.listed == folder.objects + sum(folder.skipped.values())
    assert sorted(_ids(folder)) == sorted(f"{base}/folder/{f}" for f in rels["folder"])
    members = _members(folder)
    assert sum(len(m) for m in members.values()) == 65 and len(members) == folder.shards > 3
    for sid, ids in members.items():
        assert len({i.rpartition("/")[0] for i in ids}) == 1, "a shard holds the files of one folder"
        assert ids == sorted(ids) and len(ids) <= listing.MAX_SHARD_FACTOR * 8
        assert sid.startswith(ids[0][len(base) + len("/folder/") :].encode()[: listing.ORDER_BYTES].hex())
    index = folder.shard_table()
    assert index.column("shard").to_pylist() == sorted(members) and folder.known_rows == 65

    tar = plan_input(storage.join(root, "tar"), data, str(tmp_path / "p-tar"))
    assert tar.format == "tar" and tar.shards == 3 and tar.input_rows is None
    assert sorted(_ids(tar)) == [f"{base}/tar/{t}" for t in rels["tar"]]

    par = plan_input(storage.join(root, "parquet"), data, str(tmp_path / "p-pq"))
    assert par.format == "parquet" and par.objects == 6 and par.shards == 6 and par.input_rows == 60
    groups = par.shard_table().column("rows").to_pylist()
    assert groups == [10] * 6


def test_same_shards_locally_and_on_s3(s3_bucket, tmp_path):
    rng = np.random.default_rng(1)
    files = [f"d{i % 4}/x{i:04d}.png" for i in range(200)]
    for f in files:
        b = good_image_bytes(rng)
        storage.write_bytes(str(tmp_path / "local" / f), b)
        storage.write_bytes(f"{s3_bucket}/pool/{f}", b)
    data = DataSection(files_per_shard=10)
    local = plan_input(str(tmp_path / "local"), data, str(tmp_path / "pl"))
    s3 = plan_input(f"{s3_bucket}/pool", data, str(tmp_path / "ps"))

    def by_rel(plan, base):
        return sorted(tuple(i[len(base) + 1 :] for i in ids) for ids in _members(plan).values())

    assert by_rel(local, str(tmp_path / "local")) == by_rel(s3, f"{s3_bucket}/pool")


def test_rerun_reuses_the_manifest_and_a_new_object_rebuilds_it(root, tmp_path, caplog):
    _write_inputs(root, np.random.default_rng(2))
    uri, plan_dir = storage.join(root, "folder"), str(tmp_path / "plan")
    data = DataSection(files_per_shard=8)
    first = plan_input(uri, data, plan_dir)
    assert not first.reused
    caplog.set_level("INFO", logger="mak_ray.data.manifest")
    again = plan_input(uri, data, plan_dir)
    assert again.reused and again.manifest == first.manifest and again.digest == first.digest
    assert "input unchanged" in caplog.text
    assert input_digest(uri, data) == first.digest  # the same digest without writing a manifest
    assert read_plan(plan_dir).digest == first.digest

    # one object added: a new manifest, and only the shard that holds it changes
    old = _members(first)
    storage.write_bytes(
        storage.join(uri, "c1", "sub0", "img0105.png"), good_image_bytes(np.random.default_rng(3))
    )
    grown = plan_input(uri, data, plan_dir)
    assert not grown.reused and grown.digest != first.digest and grown.objects == first.objects + 1
    new = _members(grown)
    assert 1 <= len(set(new) - set(old)) <= 2 and 1 <= len(set(old) - set(new)) <= 1
    assert len(set(old) & set(new)) >= len(old) - 1
    assert storage.list_dirs(plan_dir) == [os.path.basename(grown.manifest)]  # the old manifest is gone
    # a planning setting changes the digest too
    assert plan_input(uri, DataSection(files_per_shard=9), plan_dir).digest != grown.digest


def test_removing_objects_changes_only_their_shards(tmp_path):
    """A removed file changes the shard that held it, and when it started its shard (a boundary name: one
    in files_per_shard), the shard before it, which takes over the rest."""
    rng = np.random.default_rng(4)
    pool = tmp_path / "pool"
    for i in range(300):
        storage.write_bytes(str(pool / f"a/{i:05d}.png"), good_image_bytes(rng))
    data = DataSection(files_per_shard=10)
    before = _members(plan_input(str(pool), data, str(tmp_path / "plan")))
    order = sorted(before, key=lambda s: before[s][0])
    gone = [str(pool / f"a/{i:05d}.png") for i in (7, 150, 151, 299)]
    starters = [k for k, s in enumerate(order) if before[s][0] in gone]
    gone.append(before[order[5]][0])  # and one file that certainly starts a shard
    starters.append(5)
    for g in gone:
        os.remove(g)
    after = _members(plan_input(str(pool), data, str(tmp_path / "plan")))
    holding = {s for s, ids in before.items() if set(ids) & set(gone)}
    before_starters = {order[k - 1] for k in starters if k > 0}
    changed = set(before) - set(after)
    assert holding <= changed <= holding | before_starters
    assert order[4] in changed  # the shard before a removed starter takes over its files
    assert sorted(i for ids in after.values() for i in ids) == sorted(
        i for ids in before.values() for i in ids if i not in gone
    )


def test_flat_s3_prefix_splits_into_ranges_with_the_same_shards(s3_bucket, tmp_path, monkeypatch):
    """A flat prefix listed by many range tasks (tiny pages) gives exactly the shards of one sequential
    listing: ranges are cut anywhere, shards only at boundary names."""
    import boto3

    s3 = boto3.client("s3")
    bucket = s3_bucket[len("s3://") :]
    keys = [f"flat/img_{i:05d}.png" for i in range(400)] + [
        f"flat/{h:08x}.jpg" for h in range(0, 2**32, 2**26)
    ]
    keys += ["flat/zz/nested.png", "flat/.DS_Store", "flat/readme.txt"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")
    data = DataSection(files_per_shard=16)
    ref = plan_input(f"{s3_bucket}/flat", data, str(tmp_path / "ref"))
    monkeypatch.setattr(listing, "PAGE_KEYS", 7)
    monkeypatch.setattr(listing, "PAGES_PER_ITEM", 2)
    split = plan_input(f"{s3_bucket}/flat", data, str(tmp_path / "split"))
    assert len(split.parts) > 10, "the listing was not split"
    assert split.digest == ref.digest and split.skipped == ref.skipped == {"pattern:.*": 1, "suffix": 1}
    assert _members(split) == _members(ref)
    assert split.objects == ref.objects == len(keys) - 2


def test_split_points_cut_the_rest_of_a_range():
    pts = listing.split_points(5, "flat/img_00000.png", "flat/img_00123.png", None, "._0123456789gimnp")
    assert pts == sorted(pts) and all(p > "flat/img_00123.png" for p in pts)
    assert "flat/img_002" in pts and "flat/img_1" in pts  # the digits that vary, then the ones before
    assert len(pts) <= listing.MAX_SPLITS


def test_bounded_look(tmp_path):
    data = DataSection()
    with pytest.raises(FileNotFoundError):
        peek_input(str(tmp_path / "missing"), data)
    (tmp_path / "empty").mkdir()
    look = peek_input(str(tmp_path / "empty"), data)
    assert look.exhausted and look.inputs == 0
    for i in range(30):
        storage.write_bytes(str(tmp_path / "many" / f"{i:03d}.png"), b"x")
    small = peek_input(str(tmp_path / "many"), data)
    assert small.exhausted and small.rows == 30
    big = peek_input(str(tmp_path / "many"), data, limit=10)
    assert not big.exhausted and big.rows is None
    storage.write_bytes(str(tmp_path / "many" / "t.parquet"), b"PAR1")
    with pytest.raises(ValueError, match="mixes Parquet"):
        peek_input(str(tmp_path / "many"), data)
