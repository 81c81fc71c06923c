"""Pool and target inputs: the plan (a manifest made by parallel listing), byte reading and per-row decoding
with error capture, duplicate ids."""

from mak_ray.data.dataset import DUPLICATE_ID, image_dataset, keep_rows, read_shard
from mak_ray.data.decode import decode_image
from mak_ray.data.manifest import Plan, input_digest, input_name, plan_input, read_plan
from mak_ray.data.sources import Shard, load_shard

__all__ = [
    "DUPLICATE_ID",
    "Plan",
    "Shard",
    "decode_image",
    "image_dataset",
    "input_digest",
    "input_name",
    "keep_rows",
    "load_shard",
    "plan_input",
    "read_plan",
    "read_shard",
]
