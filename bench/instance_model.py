"""Measuring the instance-aware model (``instance_ref``): where it fails, what each cue adds, how good
its masks are. Run from the repository root::

    python -m bench.instance_model errors RUN [--sheet DIR]   # failure step per human-dev expression
    python -m bench.instance_model cues RUN                   # retrain the scorer without each cue group
    python -m bench.instance_model masks RUN                  # mask IoU given true boxes / detections

``errors`` sorts every human-dev expression whose mask has IoU < 0.5 into the step that failed:
*detector missed* (no candidate box overlaps the target's box at IoU ≥ 0.5), *mask poor* (a box was
found but no candidate mask reaches IoU 0.5), *wrong category* (the chosen candidate is not of the
target's category), *wrong instance* (it is, but another candidate was the target), *stuff* (a stuff
target missed) and *set* (several targets). ``--sheet DIR`` writes a picture sheet of 20 failures
(expression, chosen candidate in red, target in green) to DIR — outside the repository: it shows
the shared photos, which are never committed.
``cues`` trains the scorer again on the run's training photos with one cue group switched off at a
time and scores synthesized val and the human dev set.
"""
from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench import REPO
from bench.bundled_model import checkpoint_of
from bench.human_dev.build import DEFAULT_DATA_ROOT, HumanDevItem, by_kind, load_human_dev

INSTANCE_CONFIG = REPO / "configs" / "instance_ref.yaml"
FAILURES = ("detector missed", "mask poor", "wrong category", "wrong instance", "stuff", "set")


def _box(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float) if len(xs) else None


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def failure_step(item: HumanDevItem, prediction) -> str | None:
    """The step that failed for one expression (None when its mask has IoU ≥ 0.5)."""
    from refseg.engine.metrics import iou

    target = item.sample.mask
    if iou(prediction.mask, target) >= 0.5:
        return None
    if item.kind in ("stuff", "set"):
        return item.kind
    from refseg.models.expression import label_names
    from refseg.models.instance_ref import NUM_THINGS

    things = set(label_names()[:NUM_THINGS])
    candidates = prediction.candidates
    target_box = _box(target)
    if not any(_box_iou(np.array(c.box), target_box) >= 0.5 for c in candidates if c.label in things):
        return "detector missed"
    if max((iou(c.mask, target) for c in candidates), default=0.0) < 0.5:
        return "mask poor"
    from refseg.labels import clean_category

    chosen = [c for c in candidates if c.chosen]
    wanted = {clean_category(c) for c in item.sample.meta.extra["categories"]}
    return "wrong instance" if chosen and chosen[0].label in wanted else "wrong category"


def predict_all(segmenter, items: Sequence[HumanDevItem]) -> list:
    """One prediction per item, each photo encoded once."""
    from refseg.data.dataset import image_key

    by_photo: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_photo.setdefault(image_key(item.sample), []).append(index)
    out: dict[int, object] = {}
    for indices in by_photo.values():
        predictions = segmenter.predict(items[indices[0]].sample.image, [items[i].sample.sentence for i in indices])
        out.update(zip(indices, predictions, strict=True))
    return [out[i] for i in range(len(items))]


def errors(run: str | Path, items: Sequence[HumanDevItem], sheet: Path | None = None) -> str:
    """Markdown table: failures per step, overall and per kind (and the picture sheet)."""
    from refseg.api import Segmenter

    predictions = predict_all(Segmenter.from_pretrained(checkpoint_of(run)), items)
    steps = [failure_step(item, p) for item, p in zip(items, predictions)]
    counts = Counter(s for s in steps if s is not None)
    rows = ["| step that failed | expressions | share of all |", "|---|---|---|"]
    rows += [f"| {name} | {counts[name]} | {100 * counts[name] / len(items):.1f} % |" for name in FAILURES]
    rows.append(f"| (right: IoU ≥ 0.5) | {steps.count(None)} | {100 * steps.count(None) / len(items):.1f} % |")
    if sheet is not None:
        failed = [(item, p, s) for item, p, s in zip(items, predictions, steps) if s is not None][:20]
        print(write_sheet(failed, sheet))
    return "\n".join(rows)


def write_sheet(failed: list, folder: Path) -> Path:
    """A PNG grid of failures: the chosen mask in red, the target outlined in green, the step and text."""
    from PIL import Image, ImageDraw

    from refseg import viz
    from refseg.io import save_png

    tiles = []
    for item, prediction, step in failed:
        rgb = item.sample.load_image()
        picture = viz.overlay(rgb, prediction.mask, labels=[f"{step}: {item.sample.sentence}"])
        image = Image.fromarray(picture).convert("RGB")
        box = _box(item.sample.mask)
        if box is not None:
            ImageDraw.Draw(image).rectangle(box.tolist(), outline=(0, 220, 0), width=3)
        image.thumbnail((320, 320))
        tiles.append(image)
    columns = 4
    sheet = Image.new("RGB", (columns * 320, -(-len(tiles) // columns) * 320), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * 320, (k // columns) * 320))
    folder.mkdir(parents=True, exist_ok=True)
    return save_png(folder / "failures.png", np.asarray(sheet))


def cues(run: str | Path, items: Sequence[HumanDevItem], config: str | Path = INSTANCE_CONFIG) -> str:
    """Markdown table: the scorer retrained with every cue group, then without each one (the heads and
    the candidates stay those of the run, so each row is one scorer training and two cached evaluations)."""
    import torch

    from refseg.config import load_config
    from refseg.data.dataset import RefDataset
    from refseg.data.sources import load_samples
    from refseg.engine.feature_cache import FeatureCache
    from refseg.engine.checkpoint import load_model
    from refseg.engine.evaluator import evaluate, evaluation_segmenter
    from refseg.engine.instance_training import photo_views, scorer_examples, train_scorer
    from refseg.models.candidate_cues import CUE_GROUPS, CUE_NAMES

    cfg = load_config(config)
    model, meta = load_model(checkpoint_of(run))
    size = int(meta.get("image_size", cfg.data.image_size))
    packs, examples = scorer_examples(model, photo_views(model, load_samples(cfg, "train"), size, print), print)
    sets = {"synth val": load_samples(cfg, "val"), "human": [i.sample for i in items]}
    cache = FeatureCache(torch.float32)
    for samples in sets.values():
        cache.fill(model, RefDataset(samples, size, cached=True), torch.device("cpu"))
    rows = ["| cues | synth val mIoU | human mIoU | human prec@0.5 |", "|---|---|---|---|"]
    for dropped in (None, *CUE_GROUPS):
        torch.manual_seed(int(cfg.train.seed))
        model.reset_scorer()
        model.cue_mask.copy_(torch.tensor([0.0 if dropped and n in CUE_GROUPS[dropped] else 1.0 for n in CUE_NAMES]))
        rng = np.random.default_rng(int(cfg.train.seed))
        train_scorer(model, packs, examples, cfg.train.stages.get("scorer", 1500), cfg.train.lr, rng, log=lambda _: None)
        model.eval()
        segmenter = evaluation_segmenter(model, size)
        scores = {name: evaluate(segmenter, samples, feature_cache=cache) for name, samples in sets.items()}
        synth, human = scores["synth val"].summary(), by_kind(items, scores["human"])["all"]
        name = "all" if dropped is None else f"without {dropped}"
        rows.append(f"| {name} | {100 * synth['mean_iou']:.1f} | {100 * human['mean_iou']:.1f} | {100 * human['prec@0.5']:.1f} |")
    return "\n".join(rows)


def masks(run: str | Path, config: str | Path = INSTANCE_CONFIG) -> str:
    """Mask IoU of the mask head on val thing regions: given the true box, and given the best detection."""
    import torch

    from refseg.config import load_config
    from refseg.data.sources import load_samples
    from refseg.engine.checkpoint import load_model
    from refseg.engine.instance_training import mask_quality

    cfg = load_config(config)
    model, meta = load_model(checkpoint_of(run))
    size = int(meta.get("image_size", cfg.data.image_size))
    with torch.inference_mode():
        scores = mask_quality(model, load_samples(cfg, "val"), size)
    rows = ["| boxes | thing regions | mean mask IoU | box as mask |", "|---|---|---|---|"]
    for name, (n, mask_iou, box_iou) in scores.items():
        rows.append(f"| {name} | {n} | {100 * mask_iou:.1f} | {100 * box_iou:.1f} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("errors", "cues", "masks"))
    parser.add_argument("run", help="run folder or checkpoint of an instance_ref model")
    parser.add_argument("--sheet", type=Path, help="errors: also write DIR/failures.png (keep it out of git)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: shared data folder not found at {args.data}")
        return 0
    if args.command == "masks":
        print(masks(args.run))
        return 0
    items = load_human_dev(args.data)
    print(errors(args.run, items, args.sheet) if args.command == "errors" else cues(args.run, items))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
