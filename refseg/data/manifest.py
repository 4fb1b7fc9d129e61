"""JSONL manifests: refseg's own dataset format, one referring expression per line.

Each line is a JSON object::

    {"id": "...", "image": "images/a.jpg", "sentence": "the dog on the left",
     "mask": "masks/a_1.png" | {"size": [h, w], "counts": ...} | null, "split": "val"}

``mask`` is a PNG (non-zero = target) inside the manifest's folder, a COCO RLE (compressed or
uncompressed, checked by :func:`~refseg.data.annotations.check_rle`) or ``null`` (no target).
Relative paths are relative to the manifest file. Optional ``split``, ``source``
and ``image_id`` fill the :class:`RefSample` fields of that name; every other key goes to ``meta``
(:meth:`~refseg.data.sample.SampleMeta.from_record`: its typed fields, the rest in ``meta.extra``).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from refseg.data.annotations import check_rle, loads
from refseg.data.masks import decode_mask, encode_rle
from refseg.data.sample import RefSample, SampleMeta
from refseg.errors import ConfigError
from refseg.io import atomic_write_text, is_inside, save_mask_png, save_png

REQUIRED_KEYS = ("id", "image", "sentence", "mask")
_FIELD_KEYS = ("split", "source", "image_id")


def iter_manifest(path: str | Path, split: str | None = None, check_files: bool = True) -> Iterator[RefSample]:
    """Yield the samples of a JSONL manifest (only ``split`` when given).

    Raises :class:`ConfigError` naming the line for malformed lines, duplicate ids and (when
    ``check_files``) images or mask PNGs that do not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest not found: {path}")
    base = path.parent
    seen: set[str] = set()
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            sample = _parse_line(line, base, f"{path} line {number}", check_files)
            if sample.id in seen:
                raise ConfigError(f"{path} line {number}: duplicate id {sample.id!r}")
            seen.add(sample.id)
            if split is None or sample.split == split:
                yield sample


def read_manifest(path: str | Path, split: str | None = None, check_files: bool = True) -> list[RefSample]:
    """All samples of a manifest as a list (see :func:`iter_manifest`)."""
    return list(iter_manifest(path, split, check_files))


def _parse_line(line: bytes, base: Path, where: str, check_files: bool) -> RefSample:
    record = loads(line, where)
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)} (use \"mask\": null for no target)")
    for key in ("id", "image", "sentence"):
        if not isinstance(record[key], str) or not record[key].strip():
            raise ConfigError(f"{where}: {key!r} must be a non-empty string")
    image = _resolve(base, record["image"])
    if check_files and not image.is_file():
        raise ConfigError(f"{where}: image not found: {image}")
    fields = {}
    for key in _FIELD_KEYS:
        value = record.get(key)
        if value is not None and not isinstance(value, (str, int)):
            raise ConfigError(f"{where}: {key!r} must be a string")
        fields[key] = None if value is None else str(value)
    meta = SampleMeta.from_record(
        {k: v for k, v in record.items() if k not in REQUIRED_KEYS and k not in _FIELD_KEYS}, where
    )
    return RefSample(
        id=record["id"],
        image=image,
        sentence=record["sentence"],
        mask=_parse_mask(record["mask"], base, where, check_files),
        split=fields["split"],
        source=fields["source"] or "manifest",
        image_id=fields["image_id"],
        meta=meta,
    )


def _parse_mask(value: Any, base: Path, where: str, check_files: bool) -> Path | dict | None:
    if value is None:
        return None
    if isinstance(value, str):
        mask = _resolve(base, value)
        if not is_inside(base, mask):
            raise ConfigError(f"{where}: mask {value!r} is outside the manifest's folder {base}")
        if check_files and not mask.is_file():
            raise ConfigError(f"{where}: mask not found (or not a regular file): {mask}")
        return mask
    if isinstance(value, dict):
        try:
            check_rle(value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: mask: {exc}") from None
        return value
    raise ConfigError(f"{where}: mask must be a PNG path, a COCO RLE object or null")


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def write_manifest(
    samples: Iterable[RefSample],
    out_dir: str | Path,
    name: str = "refs.jsonl",
    mask_format: str = "png",
) -> Path:
    """Write ``out_dir/<name>`` and the files it needs; returns the manifest path.

    Masks become 0/255 PNGs under ``masks/`` (``mask_format="png"``; identical masks, e.g. the
    several sentences of one object, share one file) or inline compressed RLE
    (``mask_format="rle"``); a PNG mask file inside ``out_dir`` is referenced, others are copied.
    Images given as arrays are written once per ``image_id`` under ``images/``. Paths are
    written relative to the manifest. Every file is written atomically.
    """
    if mask_format not in ("png", "rle"):
        raise ConfigError(f"mask_format must be 'png' or 'rle', got {mask_format!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _ManifestWriter(out_dir, mask_format)
    lines = [json.dumps(writer.record(sample), ensure_ascii=False) for sample in samples]
    return atomic_write_text(out_dir / name, "".join(line + "\n" for line in lines))


class _ManifestWriter:
    """Turns samples into JSON records, writing each distinct mask / in-memory image once."""

    def __init__(self, out_dir: Path, mask_format: str) -> None:
        self.out_dir = out_dir
        self.mask_format = mask_format
        self.mask_files: dict[str, str] = {}
        self.image_files: dict[str, str] = {}
        self.ids: set[str] = set()
        self.used_names: set[str] = set()

    def record(self, sample: RefSample) -> dict[str, Any]:
        if sample.id in self.ids:
            raise ConfigError(f"duplicate sample id {sample.id!r}")
        self.ids.add(sample.id)
        record: dict[str, Any] = {
            "id": sample.id,
            "image": self._image(sample),
            "sentence": sample.sentence,
            "mask": self._mask(sample),
        }
        for key in _FIELD_KEYS:
            if getattr(sample, key):
                record[key] = getattr(sample, key)
        meta = sample.meta.to_record()
        clashes = set(meta) & (set(REQUIRED_KEYS) | set(_FIELD_KEYS))
        if clashes:
            raise ConfigError(f"sample {sample.id}: meta keys {sorted(clashes)} clash with manifest fields")
        record.update(meta)
        return record

    def _relative(self, path: Path) -> str:
        return Path(os.path.relpath(Path(path).resolve(), self.out_dir.resolve())).as_posix()

    def _image(self, sample: RefSample) -> str:
        if not isinstance(sample.image, np.ndarray):
            return self._relative(Path(sample.image))
        key = sample.image_id or sample.id
        if key not in self.image_files:
            target = self._new_file("images", key)
            save_png(target, sample.image)
            self.image_files[key] = self._relative(target)
        return self.image_files[key]

    def _mask(self, sample: RefSample) -> str | dict | None:
        if sample.mask is None:
            return None
        if isinstance(sample.mask, (str, Path)) and is_inside(self.out_dir, Path(sample.mask)):
            return self._relative(Path(sample.mask))  # readers refuse mask paths outside the folder: others are copied
        if isinstance(sample.mask, dict) and self.mask_format == "rle":
            return sample.mask
        mask = decode_mask(sample.mask, (0, 0))  # size is only used for "no target"
        if self.mask_format == "rle":
            return encode_rle(mask)
        digest = hashlib.sha1(np.packbits(mask).tobytes() + repr(mask.shape).encode()).hexdigest()
        if digest not in self.mask_files:
            target = self._new_file("masks", sample.id)
            save_mask_png(target, mask)
            self.mask_files[digest] = self._relative(target)
        return self.mask_files[digest]

    def _new_file(self, folder: str, stem: str) -> Path:
        directory = self.out_dir / folder
        directory.mkdir(exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in stem)
        name, counter = f"{safe}.png", 1
        while f"{folder}/{name}" in self.used_names:
            counter += 1
            name = f"{safe}-{counter}.png"
        self.used_names.add(f"{folder}/{name}")
        return directory / name
