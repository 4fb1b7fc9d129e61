"""Inference latency of the Python API on CPU, written into docs/performance.md.

    python -m bench.latency                       # the bundled model, 2 threads
    python -m bench.latency --model runs/x/best.safetensors --threads 4 --no-write
    python -m bench.latency --config configs/bundled_lstm_cnn.yaml   # an architecture, before training

Measures, in one process, on the "astronaut" sample photo (512 x 512, already decoded):

* ``seg.predict(photo, one expression)`` end to end (letterbox, backbone, text + fusion,
  post-processing to the original size);
* the backbone forward alone on the prepared canvas (the floor for the end-to-end time);
* the stages of predict separately (pre-processing, text + fusion head, post-processing);
* ``seg.predict(photo, 10 expressions)`` → expressions per second (one backbone pass).

Reports median and p90 over ``--runs`` timed calls after ``--warmup`` calls.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from datetime import date
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from bench.doc_tables import PERFORMANCE, command_line, write_block

if TYPE_CHECKING:
    from refseg.api import Segmenter

EXPRESSION = "the woman in the orange suit"
PREDICT_ONE, BACKBONE, PREDICT_TEN = "predict, 1 expression (end to end)", "backbone forward alone", "predict, 10 expressions"
TEN_EXPRESSIONS = (
    "the woman", "the woman in the orange suit", "the astronaut", "her smiling face", "the flag",
    "the flag on the left", "the black helmet", "the helmet at the bottom right", "the shuttle model",
    "the white space shuttle behind her",
)


def interleaved_timings(
    fns: dict[str, Callable[[], object]], runs: int, warmup: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(wall seconds, process CPU seconds) of ``runs`` calls of each function after ``warmup`` rounds.

    The functions take turns (one call of each per round), so a change of machine load during
    the measurement affects all of them alike and their ratios stay meaningful. CPU time (all
    threads of this process) hardly depends on what else runs on the machine.
    """
    wall = {name: np.empty(runs) for name in fns}
    cpu = {name: np.empty(runs) for name in fns}
    for round_ in range(-warmup, runs):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if round_ >= 0:
                wall[name][round_] = time.perf_counter() - start
                cpu[name][round_] = time.process_time() - start_cpu
    return {name: (wall[name], cpu[name]) for name in fns}


def load_segmenter(model: str | None, config: str | None, image_size: int | None) -> "Segmenter":
    """A checkpoint (``model``), or the architecture of a training ``config`` with untrained head
    weights: latency depends on the architecture only, so this times a model before it is trained."""
    from refseg.api import Segmenter

    if config is None:
        return Segmenter.from_pretrained(model, canvas=image_size)
    from refseg.config import load_config
    from refseg.models.base import build_model

    cfg = load_config(config)
    model = build_model(cfg, list(TEN_EXPRESSIONS))  # `vocab: train` becomes these expressions' words
    return Segmenter(model, canvas=image_size or cfg.data.image_size)


def measure(seg: "Segmenter", source: str, runs: int, warmup: int) -> dict[str, object]:
    from refseg.data.transforms import Letterbox, to_tensor
    from refseg.postprocess.masks import logits_to_probability, probability_to_mask
    from refseg.samples import get_sample

    load = os.getloadavg()[0]
    sample = get_sample("astronaut")
    rgb = sample.load()
    texts = list(TEN_EXPRESSIONS)

    def preprocess() -> torch.Tensor:
        box = Letterbox(rgb.shape[0], rgb.shape[1], seg.canvas)
        return to_tensor(box.image(rgb)).unsqueeze(0)

    canvas = preprocess()
    features = seg.runner.encode_image(canvas)
    tokens, lengths = seg.model.tokenize([EXPRESSION])
    out = seg.runner.run(features, tokens, lengths, [EXPRESSION])
    box = Letterbox(rgb.shape[0], rgb.shape[1], seg.canvas)

    def postprocess() -> np.ndarray:
        return probability_to_mask(logits_to_probability(out.logits[0], box))

    stages = {
        PREDICT_ONE: lambda: seg.predict(rgb, EXPRESSION),
        BACKBONE: lambda: seg.runner.encode_image(canvas),
        "pre-processing (letterbox + normalise)": preprocess,
        "text + fusion head (features given)": lambda: seg.runner.run(
            features, *seg.model.tokenize([EXPRESSION]), [EXPRESSION]
        ),
        "post-processing (to original size + threshold)": postprocess,
        PREDICT_TEN: lambda: seg.predict(rgb, texts),
    }
    with warnings.catch_warnings():  # a long sample expression may be truncated by small models
        warnings.simplefilter("ignore")
        rows = interleaved_timings(stages, runs, warmup)
    return {
        "rows": rows,
        "load": load,
        "model": seg.model.name,
        "checkpoint": source,
        "image_size": seg.canvas,
        "photo": f"{sample.name} {rgb.shape[1]}x{rgb.shape[0]}",
        "params": sum(p.numel() for p in seg.model.parameters()),
    }


def report(result: dict[str, object], command: str) -> str:
    """Markdown section with the table, the targets and how to reproduce it."""
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = result["rows"]  # type: ignore[assignment]
    ms = {
        name: (1000 * np.median(wall), 1000 * np.percentile(wall, 90), 1000 * np.median(cpu))
        for name, (wall, cpu) in rows.items()
    }
    end_to_end, backbone = ms[PREDICT_ONE][0], ms[BACKBONE][0]
    per_second = 10 / float(np.median(rows[PREDICT_TEN][0]))
    lines = [
        f"Measured {date.today().isoformat()} with `{command}`",
        f"on {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__}, torch threads: {torch.get_num_threads()}; load average {result['load']:.1f} "
        "before the run; the rows were timed in interleaved rounds so they saw the same load).",
        f"Model `{result['model']}` ({result['checkpoint']}, {result['params']:,} parameters), "
        f"canvas {result['image_size']} px, photo {result['photo']} (decoded array input).",
        "",
        "| stage | median ms | p90 ms | CPU ms (all threads, median) |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {med:.1f} | {p90:.1f} | {cpu:.1f} |" for name, (med, p90, cpu) in ms.items()),
        "",
        f"* **Expressions per second** (10 expressions, one photo, one backbone pass): **{per_second:.1f}**",
        f"* End to end / backbone alone: **{end_to_end / backbone:.2f} x** (target <= 1.3 x)",
        f"* End-to-end median: **{end_to_end:.1f} ms** (target <= 80 ms on 2 CPU cores)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", default=None, help="checkpoint or shipped name (default: bundled)")
    which.add_argument("--config", default=None, help="time the architecture of this training config (untrained)")
    parser.add_argument("--image-size", type=int, default=None, help="canvas side (default: the model's)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/performance.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seg = load_segmenter(args.model, args.config, args.image_size)
    source = f"architecture of {args.config}, untrained head" if args.config else args.model or "bundled"
    result = measure(seg, source, args.runs, args.warmup)
    markdown = report(result, command_line("latency", argv if argv is not None else sys.argv[1:]))
    print(markdown)
    if not args.no_write:
        print(f"\nwritten to {write_block(PERFORMANCE, 'latency', markdown)}")


if __name__ == "__main__":
    main()
