"""A method's selection on storage.

``selection.parquet`` (``id``, ``order``, ``ecle``, ``proximity``, ``score``, ``label``) is what the project's
own readers use. ``selection.txt`` is the paper's split-file format: one id per line in pick order, with
``%``, line feed and carriage return written as ``%25``, ``%0A`` and ``%0D``, so an id holding a line break
is still one line (:func:`decode_line` reverses it).
"""

from __future__ import annotations

import pyarrow as pa

from mak_ray import storage
from mak_ray.layout import SelectionOutput

_ESCAPES = (("%", "%25"), ("\n", "%0A"), ("\r", "%0D"))


def encode_line(selection_id: str) -> str:
    for raw, esc in _ESCAPES:
        selection_id = selection_id.replace(raw, esc)
    return selection_id


def decode_line(line: str) -> str:
    for raw, esc in reversed(_ESCAPES):
        line = line.replace(esc, raw)
    return line


def write_selection(out: SelectionOutput, table: pa.Table, summary: dict) -> None:
    """``table`` in pick order (see the module docstring for its columns), and the method's summary."""
    storage.write_parquet(table, out.parquet)
    ids = table.column("id").to_pylist()
    storage.write_text(out.text, "".join(encode_line(i) + "\n" for i in ids))
    storage.write_json(out.summary, summary)


def read_selection_ids(out: SelectionOutput) -> list[str]:
    """The selected ids in pick order."""
    table = storage.read_parquet(out.parquet, columns=["id", "order"]).sort_by("order")
    return [str(i) for i in table.column("id").to_pylist()]
