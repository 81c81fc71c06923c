"""Decoding and shard reading without Ray: every bad input becomes a failed row with its reason."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mak_ray.config import DataSection
from mak_ray.data import DUPLICATE_ID, decode_image, read_shard
from tests.plans import plan, shards
from tests.samples import bad_inputs, encode, good_image_bytes, png_header_only

SIZE = 16


def rows(shard, data=None):
    data = data or DataSection(image_size=SIZE, max_pixels=1_000_000)
    out = []
    for batch in read_shard(shard, data, batch_rows=5):
        out.extend(batch.drop_columns(["image"]).to_pylist())
    return out


@pytest.mark.parametrize("name", sorted(bad_inputs()))
def test_each_awkward_file_decodes_or_fails_with_its_reason(name):
    data, expected = bad_inputs()[name]
    arr, reason = decode_image(data, SIZE, 1_000_000)
    assert reason == expected
    if expected is None:
        assert arr.shape == (SIZE, SIZE, 3) and arr.dtype == np.uint8
    else:
        assert arr is None


def test_colour_modes_keep_their_content():
    white_rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent: composited on white
    arr, _ = decode_image(encode(white_rgba, "PNG"), SIZE, 10**6)
    assert arr.min() == 255
    g16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))  # 16-bit white stays white, not clipped garbage
    arr, _ = decode_image(encode(g16, "PNG"), SIZE, 10**6)
    assert arr.min() == 255
    one = Image.new("RGB", (1, 1), (200, 10, 10))  # 1x1 is upscaled, colour kept
    arr, _ = decode_image(encode(one, "PNG"), SIZE, 10**6)
    assert (arr == [200, 10, 10]).all()


def test_pixel_limit_is_checked_from_the_header():
    bomb = png_header_only(3000, 3000)  # 9 Mpx claimed, a few bytes of data
    assert decode_image(bomb, SIZE, 1_000_000) == (None, "too_many_pixels")
    big = encode(Image.new("1", (1200, 1000)), "PNG")  # a real 1.2 Mpx image
    assert decode_image(big, SIZE, 1_000_000) == (None, "too_many_pixels")
    assert decode_image(big, SIZE, 2_000_000)[1] is None


def test_folder_plan_labels_ids_and_read_errors(tmp_path):
    rng = np.random.default_rng(0)
    pool = tmp_path / "pool"
    for cls in ("a", "b"):
        (pool / cls).mkdir(parents=True)
        for i in range(4):
            (pool / cls / f"{i}.png").write_bytes(good_image_bytes(rng))
    (pool / "notes.txt").write_text("not listed")
    data = DataSection(files_per_shard=3)
    got_shards = shards(str(pool), data)
    assert sum(len(s.paths) for s in got_shards) == 8
    assert all(len(s.paths) <= 4 * 3 for s in got_shards)
    assert {s.shard_id for s in got_shards}.isdisjoint({""})
    assert shards(str(pool), data) == got_shards  # stable ids
    os.remove(pool / "b" / "3.png")  # deleted between listing and reading
    got = [r for s in got_shards for r in rows(s)]
    assert [r["id"] for r in got] == sorted(str(p) for p in pool.glob("*/*.png")) + [str(pool / "b/3.png")]
    assert [r["label"] for r in got] == ["a"] * 4 + ["b"] * 4
    assert got[-1]["error"] == "read_error:not_found"
    assert all(r["error"] is None for r in got[:-1])
    # the shard's row count rides on its last row only
    last = rows(got_shards[0])
    n = len(got_shards[0].paths)
    assert [r["shard_rows"] for r in last] == [0] * (n - 1) + [n] and [r["row"] for r in last] == list(
        range(n)
    )


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_tar_shards_group_members_and_survive_bad_samples(tmp_path):
    rng = np.random.default_rng(1)
    with tarfile.open(tmp_path / "s0.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "x/k1.jpg", good_image_bytes(rng, "JPEG"))
        _add(tar, "x/k1.cls", b"3\n")
        _add(tar, "x/k2.png", bad_inputs()["truncated.jpg"][0])
        _add(tar, "x/k3.cls", b"1")  # no image member
        _add(tar, "x/k1.jpg", good_image_bytes(rng, "JPEG"))  # key seen before: duplicate id
        _add(tar, "odd\udcff.png", good_image_bytes(rng))  # non-UTF-8 byte in the name
    (tmp_path / "s1.tar").write_bytes(b"this is not a tar archive" * 40)
    got_shards = shards(str(tmp_path))
    assert [s.kind for s in got_shards] == ["tar", "tar"]
    got = rows(got_shards[0]) + rows(got_shards[1])
    t0 = str(tmp_path / "s0.tar")
    assert [(r["id"], r["label"], r["error"]) for r in got] == [
        (f"{t0}#x/k1", "3", None),
        (f"{t0}#x/k2", None, "corrupt"),
        (f"{t0}#x/k3", "1", "no_image"),
        (f"{t0}#x/k1", None, DUPLICATE_ID),
        (f"{t0}#odd%FF", None, None),  # a byte that is not UTF-8, percent-encoded
        (str(tmp_path / "s1.tar"), None, "corrupt_tar"),
    ]
    for r in got:
        r["id"].encode("utf-8")  # every id is valid UTF-8


def test_parquet_shards_columns_nulls_and_broken_files(tmp_path):
    rng = np.random.default_rng(2)
    good = [good_image_bytes(rng) for _ in range(3)]
    pq.write_table(
        pa.table(
            {
                "id": ["a", None, "a", "c"],
                "image": [good[0], good[1], good[2], b"junk"],
                "label": ["x", "y", "x", None],
            }
        ),
        tmp_path / "p0.parquet",
    )
    pq.write_table(pa.table({"id": ["z"], "pixels": [good[0]]}), tmp_path / "p1.parquet")
    (tmp_path / "p2.parquet").write_bytes(b"PAR1 but not really")
    got = [r for s in shards(str(tmp_path)) for r in rows(s)]
    p = str(tmp_path)
    assert [(r["id"], r["label"], r["error"]) for r in got] == [
        ("a", "x", None),
        (f"{p}/p0.parquet#row=1", "y", "missing_id"),
        ("a", "x", DUPLICATE_ID),
        ("c", None, "not_an_image"),
        (f"{p}/p1.parquet", None, "missing_column:image"),
        (f"{p}/p2.parquet", None, "corrupt_parquet"),
    ]


def test_mixed_tar_and_parquet_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tar").write_bytes(b"")
    (tmp_path / "in" / "b.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="mixes Parquet files") as err:
        plan(str(tmp_path / "in"))
    assert "b.parquet" in str(err.value) and "a.tar" in str(err.value)  # names the files
    with pytest.raises(FileNotFoundError):
        plan(str(tmp_path / "missing"))


@pytest.mark.parametrize("shards_per_bucket", [8, 2])
def test_cross_shard_owners_match_a_direct_count(ray_session, tmp_path, monkeypatch, shards_per_bucket):
    """The hash shuffle finds exactly the ids held by more than one Parquet file, each with its first holder
    (one reducer, and several); unreadable files and missing ids are skipped."""
    from mak_ray.data import duplicates

    monkeypatch.setattr(duplicates, "SHARDS_PER_BUCKET", shards_per_bucket)
    rng = np.random.default_rng(4)
    files = [[f"id{v}" for v in rng.integers(0, 300, size=60)] for _ in range(7)]
    files[3][0] = None  # a missing id is not an id
    for k, ids in enumerate(files):
        pq.write_table(pa.table({"id": ids, "image": [b"x"] * len(ids)}), tmp_path / f"p{k}.parquet")
    (tmp_path / "p7.parquet").write_bytes(b"PAR1 but not really")
    data = DataSection(format="parquet")
    p = plan(str(tmp_path), data)
    units = p.shard_table()
    owners = duplicates.cross_shard_owners(units, p.part_uris, data)
    holders: dict[str, list[int]] = {}
    for k, ids in enumerate(files):
        for i in set(ids) - {None}:
            holders.setdefault(i, []).append(k)
    sids = units.column("shard").to_pylist()
    want = {duplicates.id_digest(i): sids[min(ks)] for i, ks in holders.items() if len(ks) > 1}
    assert owners == want and len(want) > 50
    assert duplicates.cross_shard_owners(units.slice(0, 1), p.part_uris, data) == {}  # one shard: nothing


def test_big_parquet_files_are_cut_by_row_group(tmp_path):
    """A file over ``parquet_rows_per_shard`` becomes shards of whole row groups that together read every row
    once, with file-wide ``#row=`` ids; small, single-row-group and unreadable files stay whole."""
    rng = np.random.default_rng(6)
    ids: list[str | None] = [f"r{i}" for i in range(40)]
    ids[30] = None
    pq.write_table(
        pa.table({"id": ids, "image": [good_image_bytes(rng) for _ in ids]}),
        tmp_path / "a.parquet",
        row_group_size=7,
    )
    pq.write_table(
        pa.table({"id": ["s0", "s1"], "image": [b"x", b"y"]}), tmp_path / "b.parquet", row_group_size=1
    )
    pq.write_table(
        pa.table({"id": [f"t{i}" for i in range(30)], "image": [b"x"] * 30}), tmp_path / "c.parquet"
    )
    (tmp_path / "d.parquet").write_bytes(b"PAR1 but not really")
    got_shards = shards(str(tmp_path), DataSection(format="parquet", parquet_rows_per_shard=16))
    assert [(os.path.basename(s.paths[0]), s.row_groups) for s in got_shards] == [
        ("a.parquet", [0, 1, 2]),  # 21 rows
        ("a.parquet", [3, 4, 5]),  # 19 rows
        ("b.parquet", None),  # 2 rows: no bigger than a shard
        ("c.parquet", None),  # one row group
        ("d.parquet", None),  # footer unreadable: the reader reports it
    ]
    assert len({s.shard_id for s in got_shards}) == 5
    assert [s.known_rows for s in got_shards] == [21, 19, 2, 30, None]  # from the footers: exact ETAs
    data = DataSection(image_size=16)
    got = [
        r for s in got_shards[:2] for b in read_shard(s, data) for r in b.select(["id", "error"]).to_pylist()
    ]
    want = [f"r{i}" if i != 30 else f"{tmp_path}/a.parquet#row=30" for i in range(40)]
    assert [r["id"] for r in got] == want
    assert [r["error"] for r in got if r["error"]] == ["missing_id"]


def test_small_shards_are_packed_into_read_blocks_that_keep_each_shard_whole():
    from mak_ray.data.dataset import read_blocks

    rows = [1000, 5, 5, 5, 990, 6, None, 3, 3, 1200, 4]
    units = pa.table(
        {
            "shard": [f"s{i}" for i in range(len(rows))],
            "kind": ["files"] * len(rows),
            "part": [0] * len(rows),
            "start": [0] * len(rows),
            "stop": [0] * len(rows),
            "rows": pa.array(rows, pa.int64()),
        }
    )
    assert [b.num_rows for b in read_blocks(units)] == [1] * len(rows)  # one shard per block by default
    blocks = read_blocks(units, 1000)
    assert [b["shard"].to_pylist() for b in blocks] == [
        ["s0"],
        ["s1", "s2", "s3"],  # 15 rows; the 990 of s4 would make 1005
        ["s4", "s5"],
        ["s6"],  # unknown size (a tar): alone
        ["s7", "s8"],
        ["s9"],  # larger than a block: alone
        ["s10"],
    ]
    many = pa.concat_tables([units.slice(1, 1)] * 10_000)
    packed = read_blocks(many, 10)  # 5 rows each: two per block, 5,000 blocks, joined down to the cap
    assert len(packed) == 4096 and sum(b.num_rows for b in packed) == 10_000
