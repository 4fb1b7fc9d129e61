"""Dataset sources: one module per format, registered under the ``kind`` a config names.

A source turns one :class:`~refseg.config.DatasetSpec` into :class:`~refseg.data.sample.RefSample`\\ s.
A new format is one module that registers itself::

    from refseg.data.sources import register_source

    @register_source("my-format", path="folder")
    def read_my_format(spec, path):
        return [...]  # RefSamples

in this package (found by :func:`source_kinds`) or, outside refseg, named in the config's
``imports``. :func:`load_samples` reads the specs of a config and concatenates them.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from refseg.errors import ConfigError

if TYPE_CHECKING:
    from refseg.config import Config, DatasetSpec
    from refseg.data.sample import RefSample

Reader = Callable[["DatasetSpec", "Path | None"], "list[RefSample]"]

@dataclass(frozen=True)
class Source:
    """A registered dataset format: its reader and what its spec must name.

    ``path`` is what ``spec.path`` names ("file", "folder", or None for generated data);
    ``needs_split``: ``spec.split`` is required; ``check(spec)`` returns an error about the spec's
    own fields (``"n must be > 0 …"``) or None.
    """

    kind: str
    read: Reader
    path: Literal["file", "folder"] | None = "folder"
    needs_split: bool = True
    check: Callable[["DatasetSpec"], str | None] | None = None


_SOURCES: dict[str, Source] = {}


def register_source(
    kind: str,
    *,
    path: Literal["file", "folder"] | None = "folder",
    needs_split: bool = True,
    check: Callable[["DatasetSpec"], str | None] | None = None,
) -> Callable[[Reader], Reader]:
    """Decorator: register ``read(spec, path) -> list[RefSample]`` as the source of ``kind``."""

    def decorator(read: Reader) -> Reader:
        if kind in _SOURCES and _SOURCES[kind].read is not read:
            raise ValueError(f"dataset kind {kind!r} is already registered")
        _SOURCES[kind] = Source(kind, read, path, needs_split, check)
        return read

    return decorator


def source_kinds() -> list[str]:
    """The registered dataset kinds: every module of this package registers its own."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return list(_SOURCES)


def get_source(kind: str) -> Source:
    """The source registered as ``kind`` (ConfigError naming the kinds otherwise)."""
    kinds = source_kinds()
    if kind not in _SOURCES:
        raise ConfigError(f"unknown dataset kind {kind!r}; valid kinds: {', '.join(kinds)}")
    return _SOURCES[kind]


def check_spec(spec: "DatasetSpec", key: str, path: Path | None) -> None:
    """ConfigError when the spec at ``key`` lacks what its source needs (``path`` resolved)."""
    source = get_source(spec.kind)
    problem = source.check(spec) if source.check else None
    if problem:
        raise ConfigError(f"{key}.{problem}")
    if source.path is None:
        return
    if path is None:
        raise ConfigError(f"{key}.path is required for a {spec.kind} dataset")
    if source.needs_split and not spec.split:
        raise ConfigError(f"{key}.split is required for a {spec.kind} dataset (e.g. train, val)")
    if source.path == "file" and not path.is_file():
        raise ConfigError(f"{key}.path: {spec.kind} not found: {path}")
    if source.path == "folder" and not path.is_dir():
        raise ConfigError(f"{key}.path: {spec.kind} folder not found: {path}")


def read_spec(spec: "DatasetSpec", path: Path | None) -> list["RefSample"]:
    """The samples of one dataset spec (``path`` already resolved)."""
    return get_source(spec.kind).read(spec, path)


def load_samples(config: "Config", group: str) -> list["RefSample"]:
    """All samples of ``config.data.<group>`` ("train" or "val"), specs concatenated in order."""
    from refseg.config import check_data_paths, resolve_path

    check_data_paths(config)
    samples: list[RefSample] = []
    for i, spec in enumerate(getattr(config.data, group)):
        path = resolve_path(config, spec.path) if spec.path else None
        part = read_spec(spec, path)
        if spec.exclude_images:
            listed = read_image_ids(spec.exclude_images)
            part = [s for s in part if s.image_id is None or str(s.image_id) not in listed]
        if spec.only_images:
            listed = read_image_ids(spec.only_images)
            part = [s for s in part if s.image_id is not None and str(s.image_id) in listed]
        if spec.limit > 0:
            part = part[: spec.limit]
        if not part:
            raise ConfigError(f"data.{group}.{i} ({spec.kind} {spec.path or ''} {spec.split}) has no samples")
        samples.extend(part)
    return samples


def read_image_ids(path: str | Path) -> set[str]:
    """The ``image_id`` values named by a JSONL file (one object per line; other keys ignored)."""
    from refseg.data.annotations import loads

    ids: set[str] = set()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the photo list ({type(exc).__name__})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = loads(line, f"{path}:{number}")
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{number}: not a JSON object")
        if record.get("image_id") is None:
            raise ConfigError(f"{path}:{number}: no image_id")
        ids.add(str(record["image_id"]))
    return ids
