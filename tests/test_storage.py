"""The storage module against a local folder and a real S3 endpoint (moto's server over HTTP)."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest

from mak_ray import storage


def table() -> pa.Table:
    return pa.table({"id": ["a", "b", "c"], "ecle": pa.array([1.0, 2.5, 3.25], pa.float32())})


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_parquet_round_trip(root):
    uri = storage.join(root, "scores", "part-0.parquet")
    storage.write_parquet(table(), uri)
    assert storage.exists(uri)
    assert storage.read_parquet(uri).equals(table())
    # a directory of parts reads as one table
    storage.write_parquet(table(), storage.join(root, "scores", "sub", "part-1.parquet"))
    both = storage.read_parquet(storage.join(root, "scores"))
    assert both.num_rows == 6


def test_s3_parquet_goes_over_http(s3_bucket, s3_endpoint):
    """The object written through the storage module is really in the HTTP server's bucket."""
    import boto3

    uri = f"{s3_bucket}/x/t.parquet"
    storage.write_parquet(table(), uri)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket[5:])["Contents"]]
    assert keys == ["x/t.parquet"]


def test_bytes_json_list_delete(root):
    storage.write_bytes(storage.join(root, "a", "1.bin"), b"one")
    storage.write_json(storage.join(root, "a", "b", "2.json"), {"k": [1, 2]})
    storage.write_text(storage.join(root, "a", ".hidden"), "x")
    files = storage.list_files(storage.join(root, "a"))
    assert [f.rsplit("/", 1)[-1] for f in files] == ["1.bin", "2.json"]
    assert storage.list_files(storage.join(root, "a"), (".json",))[0].endswith("a/b/2.json")
    assert storage.read_bytes(files[0]) == b"one"
    assert storage.read_json(files[1]) == {"k": [1, 2]}
    storage.delete(storage.join(root, "a"))
    assert not storage.exists(files[0])


def test_local_write_is_atomic_and_leaves_no_temp(tmp_path):
    uri = str(tmp_path / "d" / "f.txt")
    storage.write_text(uri, "old")
    storage.write_text(uri, "new")
    assert storage.read_text(uri) == "new"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["f.txt"]


def test_missing_prefix_is_a_clear_error(root):
    with pytest.raises(FileNotFoundError, match="no such file or prefix"):
        storage.list_files(storage.join(root, "nothing-here"))


@pytest.mark.parametrize("part", ["../x", "/etc/passwd", "a/../../b"])
def test_join_refuses_escapes(part):
    with pytest.raises(ValueError, match="escape"):
        storage.join("s3://b/out", part)


def test_unsupported_scheme():
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.filesystem("gs://bucket/x")


def test_credentials_never_logged(s3_bucket, caplog):
    caplog.set_level(logging.DEBUG)
    storage._s3.cache_clear()
    storage.write_text(f"{s3_bucket}/k.txt", "v")
    assert storage.read_text(f"{s3_bucket}/k.txt") == "v"
    text = caplog.text
    assert "testing-secret-key" not in text and "testing-key-id" not in text
