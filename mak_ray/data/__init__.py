"""Pool and target inputs: shard planning, byte reading and per-row decoding with error capture."""

from mak_ray.data.dataset import DUPLICATE_ID, image_dataset, keep_rows, read_shard
from mak_ray.data.decode import decode_image
from mak_ray.data.sources import Shard, detect_format, plan_from_config, plan_shards

__all__ = [
    "DUPLICATE_ID",
    "Shard",
    "decode_image",
    "detect_format",
    "image_dataset",
    "keep_rows",
    "plan_from_config",
    "plan_shards",
    "read_shard",
]
