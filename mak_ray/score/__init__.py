"""Pool scoring: the model actors, the negative bank, the resumable shard-level engine, readers of its output."""

from mak_ray.score.engine import embed_images, score_pool
from mak_ray.score.outputs import iter_score_columns, load_embeddings, load_valid_embeddings, part_files

__all__ = [
    "embed_images",
    "iter_score_columns",
    "load_embeddings",
    "load_valid_embeddings",
    "part_files",
    "score_pool",
]
