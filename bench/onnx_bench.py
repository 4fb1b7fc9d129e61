"""ONNX export of every registered model: parity with PyTorch and latency of both runtimes.

    python -m bench.onnx_bench                               # every registered model, fresh weights
    python -m bench.onnx_bench --model runs/x/best.safetensors --no-write

For each model (a fresh one with its default config and pretrained backbone, or the given
checkpoint): export to ONNX (timed), then on every sample photo with its expressions compare
the canvas logits of both runtimes (max |Δlogit|) and the masks at the photo's size (pixels
that differ), then time ``Segmenter.predict`` with ``runtime="torch"`` and ``runtime="onnx"``
interleaved in one process (one photo + one expression, and one photo + 10 expressions).
Writes a table into the ONNX section of docs/performance.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.doc_tables import PERFORMANCE, command_line, write_block
from bench.latency import TEN_EXPRESSIONS, interleaved_timings


def measure(checkpoint: Path, runs: int, warmup: int) -> dict[str, object]:
    from refseg.api import Segmenter
    from refseg.data.transforms import Letterbox, to_tensor
    from refseg.export.onnx import default_onnx_path, export_checkpoint, export_size
    from refseg.samples import SAMPLES

    torch_seg = Segmenter.from_pretrained(checkpoint)
    start = time.perf_counter()
    result = export_checkpoint(torch_seg.model, checkpoint, default_onnx_path(checkpoint), torch_seg.canvas)
    export_s = time.perf_counter() - start
    onnx_seg = Segmenter.from_pretrained(checkpoint, runtime="onnx")

    worst, differ, pixels = 0.0, 0, 0
    for sample in SAMPLES:
        rgb, texts = sample.load(), list(sample.expressions)
        image = to_tensor(Letterbox(*rgb.shape[:2], torch_seg.canvas).image(rgb)).unsqueeze(0)
        tokens, lengths = torch_seg.model.tokenize(texts)
        want = torch_seg.runner.run(torch_seg.runner.encode_image(image), tokens, lengths, texts).logits
        got = onnx_seg.runner.run(onnx_seg.runner.encode_image(image), tokens, lengths, texts).logits
        worst = max(worst, float((got - want).abs().max()))
        for a, b in zip(torch_seg.predict(rgb, texts), onnx_seg.predict(rgb, texts)):
            differ += int((a.mask != b.mask).sum())
            pixels += a.mask.size

    photo, text = SAMPLES[0].load(), SAMPLES[0].expressions[0]
    times = interleaved_timings(
        {
            "torch": lambda: torch_seg.predict(photo, text),
            "onnx": lambda: onnx_seg.predict(photo, text),
            "torch10": lambda: torch_seg.predict(photo, list(TEN_EXPRESSIONS)),
            "onnx10": lambda: onnx_seg.predict(photo, list(TEN_EXPRESSIONS)),
        },
        runs,
        warmup,
    )
    return {
        "model": torch_seg.model.name,
        "image_size": torch_seg.canvas,
        "layout": result.layout,
        "max_tokens": result.max_tokens,
        "export_s": export_s,
        "size_mb": export_size(result.path) / 2**20,
        "max_diff": worst,
        "differ": differ,
        "pixels": pixels,
        **{name: float(np.median(t)) * 1000.0 for name, t in times.items()},
    }


def fresh_checkpoints(folder: Path, names: list[str], image_size: int) -> list[Path]:
    from refseg.engine.checkpoint import save_model
    from refseg.models import create_model, list_models

    paths = []
    for name in names or [n for n in list_models() if not n.startswith("_")]:
        torch.manual_seed(0)
        paths.append(save_model(folder / f"{name}.safetensors", create_model(name), {"image_size": image_size}))
    return paths


def report(rows: list[dict], failures: list[str], args: argparse.Namespace, command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch threads {args.threads}, "
        f"onnxruntime CPU provider; median of {args.runs} interleaved runs after {args.warmup} warm-up; "
        "photo: astronaut (512 x 512).",
        "",
        "| model | canvas | graph layout | export | max \\|Δlogit\\| | mask pixels that differ "
        "| torch, 1 expr | onnx, 1 expr | torch, 10 expr | onnx, 10 expr |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        layout = r["layout"]
        texts = "B dynamic" if layout.dynamic_batch else "B = 1"
        words = "T dynamic" if layout.dynamic_words else f"T padded to {r['max_tokens']}"
        lines.append(
            f"| {r['model']} | {r['image_size']} | {texts}, {words} | {r['export_s']:.0f} s, {r['size_mb']:.1f} MB "
            f"| {r['max_diff']:.1e} | {r['differ']} of {r['pixels']:,} | {r['torch']:.0f} ms | {r['onnx']:.0f} ms "
            f"| {r['torch10']:.0f} ms | {r['onnx10']:.0f} ms |"
        )
    if failures:
        lines += ["", "Not exportable:", *[f"* {f}" for f in failures]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from refseg.engine.checkpoint import resolve_model_path
    from refseg.errors import RefsegError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="checkpoint (repeatable; default: every registered model, fresh)")
    parser.add_argument("--name", action="append", default=[], help="registered model to build fresh (repeatable)")
    parser.add_argument("--image-size", type=int, default=320, help="canvas side of the fresh models")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/performance.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["REFSEG_CACHE"] = tmp
        checkpoints = [resolve_model_path(m) for m in args.model] or fresh_checkpoints(Path(tmp), args.name, args.image_size)
        for checkpoint in checkpoints:
            if args.model:  # export next to a copy, never next to the user's checkpoint
                copy = Path(tmp) / checkpoint.name
                copy.write_bytes(checkpoint.read_bytes())
                checkpoint = copy
            try:
                rows.append(measure(checkpoint, args.runs, args.warmup))
                print(rows[-1], flush=True)
            except RefsegError as exc:
                failures.append(f"{checkpoint.stem}: {exc}")
                print(failures[-1], flush=True)
    markdown = report(rows, failures, args, command_line("onnx_bench", argv if argv is not None else sys.argv[1:]))
    print(markdown)
    if not args.no_write:
        print(f"\nwritten to {write_block(PERFORMANCE, 'onnx', markdown)}")


if __name__ == "__main__":
    main()
