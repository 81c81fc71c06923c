"""A bounded look at an input, for the checks before any work: it exists, it is not empty, it does not mix
Parquet with other inputs, and (when the look saw everything) how many rows it holds. At most
``LOOK_ENTRIES`` entries locally, one LIST page on S3: never a full listing of a big input."""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass

from mak_ray import storage
from mak_ray.config import DataSection
from mak_ray.data import listing, names
from mak_ray.data.manifest import s3_head

LOOK_ENTRIES = 1000  # entries a bounded look lists at most
LOOK_FOOTERS = 64  # Parquet footers it reads at most, to count rows


@dataclass
class Peek:
    """What a bounded look at an input saw: whether it saw every entry, the inputs among them, and (when it saw
    every entry and their rows are known without reading) the rows they hold."""

    exhausted: bool
    inputs: int
    kinds: dict[str, int]
    rows: int | None


def _look_local(root: bytes, skip: names.SkipRules, limit: int) -> tuple[list[bytes], bool]:
    """Input-candidate file paths under ``root`` (folders depth first, links not followed), at most ``limit``
    entries seen; and whether that was all."""
    if not os.path.isdir(root):
        return [root], True
    files, stack, seen = [], [root], 0
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    seen += 1
                    if seen > limit:
                        return files, False
                    is_dir = e.is_dir(follow_symlinks=False)
                    if skip.reason(e.name, is_dir):
                        continue
                    if is_dir:
                        stack.append(e.path)
                    elif not (e.is_symlink() and os.path.isdir(e.path)):
                        files.append(e.path)
        except OSError:
            continue
    return files, True


def _look_s3(uri: str, skip: names.SkipRules, limit: int) -> tuple[list[str], bool]:
    """Object ids under ``uri`` from one LIST page of up to ``limit`` keys, and whether that was all."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    key = key.rstrip("/")
    if key and s3_head(bucket, key) is not None:
        return [names.s3_id(bucket, key)], True
    prefix = key + "/" if key else ""
    client = storage.s3_client()
    try:
        resp = storage.with_retries(
            uri, "list", lambda: client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=limit)
        )
    except Exception as exc:  # noqa: BLE001
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            raise FileNotFoundError(f"no such bucket: s3://{bucket}") from exc
        raise
    keys = [o["Key"] for o in resp.get("Contents", [])]
    if not keys and not resp.get("IsTruncated"):
        raise FileNotFoundError(f"no such file or prefix: {uri}")
    out = [
        names.s3_id(bucket, k)
        for k in keys
        if k[len(prefix) :] and not skip.path_reason(k[len(prefix) :].encode())
    ]
    return out, not resp.get("IsTruncated")


def peek_input(uri: str, data: DataSection, limit: int = LOOK_ENTRIES) -> Peek:
    """A bounded look at ``uri`` (at most ``limit`` entries, one LIST page on S3), for checks before any
    work: FileNotFoundError when it does not exist, ValueError when what it saw mixes Parquet with other
    inputs. Never a full listing of a big input."""
    skip = names.SkipRules(data.skip)
    if storage.is_s3(uri):
        ids, exhausted = _look_s3(uri, skip, limit)
        found = [(i, names.kind_of(i.rpartition("/")[2].encode(), data.format)) for i in ids]
    else:
        root = os.fsencode(storage.filesystem(uri)[1])
        if not os.path.exists(root):
            raise FileNotFoundError(f"no such file or prefix: {uri}")
        paths, exhausted = _look_local(root, skip, limit)
        found = [(names.local_id(p), names.kind_of(os.path.basename(p), data.format)) for p in paths]
    kinds = collections.Counter(k for _, k in found if k)
    if kinds.get(names.PARQUET) and len(kinds) > 1:
        by_kind = {k: [i for i, kk in found if kk == k][:3] for k in kinds}
        raise ValueError(
            f"{uri} mixes Parquet files with other inputs ({by_kind}); Parquet pools cannot be mixed with image "
            "files or tar shards: keep them apart or set data.format"
        )
    rows = None
    if exhausted and not kinds.get(names.TAR) and kinds.get(names.PARQUET, 0) <= LOOK_FOOTERS:
        rows = kinds.get(names.FILES, 0)
        for rid, k in found:
            if k == names.PARQUET:
                runs = listing.row_group_runs(rid, data.parquet_rows_per_shard)
                if any(n is None for _, n in runs):
                    rows = None
                    break
                rows += sum(n for _, n in runs)
    return Peek(exhausted, sum(kinds.values()), dict(kinds), rows)
