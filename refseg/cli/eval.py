"""`refseg eval`: score a model (or a folder of predicted PNGs) on a dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the `refseg` app."""
    app.command("eval")(evaluate)


def evaluate(
    data: Optional[Path] = typer.Option(None, "--data", help="JSONL manifest to evaluate on."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split (manifest) / the refer split."),
    refer_root: Optional[Path] = typer.Option(None, "--refer-root", help="Refer-format root (refcoco etc.)."),
    dataset: str = typer.Option("refcoco", "--dataset", help="Refer dataset: refcoco, refcoco+, refcocog, refclef."),
    split_by: str = typer.Option("unc", "--split-by", help="Refer split: unc, umd, google, berkeley."),
    config: Optional[Path] = typer.Option(None, "--config", help="Take the data from a training config."),
    data_key: str = typer.Option("val", "--data-key", help="Which data group of --config (train or val)."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Checkpoint, run folder or shipped model name (default: the bundled model)."
    ),
    pred_dir: Optional[Path] = typer.Option(None, "--pred-dir", help="Score existing <id>.png predictions."),
    save_pred: Optional[Path] = typer.Option(None, "--save-pred", help="Write <id>.png 0/255 predictions here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Precision-vs-IoU-threshold PNG (default: next to --json, else not drawn)."
    ),
    crf: bool = typer.Option(False, "--crf", help="Refine with DenseCRF (needs the crf extra)."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Probability threshold of the mask (default: the model's)."
    ),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Canvas side (default: the model's)."),
    runtime: str = typer.Option("torch", "--runtime", help="Run the network with torch or onnx (extra 'onnx')."),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    length_buckets: Optional[str] = typer.Option(
        None, "--length-buckets", help="Upper edges of the by-length buckets, e.g. 2,3,5 (default: UNC's)."
    ),
) -> None:
    """Print overall/mean IoU, prec@X and IoU by expression length (paper 1 §4.2, paper 3 §4.3)."""
    from rich.console import Console

    from refseg.errors import RefsegError

    console = Console()
    if pred_dir is not None and (model is not None or save_pred is not None or crf):
        raise RefsegError("--pred-dir scores existing PNGs: it cannot be combined with --model, --save-pred or --crf")
    if pred_dir is None:
        from refseg.runtime import check_runner

        check_runner(runtime)  # before the (slow) data and model loads
    edges = _parse_edges(length_buckets)
    samples = _samples(data, split, refer_root, dataset, split_by, config, data_key)
    summary, curve_source = _score(
        console, samples, model, pred_dir, save_pred, crf, threshold, image_size, runtime, batch_size, device, edges
    )
    from refseg.engine.metrics import render_summary

    console.print(render_summary(summary))
    if json_out is not None:
        import json

        from refseg.io import atomic_write_text

        atomic_write_text(json_out, json.dumps(summary, indent=2) + "\n")
        console.print(f"metrics: {json_out}", soft_wrap=True)
        plot = plot or json_out.with_suffix(".precision.png")
    if plot is not None:
        from refseg.engine.evaluator import precision_curve, save_precision_plot

        label = model or (str(pred_dir) if pred_dir is not None else "bundled model")
        save_precision_plot(plot, {label: precision_curve(curve_source)})
        console.print(f"precision plot: {plot}", soft_wrap=True)


def _parse_edges(text: str | None):
    from refseg.engine.metrics import DEFAULT_LENGTH_EDGES
    from refseg.errors import RefsegError

    if text is None:
        return DEFAULT_LENGTH_EDGES
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise RefsegError(f"--length-buckets must be comma-separated word counts, e.g. 2,3,5; got {text!r}") from None


def _samples(data, split, refer_root, dataset, split_by, config, data_key):
    from refseg.config import DatasetSpec, load_config
    from refseg.data.sources import load_samples, read_spec
    from refseg.errors import RefsegError

    given = [x is not None for x in (data, refer_root, config)]
    if sum(given) != 1:
        raise RefsegError("give exactly one data source: --data MANIFEST, --refer-root DIR or --config CONFIG")
    if config is not None:
        if data_key not in ("train", "val"):
            raise RefsegError(f"--data-key must be train or val, got {data_key!r}")
        samples = load_samples(load_config(config), data_key)
    elif data is not None:
        samples = read_spec(DatasetSpec(kind="manifest", path=str(data), split=split or ""), data)
    else:
        if not refer_root.is_dir():
            raise RefsegError(f"refer root not found: {refer_root}")
        spec = DatasetSpec(kind="refer", path=str(refer_root), dataset=dataset, split_by=split_by, split=split or "val")
        samples = read_spec(spec, refer_root)
    if not samples:
        raise RefsegError("no samples to evaluate (check --split)")
    return samples


def _score(console, samples, model_name, pred_dir, save_pred, crf, threshold, canvas, runtime, batch_size, device, edges):
    """(summary, accumulator) from PNG predictions or from running a model."""
    if pred_dir is not None:
        from refseg.engine.metrics import score_prediction_dir

        accumulator = score_prediction_dir(samples, pred_dir, edges)
        return accumulator.summary(), accumulator
    from rich.progress import Progress

    from refseg.engine.evaluator import evaluate, load_for_evaluation

    segmenter = load_for_evaluation(model_name, runtime=runtime, device=device, canvas=canvas)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"evaluating {segmenter.model.name} at {segmenter.canvas} px", total=len(samples))
        accumulator = evaluate(
            segmenter, samples, batch_size=batch_size, threshold=threshold, crf=crf, save_pred=save_pred,
            length_edges=edges, on_progress=lambda done, total: progress.update(task, completed=done),
        )
    return accumulator.summary(), accumulator
