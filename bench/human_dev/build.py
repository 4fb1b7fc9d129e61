"""The human-written dev set: referring expressions typed by a person on COCO val photos.

``expressions.jsonl`` (next to this file) holds one expression per line, with references into
``../shared/data`` instead of copies of photos or masks::

    {"id": "hd-001", "dataset": "coco-panoptic" | "coco-instances" | "coco-instances-extra",
     "split": "val", "image_id": 1818, "file_name": "000000001818.jpg",
     "sentence": "big zebra on the left", "segment_ids": [...]}     # panoptic segment ids, or
                                                                     # "ann_ids": [...] (instances)

The target is the union of the listed regions. Each sample is tagged with a ``kind``:
``stuff`` (a stuff region: sky, grass, wall...), ``set`` (several regions), ``disambiguate``
(one object among several of its category: needs position / attribute / relation) or
``unique`` (the only object of its category).

Materialise a JSONL manifest with mask PNGs (images are referenced, never copied)::

    python -m bench.human_dev.build --out runs/human_dev            # writes runs/human_dev/refs.jsonl
    python -m bench.human_dev.build --references                    # whole-image / category-oracle scores

Both skip cleanly (message, exit 0) when the shared data folder is absent.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import SHARED_DATA
from refseg.data.sample import RefSample, Region, SampleMeta
from refseg.errors import ConfigError

EXPRESSIONS = Path(__file__).resolve().with_name("expressions.jsonl")
DEFAULT_DATA_ROOT = SHARED_DATA
DATASETS = ("coco-panoptic", "coco-instances", "coco-instances-extra")
KINDS = ("unique", "disambiguate", "stuff", "set")
_REQUIRED = ("id", "dataset", "split", "image_id", "file_name", "sentence")


@dataclass
class HumanDevItem:
    """One expression: the sample (mask = union of its target regions) and all regions of its photo."""

    sample: RefSample
    regions: list[Region]
    target_ids: list[int]

    @property
    def kind(self) -> str:
        return self.sample.meta.kind


def read_expressions(path: str | Path = EXPRESSIONS) -> list[dict]:
    """The expression records, validated (one-line :class:`ConfigError` naming the line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"expressions file not found: {path}")
    records, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
        missing = [k for k in _REQUIRED if k not in record]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
        if record["dataset"] not in DATASETS:
            raise ConfigError(f"{where}: unknown dataset {record['dataset']!r} (expected one of {DATASETS})")
        key = "segment_ids" if record["dataset"] == "coco-panoptic" else "ann_ids"
        ids = record.get(key)
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
            raise ConfigError(f"{where}: {record['dataset']} expressions need a non-empty integer list {key!r}")
        if record["id"] in seen:
            raise ConfigError(f"{where}: duplicate id {record['id']!r}")
        seen.add(record["id"])
        records.append({**record, "region_ids": ids})
    return records


def _reader(data_root: Path, dataset: str, split: str):
    from refseg.data.coco import CocoInstances, CocoPanoptic

    reader = CocoPanoptic if dataset == "coco-panoptic" else CocoInstances
    return reader(data_root / dataset, split=split)


def _kind(targets: list[Region], regions: list[Region]) -> str:
    if any(not r.isthing for r in targets):
        return "stuff"
    if len(targets) > 1:
        return "set"
    same_category = [r for r in regions if r.category_id == targets[0].category_id and not r.iscrowd]
    return "disambiguate" if len(same_category) > 1 else "unique"


def load_human_dev(data_root: str | Path = DEFAULT_DATA_ROOT, expressions: str | Path = EXPRESSIONS) -> list[HumanDevItem]:
    """Decode every expression's target from the shared data (in the order of ``expressions``)."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise ConfigError(f"shared data folder not found: {data_root}")
    records = read_expressions(expressions)
    wanted: dict[tuple[str, str], set[str]] = {}
    for record in records:
        wanted.setdefault((record["dataset"], record["split"]), set()).add(str(record["image_id"]))
    photos = {}
    for (dataset, split), image_ids in wanted.items():
        for image in _reader(data_root, dataset, split).iter_images():
            if image.image_id in image_ids:
                photos[dataset, image.image_id] = image
    items = []
    for record in records:
        image = photos.get((record["dataset"], str(record["image_id"])))
        if image is None or image.path.name != record["file_name"]:
            raise ConfigError(f"{record['id']}: image {record['image_id']} ({record['file_name']}) not in {record['dataset']}")
        by_id = {r.id: r for r in image.regions}
        unknown = [i for i in record["region_ids"] if i not in by_id]
        if unknown:
            raise ConfigError(f"{record['id']}: regions {unknown} not in image {record['image_id']}")
        targets = [by_id[i] for i in record["region_ids"]]
        sample = RefSample(
            id=record["id"],
            image=image.path,
            sentence=record["sentence"],
            mask=np.logical_or.reduce([r.mask for r in targets]),
            split=record["split"],
            source="human-dev",
            image_id=f"{record['dataset']}/{record['image_id']}",
            meta=SampleMeta(
                kind=_kind(targets, image.regions),
                region_ids=record["region_ids"],
                extra={"dataset": record["dataset"], "categories": sorted({r.category for r in targets})},
            ),
        )
        items.append(HumanDevItem(sample, image.regions, record["region_ids"]))
    return items


def materialise(items: Sequence[HumanDevItem], out: str | Path) -> Path:
    """Write ``out/refs.jsonl`` + ``out/masks/*.png`` (images referenced in place); returns the manifest."""
    from refseg.data.manifest import write_manifest

    return write_manifest([item.sample for item in items], out)


def category_oracle(item: HumanDevItem) -> np.ndarray:
    """Every region of the target's category (or categories): perfect recognition, no reasoning."""
    categories = {r.category_id for r in item.regions if r.id in item.target_ids}
    return np.logical_or.reduce([r.mask for r in item.regions if r.category_id in categories])


def whole_image(item: HumanDevItem) -> np.ndarray:
    """The whole photo as the prediction."""
    return np.ones(item.sample.mask.shape, dtype=bool)


def score(items: Sequence[HumanDevItem], predictions: Sequence[np.ndarray]) -> dict:
    """Score boolean predictions (original size) → :func:`by_kind` summaries."""
    from refseg.engine.metrics import MetricAccumulator

    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} items but {len(predictions)} predictions")
    accumulator = MetricAccumulator()
    for item, prediction in zip(items, predictions):
        accumulator.add(prediction, item.sample.mask, item.sample.sentence, item.sample.id)
    return by_kind(items, accumulator)


def by_kind(items: Sequence[HumanDevItem], accumulator) -> dict:
    """Metrics summary overall and per ``kind`` ({"all": summary, "unique": summary, ...}) from a
    filled :class:`~refseg.engine.metrics.MetricAccumulator` (e.g. the evaluator's)."""
    from refseg.engine.metrics import MetricAccumulator

    kinds = {item.sample.id: item.kind for item in items}
    parts = {name: MetricAccumulator(accumulator.length_edges, accumulator.thresholds) for name in KINDS}
    for record in accumulator.per_sample():
        parts[kinds[record["id"]]].add_counts(
            record["intersection"], record["union"], record["has_target"], record["n_words"], record["id"]
        )
    return {"all": accumulator.summary(), **{name: acc.summary() for name, acc in parts.items() if len(acc)}}


def reference_scores(items: Sequence[HumanDevItem]) -> dict[str, dict]:
    """Scores of the two data-only references: whole image and category oracle."""
    return {
        "whole_image": score(items, [whole_image(item) for item in items]),
        "category_oracle": score(items, [category_oracle(item) for item in items]),
    }


def format_scores(table: dict[str, dict]) -> str:
    """A markdown table: one row per method, mean / overall IoU overall and mean IoU per kind."""
    kinds = [k for k in KINDS if any(k in scores for scores in table.values())]
    header = ["method", "n", "mean IoU", "overall IoU", "prec@0.5", *[f"mIoU {k}" for k in kinds]]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, scores in table.items():
        overall = scores["all"]
        cells = [method, str(overall["n"]), _pct(overall["mean_iou"]), _pct(overall["overall_iou"]), _pct(overall["prec@0.5"])]
        cells += [f"{_pct(scores[k]['mean_iou'])} (n={scores[k]['n']})" if k in scores else "–" for k in kinds]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT, help="the shared data folder")
    parser.add_argument("--out", type=Path, help="write OUT/refs.jsonl and mask PNGs")
    parser.add_argument("--references", action="store_true", help="print whole-image and category-oracle scores")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: shared data folder not found at {args.data}")
        return 0
    if args.out is None and not args.references:
        parser.error("nothing to do: give --out and/or --references")
    items = load_human_dev(args.data)
    if args.out is not None:
        print(materialise(items, args.out))
    if args.references:
        print(format_scores(reference_scores(items)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
