"""Real folders: every entry accounted whatever its name, links handled, mixed inputs, ids that round-trip."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from mak_ray.config import DataSection
from mak_ray.data import names, read_shard
from mak_ray.data.manifest import plan_input
from tests.plans import shards
from tests.samples import encode, good_image_bytes, random_image, tar_of_images


def _rows(uri: str, data: DataSection | None = None) -> list[dict]:
    data = data or DataSection(image_size=16)
    return [
        r
        for s in shards(uri, data)
        for b in read_shard(s, data)
        for r in b.drop_columns(["image"]).to_pylist()
    ]


def test_ids_round_trip_any_byte():
    for raw in (b"/a/b c.png", b"/x/caf\xe9.png", b"/x/line\nbreak%#?.png", "/ü/é 😀.jpg".encode()):
        rid = names.local_id(raw)
        assert names.id_to_path(rid) == (False, raw)
        assert "\n" not in rid and " " not in rid and "#" not in rid and "?" not in rid
        rid.encode("ascii")
    assert names.s3_id("b", "k y/%a#1\n.png") == "s3://b/k%20y/%25a%231%0A.png"
    assert names.split_member(names.member_id("s3://b/t%23.tar", b"k#1")) == ("s3://b/t%23.tar", "k%231")


def test_a_name_that_is_not_utf8_is_listed_and_read(tmp_path):
    """Issue 20, defect 1: a Latin-1 name is an input like any other, with a percent-encoded id."""
    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(0)
    latin = os.path.join(os.fsencode(pool), b"caf\xe9.png")
    with open(latin, "wb") as f:
        f.write(good_image_bytes(rng))
    (pool / "plain.png").write_bytes(good_image_bytes(rng))
    got = {r["id"]: r["error"] for r in _rows(str(pool))}
    assert got == {f"{pool}/caf%E9.png": None, f"{pool}/plain.png": None}


def test_a_symlink_loop_is_listed_once(tmp_path):
    """Issue 20, defect 2: ``loop -> .`` is not followed by default; followed, each real folder is listed once."""
    pool = tmp_path / "pool"
    (pool / "a").mkdir(parents=True)
    for i in range(3):
        (pool / "a" / f"{i}.png").write_bytes(b"x")
    (pool / "top.png").write_bytes(b"x")
    os.symlink(".", pool / "loop")
    os.symlink("..", pool / "a" / "up")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.png").write_bytes(b"x")
    os.symlink(outside, pool / "ext")
    plain = plan_input(str(pool), DataSection(), str(tmp_path / "p1"))
    assert plain.objects == 4 and plain.skipped == {"symlink_dir": 3}
    followed = plan_input(str(pool), DataSection(follow_symlinks=True), str(tmp_path / "p2"))
    assert followed.objects == 5  # the outside folder once, through its link
    assert followed.skipped == {"visited": 2}  # loop and up lead to folders already listed
    assert followed.listed == followed.objects + 2


def test_underscore_names_are_inputs_and_skips_are_counted(tmp_path):
    """Issue 20, defect 3: ``_DSC0001.JPG`` is an input; what is skipped is skipped by a visible pattern."""
    pool = tmp_path / "pool"
    (pool / "__MACOSX").mkdir(parents=True)
    (pool / "_markers").mkdir()
    (pool / "cam").mkdir()
    (pool / "cam" / "_DSC0001.JPG").write_bytes(b"x")
    (pool / "cam" / "Thumbs.db").write_bytes(b"x")
    (pool / "cam" / ".DS_Store").write_bytes(b"x")
    (pool / "__MACOSX" / "._x.png").write_bytes(b"x")
    (pool / "_markers" / "m.png").write_bytes(b"x")
    (pool / "_SUCCESS").write_bytes(b"")
    (pool / "notes.txt").write_bytes(b"x")
    p = plan_input(str(pool), DataSection(), str(tmp_path / "p"))
    assert p.objects == 1
    assert p.skipped == {
        "pattern:.*": 1,
        "pattern:Thumbs.db": 1,
        "pattern:_SUCCESS": 1,
        "pattern:_markers/": 1,
        "pattern:__MACOSX/": 1,
        "suffix": 1,
    }
    mine = plan_input(str(pool), DataSection(skip=["Thumbs.db"]), str(tmp_path / "p2"))
    assert mine.objects == 3  # the defaults are a setting: now the __MACOSX and _markers pngs count too


def test_file_links_are_read_only_when_they_point_at_regular_files(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(1)
    real = tmp_path / "real.png"
    real.write_bytes(good_image_bytes(rng))
    os.symlink(real, pool / "link.png")
    os.symlink(tmp_path / "nothing.png", pool / "broken.png")
    os.mkfifo(pool / "fifo.png")
    got = {os.path.basename(r["id"]): r["error"] for r in _rows(str(pool))}
    assert got == {"link.png": None, "broken.png": "broken_link", "fifo.png": "not_a_regular_file"}


def test_images_beside_an_archive_are_all_scored(tmp_path):
    """Issue 20, defect 4: a folder of images with a tar beside them: both, each tar a shard."""
    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(2)
    for i in range(5):
        (pool / f"{i}.png").write_bytes(good_image_bytes(rng))
    (pool / "images.tar").write_bytes(tar_of_images(rng, ["a", "b", "c"]))
    p = plan_input(str(pool), DataSection(), str(tmp_path / "p"))
    assert p.format == "images+tar" and p.kinds == {"files": 5, "tar": 1}
    ids = [r["id"] for r in _rows(str(pool))]
    assert len(ids) == 8 and sum("#" in i for i in ids) == 3


def test_parquet_mixed_with_images_is_refused_naming_the_files(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.png").write_bytes(b"x")
    (pool / "b.parquet").write_bytes(b"x")
    with pytest.raises(ValueError, match="mixes Parquet") as err:
        plan_input(str(pool), DataSection(), str(tmp_path / "p"))
    assert "b.parquet" in str(err.value) and "a.png" in str(err.value)


ODD_KEYS = [
    "sp ace.png",
    "hash#1.png",
    "pct%41.png",
    "q?x=1.png",
    "line\nbreak.png",
    "ünï 😀.png",
    "cr\rx.png",
]


def test_s3_keys_with_any_utf8_round_trip(s3_bucket, tmp_path):
    """Spaces, ``#``, ``%``, ``?``, a carriage return, accents and emoji in keys; a line feed cannot be tested
    here: moto's router answers 404 for any path holding one (S3 itself stores such keys)."""
    rng = np.random.default_rng(3)
    import boto3

    s3 = boto3.client("s3")
    bucket = s3_bucket[len("s3://") :]
    keys = [k for k in ODD_KEYS if "\n" not in k]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=f"pool/odd/{k}", Body=good_image_bytes(rng))
    got = {r["id"]: r["error"] for r in _rows(f"{s3_bucket}/pool")}
    assert got == {names.s3_id(bucket, f"pool/odd/{k}"): None for k in keys}
    for rid in got:
        assert "\n" not in rid and "\r" not in rid and " " not in rid


def test_local_names_with_any_character_round_trip(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(4)
    for k in ODD_KEYS:
        (pool / k).write_bytes(good_image_bytes(rng))
    got = {r["id"]: r["error"] for r in _rows(str(pool))}
    assert got == {names.local_id(os.fsencode(pool / k)): None for k in ODD_KEYS}


def _exif_rotated_jpeg() -> tuple[bytes, np.ndarray]:
    """A 24x12 JPEG stored landscape with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    img = random_image(np.random.default_rng(5), 24).resize((24, 12))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif.tobytes()), np.asarray(
        img.transpose(Image.Transpose.ROTATE_270)
    )


def test_decode_applies_exif_orientation():
    """Issue 20, defect 7: a phone photo stored sideways is decoded upright (target, pool, evaluation alike:
    they all decode here)."""
    from mak_ray.data.decode import decode_frame, decode_image

    data, upright = _exif_rotated_jpeg()
    arr, err = decode_image(data, 12, 10**6)
    assert err is None
    ref, _ = decode_image(encode(Image.fromarray(upright), "PNG"), 12, 10**6)
    assert np.abs(arr.astype(int) - ref.astype(int)).mean() < 8  # JPEG noise, not a rotation
    frame, err = decode_frame(data, 64, 10**6)  # the aspect-keeping frame of the scoring path is upright too
    assert err is None and frame.shape[:2] == upright.shape[:2]


def test_every_listed_entry_is_scored_failed_or_skipped(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(6)
    for i in range(4):
        (pool / f"{i}.png").write_bytes(good_image_bytes(rng))
    (pool / "zero.png").write_bytes(b"")
    (pool / ".hidden.png").write_bytes(b"x")
    (pool / "x.txt").write_bytes(b"x")
    os.symlink(tmp_path / "none", pool / "dead.png")
    p = plan_input(str(pool), DataSection(), str(tmp_path / "p"))
    rows = _rows(str(pool))
    failed = [r for r in rows if r["error"]]
    assert len(rows) == p.objects == 6 and len(failed) == 2
    assert p.listed == len(rows) + sum(p.skipped.values()) == 8
    assert pa.array([r["error"] for r in failed]).to_pylist() == ["broken_link", "empty"]
