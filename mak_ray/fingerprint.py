"""Stage fingerprints: what a stage's output was made from, recorded beside its ``_SUCCESS``.

A rerun skips a stage only when the fingerprint it would record now equals the recorded one, so a stage
whose config, inputs or upstream outputs changed is never silently kept. A fingerprint has three parts:

- ``config``: the values of the config fields the stage declares (:attr:`mak_ray.registry.StageSpec.config`);
- ``upstream``: the *output id* of every stage output it reads. An output id is drawn afresh each time a
  stage (or part) finishes, so everything after a stage that ran again is stale, even when that stage's own
  fingerprint did not change (training is not bit-reproducible, so a re-pretrained model is a new model);
- ``inputs``: a digest of each ``data.*`` input listing it reads (:func:`input_digest`).

The record (``_FINGERPRINT.json``) holds the three parts as well as their digest, so the reason for a rerun can
name the field, input or upstream output that changed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from mak_ray import storage
from mak_ray.config import DataSection, MakConfig, config_to_dict
from mak_ray.layout import fingerprint_file

PENDING = "pending"
"""The upstream value of an output that runs again before the stage that reads it (in a plan, never recorded)."""

MISSING = "missing"
"""The digest of an input that does not exist (shown by ``mak-ray status``; a run refuses it first)."""


def input_digest(uri: str, data: DataSection) -> str:
    """The digest of one input's listing: the single place the pipeline gets it from
    (:func:`mak_ray.data.manifest.input_digest`: every listed entry's name, size and version, and the planning
    settings; listed in parallel Ray tasks when Ray is up, never read)."""
    from mak_ray.data.manifest import input_digest as listing_digest

    return listing_digest(uri, data)


class InputDigests:
    """Input digests for one command, each input listed at most once."""

    def __init__(self, data: DataSection) -> None:
        self.data = data
        self._cache: dict[str, str | None] = {}

    def __call__(self, uri: str) -> str | None:
        """The digest of ``uri``; None when it is not set, :data:`MISSING` when it does not exist."""
        if uri not in self._cache:
            if not uri:
                self._cache[uri] = None
            elif not storage.exists(uri):
                self._cache[uri] = MISSING
            else:
                self._cache[uri] = input_digest(uri, self.data)
        return self._cache[uri]


def config_values(cfg: MakConfig, fields: tuple[str, ...]) -> dict[str, Any]:
    """``{"section.key": value}`` for the dotted ``fields``."""
    tree = config_to_dict(cfg)
    out = {}
    for name in fields:
        node: Any = tree
        for part in name.split("."):
            node = node[part]
        out[name] = node
    return out


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


@dataclass(frozen=True)
class Fingerprint:
    """What one stage (or part) output depends on; see the module docstring."""

    config: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, str | None] = field(default_factory=dict)
    inputs: dict[str, str | None] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return hashlib.sha256(
            _canonical({"config": self.config, "upstream": self.upstream, "inputs": self.inputs})
        ).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "upstream": self.upstream, "inputs": self.inputs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        return cls(dict(d.get("config", {})), dict(d.get("upstream", {})), dict(d.get("inputs", {})))


@dataclass(frozen=True)
class Record:
    """A fingerprint as recorded when its output finished, with that output's id."""

    fingerprint: Fingerprint
    digest: str
    output: str


def read_record(unit_dir: str) -> Record | None:
    """The record beside ``unit_dir``'s ``_SUCCESS``, or None when there is none (or it is unreadable)."""
    uri = fingerprint_file(unit_dir)
    if not storage.exists(uri):
        return None
    try:
        d = storage.read_json(uri)
        return Record(Fingerprint.from_dict(d["fingerprint"]), str(d["digest"]), str(d["output"]))
    except (ValueError, KeyError, TypeError):
        return None


def write_record(unit_dir: str, fp: Fingerprint) -> Record:
    """Record ``fp`` for the output just finished in ``unit_dir``, under a new output id."""
    rec = Record(fp, fp.digest, uuid.uuid4().hex)
    storage.write_json(
        fingerprint_file(unit_dir), {"digest": rec.digest, "output": rec.output, "fingerprint": fp.to_dict()}
    )
    return rec


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Change:
    """One difference between a recorded fingerprint and the current one: the config field, input or upstream
    output (``key``) and how it changed."""

    key: str
    text: str

    def __str__(self) -> str:
        return f"{self.key}: {self.text}"


def changes(old: Fingerprint, new: Fingerprint) -> list[Change]:
    """Why ``new`` differs from the recorded ``old``: one entry per changed field, input or upstream output."""
    out = []
    for name in sorted(set(old.config) | set(new.config)):
        a, b = old.config.get(name, "<unset>"), new.config.get(name, "<unset>")
        if a != b:
            out.append(Change(name, f"{_short(a)} -> {_short(b)}"))
    for name in sorted(set(old.inputs) | set(new.inputs)):
        a, b = old.inputs.get(name), new.inputs.get(name)
        if a == b:
            continue
        if b == MISSING:
            out.append(Change(name, "the input is missing"))
        elif a is None or b is None:
            out.append(Change(name, "now read" if a is None else "no longer read"))
        else:
            out.append(Change(name, f"the input changed (listing {a[:8]} -> {b[:8]})"))
    for key in sorted(set(old.upstream) | set(new.upstream)):
        a, b = old.upstream.get(key), new.upstream.get(key)
        if a == b:
            continue
        if key not in new.upstream:
            out.append(Change(key, "no longer in the run"))
        elif key not in old.upstream:
            out.append(Change(key, "new in the run"))
        elif b == PENDING:
            out.append(Change(key, "runs again first"))
        elif b is None:
            out.append(Change(key, "not complete"))
        else:
            out.append(Change(key, "ran again since"))
    return out
