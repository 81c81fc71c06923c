"""Pool scoring: negative bank, the scoring actor, the resumable shard-level engine, streaming readers."""

from mak_ray.score.pipeline import embed_images, score_pool
from mak_ray.score.stream import iter_score_columns, load_embeddings, load_valid_embeddings, part_files

__all__ = [
    "embed_images",
    "iter_score_columns",
    "load_embeddings",
    "load_valid_embeddings",
    "part_files",
    "score_pool",
]
