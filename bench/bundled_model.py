"""Choosing the bundled default model: training runs compared on the held-out synthesized val
split AND on the human-written dev set (bench/human_dev). The chosen run is then shipped with
``refseg release RUN --name default`` (docs/train.md, "Shipping a model").

Run from the repository root::

    refseg train configs/bundled.yaml                              # the one documented training
    python -m bench.bundled_model sweep configs/bundled_levers.yaml   # lever runs, one shared feature cache
    python -m bench.bundled_model references                       # whole image, category oracle
    python -m bench.bundled_model compare runs/bundled runs/bundled_lstm_cnn ...
    python -m bench.bundled_model thresholds runs/bundled          # synthesized-val IoU per decision threshold
    python -m bench.bundled_model positions runs/bundled           # does the run read "left" / "right"?
    python -m bench.bundled_model instances runs/bundled           # the instance named, or its whole category?

``compare`` prints a markdown table (one row per run): the best synthesized-val mean / overall
IoU recorded by the trainer, and the human-dev scores of that best checkpoint, overall and per
expression kind (unique / disambiguate / stuff / set). ``--crf`` adds DenseCRF-refined rows.
``thresholds`` scores a run on the synthesized val split of its training config at several decision
thresholds (``refseg release`` chooses the shipped one there too), never on the human dev set.
``positions`` scores the expressions with a side word ("left", "rightmost", ...) as written and mirrored (left ↔ right,
the image unchanged): a model that reads the side words loses IoU on the mirrored text.
``instances`` asks, on the human-dev expressions that pick one object among several of its category,
whether the mask finds that object or every region of its category, and counts empty masks.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench import REPO
from bench.human_dev.build import (
    DEFAULT_DATA_ROOT,
    KINDS,
    HumanDevItem,
    by_kind,
    category_oracle,
    load_human_dev,
    reference_scores,
)

BUNDLED_CONFIG = REPO / "configs" / "bundled.yaml"


def checkpoint_of(run: str | Path) -> Path:
    """A run folder (its best checkpoint, else the last) or a checkpoint file."""
    from refseg.engine.checkpoint import resolve_model_path

    return resolve_model_path(Path(run))


def human_dev_scores(
    checkpoint: str | Path,
    items: Sequence[HumanDevItem],
    crf: bool = False,
    threshold: float | None = None,
    image_size: int | None = None,
) -> dict:
    """Human-dev summaries (overall and per kind) of one checkpoint, at its own canvas size and
    decision threshold unless ``image_size`` / ``threshold`` are given."""
    from refseg.engine.evaluator import evaluate, load_for_evaluation

    segmenter = load_for_evaluation(checkpoint, canvas=image_size)
    accumulator = evaluate(segmenter, [item.sample for item in items], threshold=threshold, crf=crf)
    return by_kind(items, accumulator)


def synthesized_val(checkpoint: str | Path) -> dict:
    """The synthesized-val metrics stored with a checkpoint: by the trainer (``metrics``) or by
    ``refseg release`` (``synthesized_val``); empty if none."""
    from refseg.engine.checkpoint import read_header

    meta = read_header(checkpoint)["meta"]
    return meta.get("metrics") or meta.get("synthesized_val") or {}


def compare(runs: Sequence[str | Path], items: Sequence[HumanDevItem], crf: bool = False) -> str:
    """Markdown table: synthesized val and human dev for each run (plus DenseCRF rows with ``crf``)."""
    header = ["run", "val mIoU", "val oIoU", "human mIoU", "human oIoU", "human prec@0.5",
              *[f"human {k}" for k in KINDS]]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        checkpoint = checkpoint_of(run)
        val = synthesized_val(checkpoint)
        for refine in (False, True) if crf else (False,):
            human = human_dev_scores(checkpoint, items, crf=refine)
            name = f"{Path(run).name}{' + CRF' if refine else ''}"
            rows.append("| " + " | ".join(_row(name, val, human)) + " |")
    return "\n".join(rows)


def _row(name: str, val: dict, human: dict) -> list[str]:
    overall = human["all"]
    return [
        name, _pct(val.get("mean_iou")), _pct(val.get("overall_iou")),
        _pct(overall["mean_iou"]), _pct(overall["overall_iou"]), _pct(overall["prec@0.5"]),
        *[_pct(human[k]["mean_iou"]) if k in human else "–" for k in KINDS],
    ]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def threshold_sweep(
    run: str | Path,
    thresholds: Sequence[float],
    sizes: Sequence[int] = (),
    config: str | Path = BUNDLED_CONFIG,
) -> str:
    """Markdown table: synthesized-val mean / overall IoU of a run at each inference canvas size
    (default: its training size) and decision threshold (the val split of ``config``).

    Backbone features are computed once per size, for fine-tuned backbones too: the weights are
    fixed here. The models are fully convolutional with coordinates in [-1, 1], so a canvas other
    than the training one is a valid inference setting to choose."""
    from refseg.config import load_config
    from refseg.data.sources import load_samples
    from refseg.engine.release import threshold_summaries
    from refseg.runtime import load_pretrained

    model, card = load_pretrained(checkpoint_of(run))
    samples = load_samples(load_config(config), "val")
    rows = ["| canvas | threshold | synth val mIoU | synth val oIoU | prec@0.5 |", "|---|---|---|---|---|"]
    for size in sizes or [card.canvas]:
        for threshold, summary in threshold_summaries(model, samples, size, thresholds).items():
            rows.append(
                f"| {size} | {threshold:g} | {_pct(summary['mean_iou'])} | {_pct(summary['overall_iou'])} "
                f"| {_pct(summary['prec@0.5'])} |"
            )
    return "\n".join(rows)


def position_gap(checkpoint: str | Path, sample_sets: Sequence[Sequence]) -> list[tuple[int, float | None, float | None]]:
    """Per sample set: (n, mean IoU as written, mean IoU with left ↔ right swapped) over its samples
    with a target whose expression has a side word, at the checkpoint's canvas and threshold.

    The model is loaded once, and each photo goes through the backbone once for both wordings
    (a feature cache, as in :func:`threshold_sweep`: the weights are fixed here)."""
    from dataclasses import replace

    import torch

    from refseg.data.augment import mirror_text
    from refseg.data.dataset import RefDataset
    from refseg.engine.evaluator import evaluate, load_for_evaluation
    from refseg.engine.feature_cache import FeatureCache

    segmenter = load_for_evaluation(checkpoint)
    model, size = segmenter.model, segmenter.canvas
    gaps = []
    for samples in sample_sets:
        sided = [s for s in samples if s.has_target and mirror_text(s.sentence) != s.sentence]
        if not sided:
            gaps.append((0, None, None))
            continue
        cache = FeatureCache(torch.float32)
        cache.fill(model, RefDataset(sided, size, cached=True), torch.device("cpu"))
        written, mirrored = (
            evaluate(segmenter, group, batch_size=32, feature_cache=cache).summary()["mean_iou"]
            for group in (sided, [replace(s, sentence=mirror_text(s.sentence)) for s in sided])
        )
        gaps.append((len(sided), written, mirrored))
    return gaps


def positions(
    runs: Sequence[str | Path],
    items: Sequence[HumanDevItem] | None,
    config: str | Path = BUNDLED_CONFIG,
) -> str:
    """Markdown table: per run, mean IoU on side-word expressions as written and mirrored, on
    synthesized val (the val split of ``config``) and on the human dev set (when ``items``)."""
    from refseg.config import load_config
    from refseg.data.sources import load_samples

    sets = {"synth val": load_samples(load_config(config), "val")}
    if items is not None:
        sets["human dev"] = [item.sample for item in items]
    header = ["run"] + [f"{name} {column}" for name in sets for column in ("n", "as written", "mirrored")]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [Path(run).name]
        for n, written, mirrored in position_gap(checkpoint_of(run), list(sets.values())):
            cells += [str(n), _pct(written), _pct(mirrored)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def instance_focus(items: Sequence[HumanDevItem], masks: Sequence[np.ndarray]) -> dict[str, float]:
    """Where predicted ``masks`` (one per item, original size) land on the disambiguation items:
    mean IoU with the target and with every region of the target's category, mean mask and target
    area (fractions of the photo); and the number of empty masks over all items."""
    from refseg.engine.metrics import iou

    picked = [(item, mask) for item, mask in zip(items, masks, strict=True) if item.kind == "disambiguate"]
    columns = np.array(
        [(iou(m, i.sample.mask), iou(m, category_oracle(i)), m.mean(), i.sample.mask.mean()) for i, m in picked]
    ).reshape(-1, 4)
    target, category, mask_area, target_area = columns.mean(axis=0) if len(picked) else [float("nan")] * 4
    return {
        "n": len(picked),
        "iou_target": float(target),
        "iou_category": float(category),
        "mask_area": float(mask_area),
        "target_area": float(target_area),
        "empty": sum(not mask.any() for mask in masks),
    }


def instances(runs: Sequence[str | Path], items: Sequence[HumanDevItem]) -> str:
    """Markdown table of :func:`instance_focus` per run, each at its own canvas and threshold."""
    from refseg.api import Segmenter
    from refseg.data.dataset import image_key

    rows = [
        "| run | disambiguation n | IoU with target | IoU with its category | mask area | target area | empty masks (all) |",
        "|---|---|---|---|---|---|---|",
    ]
    by_photo: dict[str, list[int]] = {}  # each photo is encoded once for all its expressions
    for index, item in enumerate(items):
        by_photo.setdefault(image_key(item.sample), []).append(index)
    for run in runs:
        segmenter = Segmenter.from_pretrained(checkpoint_of(run))
        masks: dict[int, np.ndarray] = {}
        for indices in by_photo.values():
            texts = [items[i].sample.sentence for i in indices]
            predictions = segmenter.predict(items[indices[0]].sample.image, texts)
            masks.update((i, prediction.mask) for i, prediction in zip(indices, predictions, strict=True))
        focus = instance_focus(items, [masks[i] for i in range(len(items))])
        cells = [Path(run).name, str(focus["n"])]
        cells += [_pct(focus[key]) for key in ("iou_target", "iou_category", "mask_area", "target_area")]
        rows.append("| " + " | ".join([*cells, f"{focus['empty']} of {len(items)}"]) + " |")
    return "\n".join(rows)


def sweep(plan_path: str | Path, only: Sequence[str] = ()) -> list[Path]:
    """Train every variant of a lever plan (YAML) in this process; returns the run folders.

    The plan names a ``base`` config (relative to the plan file), optional plan-wide ``overrides``
    (``key=value``, applied first) and ``variants``, each a ``name``, an optional ``model`` mapping
    that replaces the base model, and its own ``overrides``.
    Runs whose frozen backbones give identical features (same backbone, output stride, last tap and
    image size) share one :class:`~refseg.engine.feature_cache.FeatureCache`, so EfficientNet features are
    computed once per photo view for the whole sweep instead of once per run.
    """
    import torch
    import yaml

    from refseg.config import ModelConfig, apply_override, load_config
    from refseg.engine.feature_cache import FeatureCache
    from refseg.engine.trainer import Trainer

    plan_path = Path(plan_path)
    plan = yaml.safe_load(plan_path.read_text(encoding="utf-8"))
    base = plan_path.parent / plan["base"]
    caches: dict[tuple, FeatureCache] = {}
    runs = []
    for variant in plan["variants"]:
        if only and variant["name"] not in only:
            continue
        config = load_config(base, [f"train.out_dir={Path(plan['out_dir']) / variant['name']}"])
        if "model" in variant:
            kwargs = dict(variant["model"])
            config.model = ModelConfig(name=kwargs.pop("name"), kwargs=kwargs)
        for item in [*plan.get("overrides", []), *variant.get("overrides", [])]:
            apply_override(config, item)
        key = _feature_key(config)
        if key not in caches:
            caches[key] = FeatureCache(getattr(torch, config.data.cache_dtype))
        print(f"== {variant['name']}: {config.model.name} {config.model.kwargs}", flush=True)
        runs.append(Trainer(config, feature_cache=caches[key]).run())
    return runs


def _feature_key(config) -> tuple:
    """What the cached backbone taps depend on: the frozen backbone as built, and the image size."""
    from refseg.models import create_model

    kwargs = {k: v for k, v in config.model.kwargs.items() if k not in ("vocab", "words")}  # text side only
    backbone = create_model(config.model.name, **kwargs).backbone
    return (backbone.name, backbone.output_stride, tuple(backbone.channels), config.data.image_size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare training runs for the bundled model.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT, help="the shared data folder")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("references", help="whole-image and category-oracle scores on the human dev set")
    compare_parser = commands.add_parser("compare", help="synthesized val + human dev table of runs")
    compare_parser.add_argument("runs", nargs="+", type=Path)
    compare_parser.add_argument("--crf", action="store_true", help="also score with DenseCRF refinement")
    sweep_parser = commands.add_parser("sweep", help="train the variants of a lever plan, one shared feature cache")
    sweep_parser.add_argument("plan", type=Path)
    sweep_parser.add_argument("--only", nargs="*", default=(), help="variant names to run (default: all)")
    thresholds_parser = commands.add_parser("thresholds", help="synthesized-val IoU of a run per decision threshold")
    thresholds_parser.add_argument("run", type=Path)
    thresholds_parser.add_argument("--values", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    thresholds_parser.add_argument("--sizes", type=int, nargs="+", default=(), help="inference canvas sizes (default: the training one)")
    thresholds_parser.add_argument("--config", type=Path, default=BUNDLED_CONFIG, help="the config whose val split is scored")
    positions_parser = commands.add_parser("positions", help="IoU on side-word expressions, as written and mirrored")
    positions_parser.add_argument("runs", nargs="+", type=Path)
    instances_parser = commands.add_parser("instances", help="human dev: the named instance or its whole category?")
    instances_parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)

    if args.command == "sweep":
        for run in sweep(args.plan, args.only):
            print(run)
        return 0
    if args.command == "thresholds":
        print(threshold_sweep(args.run, args.values, args.sizes, args.config))
        return 0
    items = load_human_dev(args.data) if args.data.is_dir() else None
    if args.command == "positions":
        print(positions(args.runs, items))
        return 0
    if items is None:
        print(f"skipped: shared data folder not found at {args.data}")
        return 0
    if args.command == "references":
        from bench.human_dev.build import format_scores

        print(format_scores(reference_scores(items)))
    elif args.command == "compare":
        print(compare(args.runs, items, crf=args.crf))
    else:
        print(instances(args.runs, items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
