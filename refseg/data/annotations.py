"""Validation of untrusted annotation data, before any of it reaches pycocotools or an allocation.

Every dataset reader parses JSON with :func:`loads` / :func:`read_json` and checks segmentations
with :func:`check_polygons` and :func:`check_rle`, so a hostile file gives a one-line
:class:`~refseg.errors.ConfigError` instead of a traceback, a segmentation fault inside
pycocotools, or gigabytes of memory:

* JSON must be UTF-8, without ``NaN`` / ``Infinity``, and not nested deeper than Python's recursion limit;
* a polygon is an even number of finite coordinates, at most one image size outside the image;
  polygons of fewer than three points (they cover no pixel; COCO has a few) are dropped;
* an RLE's size is at most :data:`~refseg.limits.MAX_PIXELS` and its counts are non-negative and
  add up to exactly height x width (compressed strings are decoded to check them);
* a claimed image size is positive, within the pixel cap and that of the photo (:func:`check_photo_size`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from refseg.errors import ConfigError
from refseg.limits import MAX_PIXELS, check_pixels

def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def loads(text: str | bytes, where: str) -> Any:
    """Parse untrusted JSON; any problem is a one-line ConfigError naming ``where``."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:  # NaN / Infinity
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None


def read_json(path: Path, what: str, expect: type = dict) -> Any:
    """Parse a JSON annotation file whose top level must be an ``expect`` (ConfigError otherwise)."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = loads(path.read_bytes(), f"{what} {path}")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not isinstance(data, expect):
        raise ConfigError(f"{what} {path} must hold a JSON {expect.__name__}, got {type(data).__name__}")
    return data


def check_int(value: Any, what: str) -> int:
    """A JSON integer id or size (not a bool, not a float), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, got {value!r:.40}")
    return value


#: Keys of a COCO instances annotation and of a COCO panoptic one, with their JSON types.
INSTANCE_KEYS = {"id": int, "image_id": int, "category_id": int}
PANOPTIC_KEYS = {"image_id": int, "file_name": str, "segments_info": list}


def check_coco(data: dict, what: str, annotation_keys: dict[str, type] = INSTANCE_KEYS) -> None:
    """The parts of a COCO-style file refseg reads: ``images`` (id, file_name, width, height within
    the pixel cap), ``annotations`` (``annotation_keys``) and ``categories`` (id, name)."""
    fields = {
        "images": {"id": int, "file_name": str, "width": int, "height": int},
        "annotations": annotation_keys,
        "categories": {"id": int, "name": str},
    }
    for section, keys in fields.items():
        entries = data.get(section, [])
        if not isinstance(entries, list):
            raise ConfigError(f"{what}: {section!r} must be a list")
        for index, entry in enumerate(entries):
            where = f"{what}: {section}[{index}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where} must be an object")
            for key, kind in keys.items():
                if key not in entry:
                    raise ConfigError(f"{where} has no {key!r}")
                if kind is int:
                    check_int(entry[key], f"{where}.{key}")
                elif not isinstance(entry[key], kind):
                    raise ConfigError(f"{where}.{key} must be a {'string' if kind is str else kind.__name__}")
            if section == "images":
                check_pixels(entry["height"], entry["width"], f"{where} (image {entry['id']})")


def check_polygons(polygons: list, height: int, width: int) -> list[list[float]]:
    """The polygons of a COCO segmentation that cover pixels, each checked (see module doc)."""
    kept = []
    for polygon in polygons:
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            raise ConfigError("a polygon must be a list of numbers")
        if len(polygon) % 2:
            raise ConfigError(f"a polygon has an odd number of coordinates ({len(polygon)})")
        if not all(math.isfinite(v) for v in polygon):
            raise ConfigError("a polygon has a NaN or infinite coordinate")
        xs, ys = polygon[0::2], polygon[1::2]
        if xs and (min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height):
            raise ConfigError(f"a polygon lies far outside its {width}x{height} image")
        if len(polygon) >= 6:
            kept.append([float(v) for v in polygon])
    return kept


def check_rle(rle: Any, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """``rle`` is ``{"size": [h, w], "counts": list | str | bytes}`` within the pixel cap whose
    counts cover exactly h x w pixels (and, when given, h = ``height``, w = ``width``); returns (h, w)."""
    if not isinstance(rle, dict):
        raise ConfigError("an RLE must be an object with \"size\" and \"counts\"")
    size, counts = rle.get("size"), rle.get("counts")
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ConfigError("an RLE needs \"size\": [height, width]")
    h, w = (check_int(s, "an RLE size") for s in size)
    check_pixels(h, w, "an RLE mask")
    if height is not None and (h, w) != (height, width):
        raise ConfigError(f"an RLE of size {[h, w]} on an image of size {[height, width]}")
    if isinstance(counts, list):
        values = [check_int(c, "an RLE count") for c in counts]
    elif isinstance(counts, (str, bytes)):
        if isinstance(counts, str) and not counts.isascii():
            raise ConfigError("an RLE string holds a character outside its alphabet")
        values = _string_counts(counts.encode("ascii") if isinstance(counts, str) else counts)
    else:
        raise ConfigError("an RLE needs \"counts\" (a list of numbers or a compressed string)")
    if any(v < 0 for v in values) or sum(values) != h * w:
        raise ConfigError(f"an RLE's counts must be non-negative and add up to {h}x{w} = {h * w} pixels")
    return h, w


def _string_counts(data: bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (5 bits per character, 6th = continue,
    runs from the third on stored as differences to the run two before)."""
    counts: list[int] = []
    position = 0
    while position < len(data):
        value = shift = 0
        while True:
            if position >= len(data):
                raise ConfigError("an RLE string ends in the middle of a count")
            code = data[position] - 48
            if not 0 <= code < 64:
                raise ConfigError("an RLE string holds a character outside its alphabet")
            value |= (code & 0x1F) << shift
            position += 1
            shift += 5
            if not code & 0x20:
                if code & 0x10:
                    value |= -1 << shift
                break
            if shift > 60:
                raise ConfigError("an RLE string holds a count that is too long")
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        if value > MAX_PIXELS:
            raise ConfigError("an RLE string holds a run longer than the pixel limit")
    return counts


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_photo_size(path: Path, height: int, width: int, what: str) -> None:
    """The size an annotation claims for a photo must be the photo's (read from its header)."""
    from refseg.data.images import image_shape

    actual = image_shape(path)
    if actual != (height, width):
        raise ConfigError(
            f"{what} claims {width}x{height} pixels but its photo {path} is {actual[1]}x{actual[0]}"
        )
