"""Plans of test inputs as shard lists (the engine never holds these; tests of reading do)."""

from __future__ import annotations

import tempfile

from mak_ray.config import DataSection
from mak_ray.data import Plan, Shard, load_shard, plan_input


def plan(uri: str, data: DataSection | None = None, plan_dir: str | None = None) -> Plan:
    return plan_input(uri, data or DataSection(), plan_dir or tempfile.mkdtemp(prefix="plan-"))


def shards(uri: str, data: DataSection | None = None, plan_dir: str | None = None) -> list[Shard]:
    """Every shard of ``uri``'s plan, in plan order, with its members loaded from the manifest."""
    p = plan(uri, data, plan_dir)
    return [load_shard(u, p.part_uris) for u in p.shard_table().to_pylist()]
