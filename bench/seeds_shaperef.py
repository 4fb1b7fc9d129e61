"""Seeds comparison on ShapeRef: the seven models (RMI's R+LSTM baseline included) trained with
the same data, seeds and budget.

    python -m bench.seeds_shaperef                      # full run: two seeds, one process each; writes docs/results.md
    python -m bench.seeds_shaperef --seeds 0 --jobs 1   # one seed
    python -m bench.seeds_shaperef --smoke              # CI: the whole pipeline on a tiny setting
    python -m bench.seeds_shaperef --no-ablations       # the seven models only, not the claims' extra runs

Every model gets the same ShapeRef data (``--n`` samples, ``--per-scene`` expressions per scene, at
``--size`` px, scenes split 8:1:1 train/val/test), the same frozen EfficientNet-Lite0 backbone at
output stride 8 whose features are computed once and shared by all runs (the models that read only
its last tap read the hypercolumn: head + stride-8 tap), the same optimiser (Adam, poly schedule),
batch size, number of epochs and seeds. Each model keeps its own heads and text encoder at its default
(CPU-sized) width. The last checkpoint is scored on the test split with the metrics of
``refseg eval``; the tables go into docs/results.md between the ``seeds_shaperef`` markers:
(a) prec@0.5-0.9, overall and mean IoU (shaped like paper 1 Table 1) and (b) IoU by expression
length with RMI's relative gain over R+LSTM (shaped like paper 3 Tables 2-5); (c) mean IoU by
expression kind; (d) each paper's claim tested by its ablation (the extra runs of ``ABLATIONS``),
with a verdict.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench import REPO
from bench.doc_tables import command_line, write_block
from refseg.config import from_dict
from refseg.data.dataset import RefDataset
from refseg.data.shapes import DEFAULT_KIND_WEIGHTS, generate_samples
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
#: Every loss weighs foreground pixels 3 (paper 1 eq. 2; papers 3 and 4 weigh them 1): with their plain loss
#: RMI's probabilities stayed below 0.5 and STEP collapsed to empty masks (docs/results.md, "Setting").
FOREGROUND = {"pos_weight": 3.0}
MODEL_OPTIONS = {
    "whole_image": {},
    "per_word": {"words": "train", "num_words": 500, "combine": "average", **LAST},
    "lstm_cnn": {**TEXT, **LAST},
    "lstm_cnn_plus": LAST,
    "rmi_baseline": {**TEXT, **LAST, **FOREGROUND},
    "rmi": {**TEXT, **LAST, **FOREGROUND},
    "step": {**TEXT, "output_stride": 8, **FOREGROUND},
}
#: The extra runs the papers' claims need: label → (model, options that replace MODEL_OPTIONS').
ABLATIONS = {
    "lstm_cnn_low": ("lstm_cnn", {"stage": "low"}),  # paper 1 Table 1: the low-resolution stage alone
    # paper 2 §2.1, fixed GloVe against learned embeddings; both classify the category from h_T only, since
    # the zero-shot match of words to class names needs GloVe
    "lstm_cnn_plus_glove": ("lstm_cnn_plus", {"category_text": "learned"}),
    "lstm_cnn_plus_learned": ("lstm_cnn_plus", {"embedding": "learned", "vocab": "train", "category_text": "learned"}),
    "step_2_folds": ("step", {"folds": 2}),  # paper 4's ablation: 10 ConvGRU steps instead of 5
}
LABELS.update({"lstm_cnn_low": "LSTM-CNN, low-res stage", "lstm_cnn_plus_glove": "LSTM-CNN+, fixed GloVe, no zero-shot",
               "lstm_cnn_plus_learned": "LSTM-CNN+, learned embeddings, no zero-shot",
               "step_2_folds": "STEP, 2 folds"})
#: Words ShapeRef never generates, each standing for one it does (GloVe neighbours): the held-out-words test
#: set says them instead, so a model whose vocabulary is its training words reads them as unknown.
HELD_OUT_WORDS = {
    "red": "crimson", "orange": "tangerine", "yellow": "golden", "green": "emerald", "blue": "azure",
    "purple": "violet", "pink": "magenta", "white": "ivory", "circle": "disc", "square": "box", "triangle": "wedge",
}
#: A difference counts only from this much mean IoU on (and, with several seeds, when every seed of one
#: side beats every seed of the other).
MIN_DIFFERENCE = 0.01
#: Decision thresholds each run chooses from on the val split (a model whose probabilities stay below
#: 0.5 on small targets is not scored as if it predicted nothing).
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def run_config(args: argparse.Namespace, model: str, seed: int, out: Path, options: dict | None = None) -> dict:
    data_options = {"size": args.size, "per_scene": args.per_scene}
    if args.kinds:
        data_options["kinds"] = args.kinds
    shaperef = {"kind": "shaperef", "n": args.n, "seed": args.data_seed, "options": data_options}
    return {
        "model": {"name": model, "kwargs": {**MODEL_OPTIONS[model], **(options or {})}},
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="Training seeds (results averaged).")
    parser.add_argument("--jobs", type=int, default=2, help="Seeds trained at once, one process each.")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", choices=sorted(DEFAULT_KIND_WEIGHTS),
                        help="Only these expression kinds (a diagnosis: can the models learn them alone?).")
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
    parser.add_argument("--no-ablations", action="store_true",
                        help="Train the models only, not the extra runs that test the papers' claims.")
    parser.add_argument("--smoke", action="store_true",
                        help="Every model, ablation and two seeds through the whole pipeline on 60 samples at 64 px, "
                             "1 epoch (replaces --n, --per-scene, --size, --epochs, --batch-size, --seeds); writes no docs.")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.per_scene, args.size, args.epochs, args.batch_size, args.seeds = 60, 4, 64, 1, 8, [0, 1]
        args.no_docs, args.out = True, args.out / "smoke"
    if args.kinds:  # kept apart from the full run's checkpoints
        args.out = args.out / f"kinds-{'-'.join(sorted(args.kinds))}"
    missing = sorted(set(args.models) - set(list_models()))
    if missing:
        parser.error(f"models not registered: {', '.join(missing)}")
    generated = generate_samples(args.n, args.data_seed, size=args.size, per_scene=args.per_scene, kinds=args.kinds)
    splits = {split: [s for s in generated if s.split == split] for split in ("train", "val", "test")}
    edges = length_edges(splits["test"])
    held_out = held_out_words(splits["test"])
    runs = planned_runs(args.models, with_ablations=not args.no_ablations)
    started = time.time()
    jobs = max(1, min(args.jobs, len(args.seeds)))
    tasks = [(args, runs, seed, splits, held_out, edges) for seed in args.seeds]
    if jobs == 1:
        per_seed = [run_seed(*task) for task in tasks]
    else:  # one process per seed, each with its own feature caches
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            per_seed = list(pool.map(run_seed, *zip(*tasks)))
    results = {label: average([scores[label] for scores in per_seed]) for label, _, _ in runs}
    total_min = (time.time() - started) / 60
    meta = {
        "n": args.n, "per_scene": args.per_scene, "size": args.size, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr,
        "seeds": args.seeds, "data_seed": args.data_seed, "n_test": len(splits["test"]), "length_edges": list(edges),
        "n_train": len(splits["train"]), "n_held_out": len(held_out),
        "minutes": round(total_min, 1), "command": command_line("seeds_shaperef", [a for a in sys.argv[1:] if a != "--resume"]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    markdown = render(results, meta)
    print(markdown)
    if not args.no_docs:
        write_block(args.docs, "seeds_shaperef", markdown, append=True)
        print(f"updated {args.docs}", file=sys.stderr)


def run_seed(args: argparse.Namespace, runs: list, seed: int, splits: dict, held_out: list, edges) -> dict[str, dict]:
    """Train (or, with ``--resume``, reuse) and score every run of one training seed: label → scores.
    Backbone features are computed once per distinct ``encode_image`` and freed after its last run."""
    from rich.console import Console

    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    caches: dict[object, FeatureCache] = {}
    scores: dict[str, dict] = {}
    for position, (label, model_name, options) in enumerate(runs):
        key = model_class(model_name).encode_image
        out = args.out / f"{label}-seed{seed}"
        config_dict = run_config(args, model_name, seed, out, options)
        done = out / "result.json"
        if args.resume and done.is_file() and json.loads(done.read_text())["config"] == config_dict:
            console.print(f"{label} seed {seed}: reusing the run in {out}")
        else:
            if out.exists():
                shutil.rmtree(out)
            config = from_dict(config_dict)
            if key not in caches:  # computed outside the timed training
                caches[key] = prefilled_cache(config, splits["train"], splits["test"])
            t0 = time.time()
            Trainer(config, console=console, feature_cache=caches[key]).run()
            done.write_text(json.dumps({"config": config_dict, "train_s": time.time() - t0}))
        model, _ = load_model(out / "last.safetensors")
        cache = caches.setdefault(key, FeatureCache(torch.float16))
        scores[label] = score_run(model, cache, splits["val"], splits["test"], held_out, edges, args.size)
        scores[label].update(train_s=json.loads(done.read_text())["train_s"], seed=seed)
        summary = scores[label]["summary"]
        console.print(
            f"{label} seed {seed}: mean IoU {100 * summary['mean_iou']:.2f}, overall IoU "
            f"{100 * summary['overall_iou']:.2f} ({scores[label]['train_s'] / 60:.1f} min, "
            f"{scores[label]['params']:,} trainable parameters)"
        )
        still_needed = {model_class(m).encode_image for _, m, _ in runs[position + 1 :]}
        for stale in [k for k in caches if k not in still_needed]:
            del caches[stale]  # free the memory of features no later run uses
    return scores


def planned_runs(models: list[str], with_ablations: bool) -> list[tuple[str, str, dict]]:
    """(label, model, options) of every training run: the models, then the ablations of those models."""
    runs = [(name, name, {}) for name in models]
    if with_ablations:
        runs += [(label, model, options) for label, (model, options) in ABLATIONS.items() if model in models]
    return runs


def held_out_words(samples):
    """The samples whose expression says a word of ``HELD_OUT_WORDS``, saying its stand-in instead."""
    out = []
    for sample in samples:
        words = sample.sentence.split()
        swapped = [HELD_OUT_WORDS.get(w, w) for w in words]
        if swapped != words:
            out.append(replace(sample, sentence=" ".join(swapped)))
    return out


def score_run(model, cache: FeatureCache, val, test, held_out, edges, size: int) -> dict:
    """Metrics of one trained model on the test split (overall, by length, by kind) and held-out words,
    at the decision threshold of ``THRESHOLDS`` with the best mean IoU on the val split."""
    for split in (val, test):  # a no-op for the features the shared cache already holds
        cache.fill(model, RefDataset(split, size, cached=True), torch.device("cpu"))
    segmenter = evaluation_segmenter(model, size)
    on_val = {t: evaluate(segmenter, val, threshold=t, feature_cache=cache).summary()["mean_iou"] for t in THRESHOLDS}
    threshold = max(THRESHOLDS, key=on_val.__getitem__)
    accumulator = evaluate(segmenter, test, threshold=threshold, feature_cache=cache, length_edges=edges)
    unseen = evaluate(segmenter, held_out, threshold=threshold, feature_cache=cache).summary() if held_out else None
    return {"summary": accumulator.summary(), "by_kind": iou_by_kind(accumulator, test), "threshold": threshold,
            "held_out_mean_iou": unseen and unseen["mean_iou"],
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


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
    merged["seeds"] = {"mean_iou": [s["mean_iou"] for s in summaries],
                       "held_out_mean_iou": [r["held_out_mean_iou"] for r in runs]}
    merged["held_out_mean_iou"] = None if None in merged["seeds"]["held_out_mean_iou"] else float(
        np.mean(merged["seeds"]["held_out_mean_iou"]))
    merged["train_min"] = float(np.mean([r["train_s"] for r in runs]) / 60)
    merged["params"] = runs[0]["params"]
    merged["threshold"] = float(np.mean([r["threshold"] for r in runs]))
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
        + (" (numbers are means over the seeds)" if seeds > 1 else "") + ". Each run is scored at the decision "
        f"threshold of {', '.join(map(str, THRESHOLDS))} with the best mean IoU on the val split.",
        "",
        "**(a) Test split, shaped like paper 1 Table 1** (percent)",
        "",
        "| model | " + " | ".join(prec) + " | overall IoU | mean IoU |"
        + (" mean IoU std |" if seeds > 1 else "") + " threshold (val) | trainable params | train min |",
        "|---|" + "---:|" * (len(prec) + 5 + (seeds > 1)),
    ]
    for name, r in results.items():
        row = [LABELS[name], *[pct(r[k]) for k in prec], pct(r["overall_iou"]), pct(r["mean_iou"])]
        if seeds > 1:
            row.append(pct(r["mean_iou_std"]))
        row += [f"{r['threshold']:.2f}", f"{r['params']:,}", f"{r['train_min']:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    # paper 3 compares RMI with its own R+LSTM baseline; without it, with paper 1's LSTM-CNN
    baseline = next((name for name in ("rmi_baseline", "lstm_cnn") if name in results), None)
    lines += breakdown_table(
        results, "by_length", "overall_iou",
        "**(b) Overall IoU by expression length (words), shaped like paper 3 Tables 2-5** (percent; "
        f"buckets of roughly equal size on the test split; the gain row is RMI's relative gain over {LABELS[baseline]})"
        if baseline else "**(b) Overall IoU by expression length (words)** (percent)",
    )
    if "rmi" in results and baseline:
        shown = [shown_gain(g) for g in rmi_gains(results, baseline)]
        lines.append(f"| RMI relative gain over {LABELS[baseline]} | " + " | ".join(shown) + " |")
    lines += breakdown_table(results, "by_length", "mean_iou", "Mean IoU by length (same buckets):")
    lines += breakdown_table(
        results, "by_kind", "mean_iou",
        "**(c) Mean IoU by ShapeRef expression kind** (percent; `none` = no-target expressions, where "
        "IoU is 1 for an empty prediction)",
    )
    lines += claims_table(results, meta)
    return "\n".join(lines) + "\n"


#: Each paper's claim as (paper, claim, the run it says is better, the run it says is worse, metric).
CLAIMS = (
    ("paper 1, Table 1", "the high-resolution output beats the low-resolution stage", "lstm_cnn", "lstm_cnn_low",
     "mean_iou"),
    ("paper 2, §2.1", "fixed GloVe embeddings beat learned ones on words held out of training",
     "lstm_cnn_plus_glove", "lstm_cnn_plus_learned", "held_out_mean_iou"),
    ("paper 3, Tables 2-5", "RMI beats its R+LSTM baseline", "rmi", "rmi_baseline", "mean_iou"),
    ("paper 4, Table 3", "STEP beats RMI", "step", "rmi", "mean_iou"),
    ("paper 4, Table 2", "more folds (ConvGRU steps) help", "step_2_folds", "step", "mean_iou"),
)


def verdict(better: list[float], worse: list[float]) -> str:
    """agrees / disagrees when the means differ by at least MIN_DIFFERENCE and every seed of one side beats
    every seed of the other; inconclusive otherwise."""
    difference = float(np.mean(better) - np.mean(worse))
    if difference >= MIN_DIFFERENCE and min(better) > max(worse):
        return "agrees"
    if difference <= -MIN_DIFFERENCE and max(better) < min(worse):
        return "disagrees"
    return "inconclusive"


def length_gain_verdict(gains: list[float | None]) -> str:
    """Paper 3: RMI's relative gain grows with length (longest bucket at least 5 points above the shortest)."""
    if gains[0] is None or gains[-1] is None:
        return "inconclusive"
    if gains[-1] >= gains[0] + 0.05:
        return "agrees"
    return "disagrees" if gains[-1] <= gains[0] - 0.05 else "inconclusive"


def claims_table(results: dict[str, dict], meta: dict) -> list[str]:
    """Markdown lines: each claim whose runs are in ``results``, the numbers per seed and the verdict."""
    lines = ["", f"**(d) The papers' claims, tested** (percent mean IoU on the test split, or on its {meta['n_held_out']} "
             "expressions with held-out words; each seed's value in brackets; a verdict needs a mean difference of "
             f"{100 * MIN_DIFFERENCE:g} point and every seed of one run beyond every seed of the other)", "",
             "| claim | source | better (as claimed) | worse (as claimed) | verdict |", "|---|---|---|---|---|"]

    def cell(label: str, metric: str) -> str:
        values = results[label]["seeds"][metric]
        return f"{LABELS[label]}: {pct(float(np.mean(values)))} ({', '.join(pct(v) for v in values)})"

    for paper, claim, better, worse, metric in CLAIMS:
        if better in results and worse in results and None not in results[better]["seeds"][metric] + results[worse]["seeds"][metric]:
            found = verdict(results[better]["seeds"][metric], results[worse]["seeds"][metric])
            lines.append(f"| {claim} | {paper} | {cell(better, metric)} | {cell(worse, metric)} | {found} |")
    if "rmi" in results and "rmi_baseline" in results:
        gains = rmi_gains(results, "rmi_baseline")
        shown = ", ".join(map(shown_gain, gains))
        lines.append(f"| RMI's gain over R+LSTM grows with expression length | paper 3, Tables 2-5 | gains by length "
                     f"bucket, shortest to longest: {shown} | | {length_gain_verdict(gains)} |")
    lines.append("| synthesized expressions help | paper 2, §2.2 | not testable here: every ShapeRef expression is "
                 "synthesized | | – |")
    return lines


def rmi_gains(results: dict[str, dict], baseline: str) -> list[float | None]:
    """RMI's relative overall-IoU gain over ``baseline`` in each length bucket, shortest first."""
    return [relative_gain(results[baseline], results["rmi"], bucket) for bucket in results["rmi"]["by_length"]]


def shown_gain(gain: float | None) -> str:
    return "–" if gain is None else f"{100 * gain:+.1f} %"


def relative_gain(baseline: dict, model: dict, bucket: str) -> float | None:
    """Relative overall-IoU gain of ``model`` over ``baseline`` in one length bucket (None when undefined)."""
    base, ours = baseline["by_length"][bucket]["overall_iou"], model["by_length"][bucket]["overall_iou"]
    return None if not base or ours is None else (ours - base) / base


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
