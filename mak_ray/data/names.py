"""Names from an input listing: ids that round-trip any byte, which entries are inputs, which are skipped.

**Ids.** A listed object's id is its URI with RFC 3986 percent-encoding (upper-case hex) of every byte that
is not an unreserved character (``A-Z a-z 0-9 - . _ ~``), a sub-delimiter (``! $ & ' ( ) * + , ; =``), ``:``,
``@`` or ``/``. So a space is ``%20``, ``%`` is ``%25``, ``#`` is ``%23``, a line feed ``%0A``, ``é`` (UTF-8)
``%C3%A9`` and a Latin-1 byte ``%E9``. Local ids are absolute paths (``/data/My%20Photos/a.jpg``), S3 ids
``s3://bucket/key``. :func:`id_to_path` gives the exact bytes back, so any name the file system or the
object store can hold is listed, read and written to a selection, and a literal ``#`` in an id can only be
the separator of a tar member (``<tar id>#<member>``).

**Skips.** ``data.skip`` holds name patterns (``fnmatch``, matched against one path component); a pattern
ending in ``/`` matches folders only and skips everything under them. Every skipped entry is counted by
reason (``pattern:<p>``, ``suffix`` for a file of no input kind, ``symlink_dir``, ``visited``), so
``listed = inputs + skipped`` holds for every listing.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from urllib.parse import quote_from_bytes, unquote_to_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)

_SAFE = "/:@!$&'()*+,;="  # besides the unreserved characters, which quote never escapes
_ALL_SAFE = re.compile(rb"[A-Za-z0-9\-._~/:@!$&'()*+,;=]*")

# kinds of input object, from the file name
FILES, TAR, PARQUET = "files", "tar", "parquet"


def encode(raw: bytes) -> str:
    """Percent-encode ``raw`` as the module docstring says (the inverse of :func:`decode`)."""
    if _ALL_SAFE.fullmatch(raw):  # most names: nothing to escape
        return raw.decode("ascii")
    return quote_from_bytes(raw, safe=_SAFE)


def decode(text: str) -> bytes:
    return unquote_to_bytes(text)


def local_id(path: bytes) -> str:
    """The id of a local file from its absolute path bytes."""
    return encode(path)


def s3_id(bucket: str, key: str) -> str:
    return "s3://" + encode(f"{bucket}/{key}".encode())


def root_id(uri: str) -> str:
    """The id prefix of an input root given as text (a config value): the same encoding as its objects'."""
    import os

    if uri.startswith("s3://"):
        return "s3://" + encode(uri[len("s3://") :].rstrip("/").encode())
    return encode(os.fsencode(os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)))


def id_to_path(rid: str) -> tuple[bool, bytes]:
    """``(is_s3, path)`` of an object id: S3 ``bucket/key`` as UTF-8 bytes, or a local path's bytes."""
    if rid.startswith("s3://"):
        return True, decode(rid[len("s3://") :])
    return False, decode(rid)


def split_member(rid: str) -> tuple[str, str | None]:
    """``(object id, member)`` of a tar member id ``<tar id>#<member>``; member None for a plain object."""
    obj, sep, member = rid.partition("#")
    return obj, (member if sep else None)


def member_id(tar_id: str, name: bytes) -> str:
    return f"{tar_id}#{encode(name)}"


def text(raw: bytes) -> str:
    """Readable text of a name for labels and messages (undecodable bytes as ``\\xNN``)."""
    return raw.decode("utf-8", "backslashreplace")


_KINDS = (
    (FILES, ("auto", "images"), tuple(s.encode() for s in IMAGE_SUFFIXES)),
    (TAR, ("auto", "tar"), tuple(s.encode() for s in TAR_SUFFIXES)),
    (PARQUET, ("auto", "parquet"), tuple(s.encode() for s in PARQUET_SUFFIXES)),
)


def kind_of(name: bytes, fmt: str) -> str | None:
    """The input kind of a file name under ``data.format`` (``auto`` takes all three), None when it is none."""
    low = name.lower()
    for kind, formats, suffixes in _KINDS:
        if fmt in formats and low.endswith(suffixes):
            return kind
    return None


class SkipRules:
    """``data.skip`` compiled: which path components are skipped, and the reason to count."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.files = [(p, p.encode()) for p in patterns if not p.endswith("/")]
        self.dirs = [(p, p[:-1].encode()) for p in patterns if p.endswith("/")]
        # one regex for each kind of entry: most names match none, and that is one match call
        self._any_file = self._union([pat for _, pat in self.files])
        self._any_dir = self._union([pat for _, pat in self.files + self.dirs])

    @staticmethod
    def _union(pats: list[bytes]) -> re.Pattern | None:
        if not pats:
            return None
        return re.compile(
            b"|".join(b"(?:" + fnmatch.translate(p.decode("latin-1")).encode("latin-1") + b")" for p in pats)
        )

    def reason(self, name: bytes, is_dir: bool) -> str | None:
        """``pattern:<p>`` for the first pattern that matches the component ``name``, else None."""
        quick = self._any_dir if is_dir else self._any_file
        if quick is None or not quick.match(name):
            return None
        for p, pat in self.files:
            if fnmatch.fnmatchcase(name, pat):
                return f"pattern:{p}"
        if is_dir:
            for p, pat in self.dirs:
                if fnmatch.fnmatchcase(name, pat):
                    return f"pattern:{p}"
        return None

    def path_reason(self, rel: bytes) -> str | None:
        """The skip reason of a relative path: any folder component or the final name may match."""
        parts = rel.split(b"/")
        for i, part in enumerate(parts):
            r = self.reason(part, is_dir=i < len(parts) - 1)
            if r:
                return r
        return None
