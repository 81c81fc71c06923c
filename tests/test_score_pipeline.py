"""The scoring engine end to end on Ray (CPU, tiny model): every input format, accounting, resume, invariance."""

from __future__ import annotations

import collections
import io
import os
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mak_ray import storage
from mak_ray.config import config_from_dict
from mak_ray.layout import ShardedOutput
from mak_ray.score import (
    embed_images as _embed_images,
)
from mak_ray.score import (
    iter_score_columns,
    load_embeddings,
    load_valid_embeddings,
    markers,
)
from mak_ray.score import (
    score_pool as _score_pool,
)
from tests.plans import shards as plan_shards
from tests.samples import bad_inputs, good_image_bytes


def score_pool(cfg, model_uri: str, centroids, out: str) -> dict:
    """The engine on a bare output folder, with the bank beside the shards as a run keeps it."""
    sharded = ShardedOutput(out)
    return _score_pool(cfg, model_uri, centroids, sharded, sharded.file("bank.npy"), targets=centroids)


def embed_images(src: str, cfg, model_uri: str, out: str) -> dict:
    return _embed_images(src, cfg, model_uri, ShardedOutput(out))


N_GOOD = 96
BAD = bad_inputs()
BAD_REASONS = collections.Counter(r for _, r in BAD.values() if r is not None)


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> str:
    """Three class folders of good images (PNG and JPEG) plus one folder of every awkward case."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        d = root / f"class{i % 3}"
        d.mkdir(exist_ok=True)
        fmt = "JPEG" if i % 2 else "PNG"
        (d / f"img{i:03d}.{'jpg' if i % 2 else 'png'}").write_bytes(good_image_bytes(rng, fmt))
    (root / "bad").mkdir()
    for name, (data, _) in BAD.items():
        (root / "bad" / name).write_bytes(data)
    return str(root)


def make_cfg(pool: str, out: str, **score):
    s = {
        "views": 3,
        "bank_size": 32,
        "ecle_batch_size": 16,
        "ecle_repeats": 2,
        "batch_size": 16,
        "cpus_per_actor": 0.5,
        "log_every_s": 5.0,
    }
    s.update(score)
    return config_from_dict(
        {
            "run": {"output_uri": out.rstrip("/") + "-run", "seed": 3},
            "data": {"pool": pool, "image_size": 16, "max_pixels": 1_000_000, "files_per_shard": 16},
            "score": s,
        }
    )


def table(out: str) -> pa.Table:
    t = storage.read_parquet(out)
    return t.sort_by([("id", "ascending"), ("error", "ascending")])


def check_accounting(summary: dict, t: pa.Table, inputs: int, reasons: dict) -> None:
    assert summary["inputs"] == inputs == t.num_rows
    assert summary["inputs"] == summary["scored"] + summary["failed"]
    assert summary["failed_by_reason"] == dict(reasons)
    assert collections.Counter(v for v in t["error"].to_pylist() if v is not None) == reasons
    ok = pc.is_null(t["error"])
    assert pc.all(pc.is_valid(pc.filter(t["ecle"], ok))).as_py()
    assert pc.all(pc.is_null(pc.filter(t["ecle"], pc.invert(ok)))).as_py()
    assert pc.all(pc.is_null(pc.filter(t["embedding"], pc.invert(ok)))).as_py()


def test_local_folder_scores_every_input_and_resumes(ray_session, pool_dir, model_uri, centroids, tmp_path):
    out = str(tmp_path / "score")
    cfg = make_cfg(pool_dir, out)
    summary = score_pool(cfg, model_uri, centroids, out)
    t = table(out)
    check_accounting(summary, t, N_GOOD + len(BAD), BAD_REASONS)
    assert t.schema.field("embedding").type == pa.list_(pa.float16(), 64)
    assert t.schema.field("ecle").type == pa.float32()
    assert set(t["label"].to_pylist()) == {"class0", "class1", "class2", "bad"}
    assert len(set(t["id"].to_pylist())) == t.num_rows
    bank = np.load(ShardedOutput(out).file("bank.npy"))
    assert bank.shape == (3, 32, 16) and np.allclose(np.linalg.norm(bank, axis=2), 1, atol=1e-5)
    marked = markers.read_markers(ShardedOutput(out))
    assert marked.num_rows == summary["shards"] == summary["shards_added"] > 1
    assert (summary["shards_reused"], summary["shards_removed"]) == (0, 0)

    # streaming readers: only the asked columns, only the asked rows
    cols = pa.Table.from_batches(list(iter_score_columns(out, ["id", "ecle"], batch_rows=7)))
    assert cols.column_names == ["id", "ecle"] and cols.num_rows == t.num_rows
    ok = t.filter(pc.is_null(t["error"]))
    want = ok["id"].to_pylist()[::10]
    emb = load_embeddings(out, want)
    ref = np.stack([np.asarray(x, np.float32) for x in ok["embedding"].to_pylist()[::10]])
    assert np.array_equal(emb, ref)
    with pytest.raises(KeyError):
        load_embeddings(out, [os.path.join(pool_dir, "bad", "zero.jpg")])

    # interrupted run: one shard lost its marker and holds a stray partial file
    sh = ShardedOutput(out)
    victim, victim_rows = marked.column("shard")[2].as_py(), marked.column("rows")[2].as_py()
    markers.rewrite(sh, marked.filter(pc.not_equal(marked["shard"], victim)))
    part = sorted(os.listdir(sh.shard_dir(victim)))[0]
    shutil.copy(sh.part(victim, part), sh.part(victim, "part-stray.parquet"))
    again = score_pool(cfg, model_uri, centroids, out)
    assert again["rows_this_run"] == victim_rows
    assert (again["shards_reused"], again["shards_added"]) == (summary["shards"] - 1, 1)
    assert {k: again[k] for k in ("inputs", "scored", "failed", "failed_by_reason")} == {
        k: summary[k] for k in ("inputs", "scored", "failed", "failed_by_reason")
    }
    assert table(out).equals(t)

    # a finished output is not touched again
    third = score_pool(cfg, model_uri, centroids, out)
    assert third["rows_this_run"] == 0 and third["inputs"] == summary["inputs"]


def test_scores_do_not_depend_on_actor_count_or_batch_size(
    ray_session, pool_dir, model_uri, centroids, tmp_path
):
    outs = []
    for actors, batch in ((1, 8), (2, 32)):
        out = str(tmp_path / f"a{actors}-b{batch}")
        cfg = make_cfg(pool_dir, out, num_actors=actors, min_actors=actors, batch_size=batch)
        score_pool(cfg, model_uri, centroids, out)
        outs.append(out)
    a, b = table(outs[0]), table(outs[1])
    assert np.array_equal(
        np.load(ShardedOutput(outs[0]).file("bank.npy")), np.load(ShardedOutput(outs[1]).file("bank.npy"))
    )
    assert a["id"].equals(b["id"]) and a["error"].equals(b["error"])
    for col in ("ecle", "proximity"):
        x, y = a[col].to_numpy(zero_copy_only=False), b[col].to_numpy(zero_copy_only=False)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_s3_prefix_with_a_deleted_object(ray_session, s3_bucket, pool_dir, model_uri, centroids):
    import boto3

    s3 = boto3.client("s3")
    bucket = s3_bucket[len("s3://") :]
    for dirpath, _, files in os.walk(pool_dir):
        for f in files:
            if dirpath.endswith("class0") and not f.endswith("00.png") and f < "img030":
                continue  # keep the S3 pool small
            rel = os.path.relpath(os.path.join(dirpath, f), pool_dir)
            s3.upload_file(os.path.join(dirpath, f), bucket, f"pool/{rel}")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="pool/")["Contents"]]
    out = f"{s3_bucket}/run/score"
    cfg = make_cfg(f"{s3_bucket}/pool", out)

    # an object deleted between listing and reading is a failed row, not a crash
    shards = plan_shards(cfg.data.pool, cfg.data)
    s3.delete_object(Bucket=bucket, Key="pool/class1/img001.jpg")
    from mak_ray.data import read_shard

    got = {
        r["id"]: r["error"]
        for s in shards
        for b in read_shard(s, cfg.data)
        for r in b.drop_columns(["image"]).to_pylist()
    }
    assert got[f"{s3_bucket}/pool/class1/img001.jpg"] == "read_error:not_found"

    summary = score_pool(cfg, model_uri, centroids, out)
    t = table(out)
    check_accounting(summary, t, len(keys) - 1, BAD_REASONS)
    assert all(i.startswith(f"{s3_bucket}/pool/") for i in t["id"].to_pylist())
    assert storage.exists(ShardedOutput(out).file("bank.npy")) and storage.exists(ShardedOutput(out).summary)


def _tar_pool(root, rng) -> tuple[int, collections.Counter]:
    os.makedirs(root)
    n, reasons = 0, collections.Counter()
    for s in range(3):
        with tarfile.open(os.path.join(root, f"shard-{s}.tar"), "w") as tar:
            for i in range(12):
                for name, data in (
                    (f"s{s}/k{i:02d}.png", good_image_bytes(rng)),
                    (f"s{s}/k{i:02d}.cls", b"%d" % (i % 3)),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                n += 1
            for name, (data, r) in list(BAD.items())[:5]:
                info = tarfile.TarInfo(f"s{s}/bad-{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                n += 1
                reasons.update([r] if r else [])
    with open(os.path.join(root, "shard-3.tar"), "wb") as f:
        f.write(b"garbage" * 100)
    return n + 1, reasons + collections.Counter(["corrupt_tar"])


def test_tar_and_parquet_pools(ray_session, model_uri, centroids, tmp_path):
    rng = np.random.default_rng(9)
    n_tar, tar_reasons = _tar_pool(str(tmp_path / "tars"), rng)
    out = str(tmp_path / "out-tar")
    summary = score_pool(make_cfg(str(tmp_path / "tars"), out), model_uri, centroids, out)
    t = table(out)
    check_accounting(summary, t, n_tar, tar_reasons)
    labels = {i: lab for i, lab in zip(t["id"].to_pylist(), t["label"].to_pylist())}
    assert {lab for i, lab in labels.items() if "/k" in i} == {"0", "1", "2"}  # from the .cls members
    assert {lab for i, lab in labels.items() if "/bad-" in i} == {None}

    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    images = [good_image_bytes(rng) for _ in range(40)] + [BAD["zero.jpg"][0], BAD["text.png"][0]]
    ids = [f"img-{i}" for i in range(len(images))]
    ids[5] = ids[4]  # duplicate id
    for k in range(2):
        sl = slice(k * 21, (k + 1) * 21)
        pq.write_table(
            pa.table({"id": ids[sl], "image": images[sl], "label": [f"c{i % 2}" for i in range(21)]}),
            pq_dir / f"part{k}.parquet",
        )
    out = str(tmp_path / "out-pq")
    summary = score_pool(make_cfg(str(pq_dir), out), model_uri, centroids, out)
    check_accounting(summary, table(out), 42, collections.Counter(["duplicate_id", "empty", "not_an_image"]))

    # embed mode over the same engine: embeddings only, same accounting
    emb_out = str(tmp_path / "embed")
    s = embed_images(str(pq_dir), make_cfg(str(pq_dir), emb_out), model_uri, emb_out)
    assert (s["inputs"], s["scored"]) == (42, 39)
    e = table(emb_out)
    assert e.column_names == ["id", "embedding", "label", "error", "shard", "object_version"]
    ids_ok, labels, emb = load_valid_embeddings(emb_out, with_ids=True)
    assert emb.shape == (39, 64) and len(ids_ok) == 39 and set(labels) == {"c0", "c1"}
    ref = table(out).filter(pc.is_null(table(out)["error"]))
    ref_emb = np.stack([np.asarray(x, np.float32) for x in ref["embedding"].to_pylist()])
    assert np.array_equal(emb, ref_emb)  # same clean embedding in both modes


def _write_parquet_pool(root, files: list[list[str]], rng) -> None:
    """One Parquet file per list of ids, each row a distinct good image."""
    root.mkdir()
    for k, ids in enumerate(files):
        images = [good_image_bytes(rng) for _ in ids]
        pq.write_table(pa.table({"id": ids, "image": images}), root / f"part{k}.parquet")


def test_parquet_ids_repeated_across_files_are_scored_once(ray_session, model_uri, centroids, tmp_path):
    """The first file (shard) holding an id keeps it; its rows in later files fail as duplicate_id, on
    every run, and the usable rows, embeddings and retraining rows hold each id once."""
    from mak_ray.data import image_dataset, keep_rows
    from tests.plans import plan

    files = [["a", "b", "c", "b"], ["c", "d", "a", "e"], ["f", "a", "d", "g"]]
    _write_parquet_pool(tmp_path / "pq", files, np.random.default_rng(2))
    out = str(tmp_path / "out")
    cfg = make_cfg(str(tmp_path / "pq"), out)
    summary = score_pool(cfg, model_uri, centroids, out)
    # within file 0: the second "b"; across files: "c", "a" in file 1, "a", "d" in file 2
    check_accounting(summary, table(out), 12, collections.Counter({"duplicate_id": 5}))
    p = plan(str(tmp_path / "pq"), cfg.data)
    units = p.shard_table()
    shards = plan_shards(str(tmp_path / "pq"), cfg.data)
    ok = table(out).filter(pc.is_null(table(out)["error"]))
    keeper = dict(zip(ok["id"].to_pylist(), ok["shard"].to_pylist()))
    assert sorted(ok["id"].to_pylist()) == list("abcdefg")  # each id once
    first = {}
    for s, ids in zip(shards, files):
        for i in ids:
            first.setdefault(i, s.shard_id)
    assert keeper == first
    assert load_embeddings(out, list("abcdefg")).shape == (7, 64)

    # a rerun of the unfinished shard fails the same rows (the owner map spans all planned shards)
    marked = markers.read_markers(ShardedOutput(out))
    markers.rewrite(ShardedOutput(out), marked.filter(pc.not_equal(marked["shard"], shards[2].shard_id)))
    again = score_pool(cfg, model_uri, centroids, out)
    assert again["rows_this_run"] == 4
    check_accounting(again, table(out), 12, collections.Counter({"duplicate_id": 5}))

    # retraining reads each selected id from the shard whose row was scored, even without the owner map
    rows = keep_rows(
        image_dataset(units, p.part_uris, cfg.data), cfg.data, at={"a": first["a"], "d": first["d"]}
    )
    got = rows.to_pandas()
    assert sorted(zip(got["id"], got["shard"])) == [("a", first["a"]), ("d", first["d"])]


def test_a_parquet_file_cut_by_row_group_reads_as_a_whole(ray_session, model_uri, tmp_path):
    """One big file spread over row-group shards gives the rows, scores and duplicate failures of the file
    read whole (an id repeated in both halves fails in the later one, as within one shard)."""
    rng = np.random.default_rng(8)
    ids = [f"x{i}" for i in range(48)]
    ids[40] = ids[3]
    (tmp_path / "pq").mkdir()
    images = [good_image_bytes(rng) for _ in ids]
    pq.write_table(pa.table({"id": ids, "image": images}), tmp_path / "pq" / "big.parquet", row_group_size=8)
    outs = {}
    for rows in (16, 1000):  # embed mode: the same reading and failures as scoring, at half the actor starts
        out = str(tmp_path / f"out{rows}")
        cfg = make_cfg(str(tmp_path / "pq"), out)
        cfg.data.parquet_rows_per_shard = rows
        s = embed_images(str(tmp_path / "pq"), cfg, model_uri, out)
        assert (s["shards"], s["inputs"], s["failed_by_reason"]) == (
            3 if rows == 16 else 1,
            48,
            {"duplicate_id": 1},
        )
        outs[rows] = table(out).drop_columns(["shard"])
    assert outs[16].equals(outs[1000])
    assert set(outs[16].filter(pc.equal(outs[16]["id"], "x3"))["error"].to_pylist()) == {None, "duplicate_id"}


def test_the_embedding_column_is_written_plain_and_older_encodings_still_read(tmp_path):
    """Part files store the embedding without dictionary or compression (the other columns keep zstd and
    dictionaries); a part written the earlier way (dictionary, zstd) reads the same beside it."""
    from mak_ray.score.parts import write_parts

    out = ShardedOutput(str(tmp_path / "score"))
    rng = np.random.default_rng(0)
    n, dim = 6, 8
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    cols = {
        "id": np.array([f"img{i}" for i in range(n)], dtype=object),
        "shard": np.array(["s0"] * 3 + ["s1"] * 3, dtype=object),
        "row": np.array([0, 1, 2, 0, 1, 2], dtype=np.int64),
        "shard_rows": np.array([0, 0, 3, 0, 0, 3], dtype=np.int64),
        "label": np.array(["a"] * n, dtype=object),
        "error": np.array([None] * (n - 1) + ["read_error:x"], dtype=object),
        "object_version": np.array(["1:"] * n, dtype=object),
        "ecle": rng.standard_normal(n).astype(np.float32),
        "proximity": rng.standard_normal(n).astype(np.float32),
        "nn_distance": rng.standard_normal(n).astype(np.float32),
        "embedding": emb,
    }
    write_parts(cols, out, "float16")
    files = storage.list_files(out.root, (".parquet",))
    assert len(files) == 2
    for f in files:
        meta = pq.ParquetFile(f).metadata.row_group(0)
        by_path = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
        (leaf,) = [p for p in by_path if p.startswith("embedding.")]
        assert by_path[leaf].compression == "UNCOMPRESSED"
        assert not by_path[leaf].has_dictionary_page
        assert not {"RLE_DICTIONARY", "PLAIN_DICTIONARY"} & set(by_path[leaf].encodings)
        assert by_path["id"].compression == "ZSTD" and by_path["id"].has_dictionary_page
        assert by_path["ecle"].compression == "ZSTD"

    # an older part (the whole table dictionary-encoded and zstd) in a third shard
    old = pq.read_table(files[0])
    old = old.set_column(old.schema.get_field_index("shard"), "shard", pa.array(["s2"] * 3))
    old = old.set_column(old.schema.get_field_index("id"), "id", pa.array(["old0", "old1", "old2"]))
    buf = io.BytesIO()
    pq.write_table(old, buf, compression="zstd", use_dictionary=True)
    old_uri = out.part("s2", "part-000000000-old.parquet")
    storage.write_bytes(old_uri, buf.getvalue())
    meta = pq.ParquetFile(old_uri).metadata.row_group(0)
    assert meta.column(old.schema.get_field_index("embedding")).has_dictionary_page
    ids, _, got = load_valid_embeddings(out.root, with_ids=True)
    want = emb[:5].astype(np.float16).astype(np.float32)
    assert list(ids) == ["img0", "img1", "img2", "img3", "img4", "old0", "old1", "old2"]
    np.testing.assert_array_equal(got, np.concatenate([want, want[:3]]))
    np.testing.assert_array_equal(load_embeddings(out.root, ["old1", "img4"]), want[[1, 4]])
