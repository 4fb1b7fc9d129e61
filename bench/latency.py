"""Inference latency of the Python API on CPU, written into docs/performance.md.

    python bench/latency.py                       # the bundled model, 2 threads
    python bench/latency.py --model runs/x/best.safetensors --threads 4 --no-write

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
import re
import sys
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- latency:begin -->", "<!-- latency:end -->"
EXPRESSION = "the woman in the orange suit"
TEN_EXPRESSIONS = (
    "the woman", "the woman in the orange suit", "the astronaut", "her smiling face", "the flag",
    "the flag on the left", "the black helmet", "the helmet at the bottom right", "the shuttle model",
    "the white space shuttle behind her",
)


def interleaved_timings(fns: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, np.ndarray]:
    """Wall-clock seconds of ``runs`` calls of each function after ``warmup`` untimed rounds.

    The functions take turns (one call of each per round), so a change of machine load during
    the measurement affects all of them alike and their ratios stay meaningful.
    """
    out = {name: np.empty(runs) for name in fns}
    for round_ in range(-warmup, runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_ >= 0:
                out[name][round_] = time.perf_counter() - start
    return out


def measure(model: str | None, image_size: int | None, runs: int, warmup: int) -> dict[str, object]:
    from refseg.api import Segmenter
    from refseg.data.transforms import Letterbox, to_tensor
    from refseg.postprocess.masks import logits_to_probability, probability_to_mask
    from refseg.samples import get_sample

    seg = Segmenter.from_pretrained(model, image_size=image_size)
    sample = get_sample("astronaut")
    rgb = sample.load()
    texts = list(TEN_EXPRESSIONS)

    def preprocess() -> torch.Tensor:
        box = Letterbox(rgb.shape[0], rgb.shape[1], seg.image_size)
        return to_tensor(box.image(rgb)).unsqueeze(0)

    canvas = preprocess()
    features = seg.runner.encode_image(canvas)
    tokens, lengths = seg.model.tokenize([EXPRESSION])
    out = seg.runner.run(features, tokens, lengths, [EXPRESSION])
    box = Letterbox(rgb.shape[0], rgb.shape[1], seg.image_size)

    def postprocess() -> np.ndarray:
        return probability_to_mask(logits_to_probability(out.logits[0], box))

    stages = {
        "predict, 1 expression (end to end)": lambda: seg.predict(rgb, EXPRESSION),
        "backbone forward alone": lambda: seg.runner.encode_image(canvas),
        "pre-processing (letterbox + normalise)": preprocess,
        "text + fusion head (features given)": lambda: seg.runner.run(
            features, *seg.model.tokenize([EXPRESSION]), [EXPRESSION]
        ),
        "post-processing (to original size + threshold)": postprocess,
        "predict, 10 expressions": lambda: seg.predict(rgb, texts),
    }
    with warnings.catch_warnings():  # a long sample expression may be truncated by small models
        warnings.simplefilter("ignore")
        rows = interleaved_timings(stages, runs, warmup)
    return {
        "rows": rows,
        "model": seg.model.name,
        "checkpoint": model or "default (bundled)",
        "image_size": seg.image_size,
        "photo": f"{sample.name} {rgb.shape[1]}x{rgb.shape[0]}",
        "params": sum(p.numel() for p in seg.model.parameters()),
    }


def report(result: dict[str, object], command: str) -> str:
    """Markdown section with the table, the targets and how to reproduce it."""
    rows: dict[str, np.ndarray] = result["rows"]  # type: ignore[assignment]
    ms = {name: (1000 * float(np.median(t)), 1000 * float(np.percentile(t, 90))) for name, t in rows.items()}
    end_to_end, backbone = ms["predict, 1 expression (end to end)"][0], ms["backbone forward alone"][0]
    per_second = 10 / float(np.median(rows["predict, 10 expressions"]))
    lines = [
        f"Measured {date.today().isoformat()} with `{command}`",
        f"on {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads).",
        f"Model `{result['model']}` ({result['checkpoint']}, {result['params']:,} parameters), "
        f"canvas {result['image_size']} px, photo {result['photo']} (decoded array input).",
        "",
        "| stage | median ms | p90 ms |",
        "|---|---:|---:|",
        *(f"| {name} | {med:.1f} | {p90:.1f} |" for name, (med, p90) in ms.items()),
        "",
        f"* **Expressions per second** (10 expressions, one photo, one backbone pass): **{per_second:.1f}**",
        f"* End to end / backbone alone: **{end_to_end / backbone:.2f} x** (target <= 1.3 x)",
        f"* End-to-end median: **{end_to_end:.1f} ms** (target <= 80 ms on 2 CPU cores)",
    ]
    return "\n".join(lines)


def write_section(markdown: str, doc: Path = DOC) -> None:
    """Replace the text between the latency markers of ``doc`` (atomically)."""
    from refseg.io import atomic_write_text

    text = doc.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} markers")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    atomic_write_text(doc, pattern.sub(lambda _: f"{BEGIN}\n{markdown}\n{END}", text))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint or shipped name (default: bundled)")
    parser.add_argument("--image-size", type=int, default=None, help="canvas side (default: the model's)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/performance.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.model, args.image_size, args.runs, args.warmup)
    command = "python bench/latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = report(result, command.strip())
    print(markdown)
    if not args.no_write:
        write_section(markdown)
        print(f"\nwritten to {DOC}")


if __name__ == "__main__":
    main()
