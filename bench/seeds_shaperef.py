"""Seeds comparison on ShapeRef: the seven models (RMI's R+LSTM baseline included) trained with
the same data, seeds and budget.

    python -m bench.seeds_shaperef                      # full run, writes docs/results.md
    python -m bench.seeds_shaperef --seeds 0 1          # two seeds: means and the spread of mean IoU
    python -m bench.seeds_shaperef --smoke              # CI: the whole pipeline on a tiny setting

Every model gets the same ShapeRef data (``--n`` samples, ``--per-scene`` expressions per scene, at
``--size`` px, scenes split 8:1:1 train/val/test), the same frozen EfficientNet-Lite0 backbone at
output stride 8 whose features are computed once and shared by all runs (the models that read only
its last tap read the hypercolumn: head + stride-8 tap), the same optimiser (Adam, poly schedule),
batch size, number of epochs and seed. Each model keeps its own heads and text encoder at its default
(CPU-sized) width. The last checkpoint is scored on the test split with the metrics of
``refseg eval``; the tables go into docs/results.md between the ``seeds_shaperef`` markers:
(a) prec@0.5-0.9, overall and mean IoU (shaped like paper 1 Table 1) and (b) IoU by expression
length with RMI's relative gain over R+LSTM (shaped like paper 3 Tables 2-5).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench import REPO
from bench.doc_tables import command_line, write_block
from refseg.config import from_dict
from refseg.data.dataset import RefDataset
from refseg.data.shapes import generate_samples
from refseg.engine.checkpoint import load_model
from refseg.engine.evaluator import evaluate, evaluation_segmenter
from refseg.engine.feature_cache import FeatureCache
from refseg.engine.trainer import Trainer
from refseg.models import build_model, list_models, model_class
from refseg.models.text import split_words

MODELS = ("whole_image", "per_word", "lstm_cnn", "lstm_cnn_plus", "rmi_baseline", "rmi", "step")
LABELS = {
    "whole_image": "whole image", "per_word": "per-word (average)", "lstm_cnn": "LSTM-CNN",
    "lstm_cnn_plus": "LSTM-CNN+", "rmi_baseline": "R+LSTM", "rmi": "RMI", "step": "STEP",
}
#: Text options shared by the models that take them: GloVe-initialised embeddings over the
#: training vocabulary (LSTM-CNN+ keeps its paper-2 default: fixed GloVe, full vocabulary).
TEXT = {"vocab": "train", "embedding": "glove"}
#: The models that read only the last tap read the hypercolumn (head + stride-8 tap): the dilated
#: head alone has lost the colour of ShapeRef's shapes (docs/results.md, "Setting"). STEP reads every tap.
LAST = {"output_stride": 8, "backbone_last": "hypercolumn"}
MODEL_OPTIONS = {
    "whole_image": {},
    "per_word": {"words": "train", "num_words": 500, "combine": "average", **LAST},
    "lstm_cnn": {**TEXT, **LAST},
    "lstm_cnn_plus": LAST,
    "rmi_baseline": {**TEXT, **LAST},
    "rmi": {**TEXT, **LAST},
    "step": {**TEXT, "output_stride": 8},
}


def run_config(args: argparse.Namespace, model: str, seed: int, out: Path) -> dict:
    options = {"size": args.size, "per_scene": args.per_scene}
    shaperef = {"kind": "shaperef", "n": args.n, "seed": args.data_seed, "options": options}
    return {
        "model": {"name": model, "kwargs": MODEL_OPTIONS[model]},
        "data": {
            "image_size": args.size,
            "train": [{**shaperef, "split": "train"}],
            "val": [],  # the test split is scored after training; no validation during the run
            "augment": {"hflip": 0.5},
            "cache_features": True,
        },
        "train": {
            "optimizer": "adam", "lr": args.lr, "weight_decay": 5e-4, "schedule": "poly",
            "epochs": args.epochs if model != "whole_image" else 1, "batch_size": args.batch_size,
            "seed": seed, "eval_every": 0, "progress": args.progress, "out_dir": str(out),
        },
    }


def length_edges(samples) -> tuple[int, ...]:
    """Upper edges of 4 buckets of roughly equal size (as paper 3 builds its Tables 2-5)."""
    lengths = np.array([len(split_words(s.sentence)) for s in samples])
    edges = sorted({int(np.quantile(lengths, q)) for q in (0.25, 0.5, 0.75)})
    return tuple(e for e in edges if e < lengths.max()) or (int(lengths.min()),)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=9600, help="ShapeRef samples in all splits (8:1:1 by scene).")
    parser.add_argument("--per-scene", type=int, default=8,
                        help="Expressions per scene (more: fewer images, so less feature-cache memory).")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Training seeds (results averaged).")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "seeds_shaperef")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "results.md",
                        help="Markdown file whose seeds_shaperef section is replaced.")
    parser.add_argument("--no-docs", action="store_true", help="Only print the tables and write results.json.")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (more than the free cores makes training many times slower).")
    parser.add_argument("--progress", action="store_true", help="Show the training progress bars.")
    parser.add_argument("--resume", action="store_true",
                        help="Reuse the results of models already trained with the same settings.")
    parser.add_argument("--smoke", action="store_true",
                        help="Every model and two seeds through the whole pipeline on 60 samples at 64 px, "
                             "1 epoch (replaces --n, --per-scene, --size, --epochs, --batch-size, --seeds); writes no docs.")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.per_scene, args.size, args.epochs, args.batch_size, args.seeds = 60, 4, 64, 1, 8, [0, 1]
        args.no_docs, args.out = True, args.out / "smoke"
    missing = sorted(set(args.models) - set(list_models()))
    if missing:
        parser.error(f"models not registered: {', '.join(missing)}")
    torch.set_num_threads(args.threads)
    from rich.console import Console

    console = Console(stderr=True)
    generated = generate_samples(args.n, args.data_seed, size=args.size, per_scene=args.per_scene)
    train_samples = [s for s in generated if s.split == "train"]
    test = [s for s in generated if s.split == "test"]
    edges = length_edges(test)
    caches: dict[object, FeatureCache] = {}  # models with the same encode_image share their features
    results: dict[str, dict] = {}
    started = time.time()
    for model_name in args.models:
        per_seed = []
        for seed in args.seeds:
            out = args.out / f"{model_name}-seed{seed}"
            config_dict = run_config(args, model_name, seed, out)
            done = out / "result.json"
            reuse = args.resume and done.is_file() and json.loads(done.read_text())["config"] == config_dict
            config = from_dict(config_dict)
            key = model_class(model_name).encode_image
            if reuse:
                console.print(f"{model_name} seed {seed}: reusing the run in {out}")
            else:
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                if key not in caches:  # computed once per distinct encode_image, outside the timed training
                    caches[key] = prefilled_cache(config, train_samples, test)
                t0 = time.time()
                Trainer(config, console=console, feature_cache=caches[key]).run()
                done.write_text(json.dumps({"config": config_dict, "train_s": time.time() - t0}))
            train_s = json.loads(done.read_text())["train_s"]
            model, _ = load_model(out / "last.safetensors")
            cache = caches.setdefault(key, FeatureCache(torch.float16))
            cache.fill(model, RefDataset(test, args.size, cached=True), torch.device("cpu"))
            accumulator = evaluate(evaluation_segmenter(model, args.size), test, feature_cache=cache, length_edges=edges)
            summary = accumulator.summary()
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            per_seed.append({"summary": summary, "by_kind": iou_by_kind(accumulator, test),
                             "train_s": train_s, "params": n_params, "seed": seed})
            console.print(
                f"{model_name} seed {seed}: mean IoU {100 * summary['mean_iou']:.2f}, overall IoU "
                f"{100 * summary['overall_iou']:.2f} ({train_s / 60:.1f} min, {n_params:,} trainable parameters)"
            )
        results[model_name] = average(per_seed)
        still_needed = {model_class(m).encode_image for m in args.models[args.models.index(model_name) + 1 :]}
        for key in [k for k in caches if k not in still_needed]:
            del caches[key]  # free the memory of features no later model uses
    total_min = (time.time() - started) / 60
    meta = {
        "n": args.n, "per_scene": args.per_scene, "size": args.size, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr,
        "seeds": args.seeds, "data_seed": args.data_seed, "n_test": len(test), "length_edges": list(edges),
        "n_train": len(train_samples),
        "minutes": round(total_min, 1), "command": command_line("seeds_shaperef", [a for a in sys.argv[1:] if a != "--resume"]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    markdown = render(results, meta)
    print(markdown)
    if not args.no_docs:
        write_block(args.docs, "seeds_shaperef", markdown, append=True)
        console.print(f"updated {args.docs}")


def prefilled_cache(config, train_samples, test_samples) -> FeatureCache:
    """Backbone features of every training view (plain and flipped) and test image, in float16."""
    cache = FeatureCache(torch.float16)
    model = build_model(config, [s.sentence for s in train_samples])
    size = config.data.image_size
    cache.fill(model, RefDataset(train_samples, size, config.data.augment, cached=True), torch.device("cpu"))
    cache.fill(model, RefDataset(test_samples, size, cached=True), torch.device("cpu"))
    return cache


def iou_by_kind(accumulator, samples) -> dict[str, dict]:
    """Mean IoU and count per ShapeRef expression kind (attribute, spatial, relation, multi, …)."""
    kinds = {s.id: s.meta.kind or "?" for s in samples}
    groups: dict[str, list[float]] = {}
    for record in accumulator.per_sample():
        groups.setdefault(kinds[record["id"]], []).append(record["iou"])
    return {kind: {"mean_iou": float(np.mean(v)), "n": len(v)} for kind, v in sorted(groups.items())}


def average(runs: list[dict]) -> dict:
    """Mean over seeds of every metric (and the spread of mean IoU when there are several)."""
    summaries = [r["summary"] for r in runs]

    def mean_of(items: list[dict]) -> dict:
        keys = [k for k, v in items[0].items() if isinstance(v, (int, float)) or v is None]
        return {k: (None if any(i[k] is None for i in items) else float(np.mean([i[k] for i in items]))) for k in keys}

    merged = mean_of(summaries)
    merged["by_length"] = {b: mean_of([s["by_length"][b] for s in summaries]) for b in summaries[0]["by_length"]}
    merged["by_kind"] = {k: mean_of([r["by_kind"][k] for r in runs]) for k in runs[0]["by_kind"]}
    merged["mean_iou_std"] = float(np.std([s["mean_iou"] for s in summaries]))
    merged["train_min"] = float(np.mean([r["train_s"] for r in runs]) / 60)
    merged["params"] = runs[0]["params"]
    return merged


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def render(results: dict[str, dict], meta: dict) -> str:
    prec = ["prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8", "prec@0.9"]
    seeds = len(meta["seeds"])
    lines = [
        f"Generated by `{meta['command']}` ({sum(r['train_min'] for r in results.values()):.0f} min of "
        f"training in all, on this machine's CPU; feature caching and scoring not included). ShapeRef "
        f"{meta['size']} px, {meta['n_train']} training / {meta['n_test']} test samples (data seed "
        f"{meta['data_seed']}), {meta['epochs']} epochs, batch {meta['batch_size']}, Adam lr {meta['lr']:g} "
        f"with poly decay, training seed(s) {', '.join(map(str, meta['seeds']))}"
        + (" (numbers are means over the seeds)" if seeds > 1 else "") + ".",
        "",
        "**(a) Test split, shaped like paper 1 Table 1** (percent)",
        "",
        "| model | " + " | ".join(prec) + " | overall IoU | mean IoU |"
        + (" mean IoU std |" if seeds > 1 else "") + " trainable params | train min |",
        "|---|" + "---:|" * (len(prec) + 4 + (seeds > 1)),
    ]
    for name, r in results.items():
        row = [LABELS[name], *[pct(r[k]) for k in prec], pct(r["overall_iou"]), pct(r["mean_iou"])]
        if seeds > 1:
            row.append(pct(r["mean_iou_std"]))
        row += [f"{r['params']:,}", f"{r['train_min']:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    buckets = list(next(iter(results.values()))["by_length"])
    # paper 3 compares RMI with its own R+LSTM baseline; without it, with paper 1's LSTM-CNN
    baseline = next((name for name in ("rmi_baseline", "lstm_cnn") if name in results), None)
    lines += breakdown_table(
        results, "by_length", "overall_iou",
        "**(b) Overall IoU by expression length (words), shaped like paper 3 Tables 2-5** (percent; "
        f"buckets of roughly equal size on the test split; the gain row is RMI's relative gain over {LABELS[baseline]})"
        if baseline else "**(b) Overall IoU by expression length (words)** (percent)",
    )
    if "rmi" in results and baseline:
        gains = []
        for b in buckets:
            base, ours = results[baseline]["by_length"][b]["overall_iou"], results["rmi"]["by_length"][b]["overall_iou"]
            gains.append("–" if not base or ours is None else f"{100 * (ours - base) / base:+.1f} %")
        lines.append(f"| RMI relative gain over {LABELS[baseline]} | " + " | ".join(gains) + " |")
    lines += breakdown_table(results, "by_length", "mean_iou", "Mean IoU by length (same buckets):")
    lines += breakdown_table(
        results, "by_kind", "mean_iou",
        "**(c) Mean IoU by ShapeRef expression kind** (percent; `none` = no-target expressions, where "
        "IoU is 1 for an empty prediction)",
    )
    return "\n".join(lines) + "\n"


def breakdown_table(results: dict[str, dict], group: str, metric: str, title: str) -> list[str]:
    """Markdown lines: ``title``, then one row per model of ``metric`` in each part of ``group``
    (``by_length`` buckets or ``by_kind`` kinds), with each part's sample count in the header."""
    parts = next(iter(results.values()))[group]
    lines = [
        "",
        title,
        "",
        "| model | " + " | ".join(f"{part} (n={int(parts[part]['n'])})" for part in parts) + " |",
        "|---|" + "---:|" * len(parts),
    ]
    for name, r in results.items():
        lines.append("| " + " | ".join([LABELS[name], *[pct(r[group][part][metric]) for part in parts]]) + " |")
    return lines


if __name__ == "__main__":
    main()
