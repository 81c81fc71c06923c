"""The label rule that marks out-of-distribution images in a labelled pool (the demo's, or a user's check set):
a label that starts with ``ood`` (any case). Labels never take part in selection; the report and the score
diagnostics use this rule to show OOD shares and AUROCs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

OOD_PREFIX = "ood"


def is_ood(label: str | None) -> bool:
    return label is not None and str(label).lower().startswith(OOD_PREFIX)


def ood_mask(labels: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Boolean mask of OOD labels, computed in Arrow (null labels are not OOD)."""
    hit = pc.starts_with(pc.utf8_lower(labels), OOD_PREFIX)
    return hit.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
