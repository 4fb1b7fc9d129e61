"""`refseg export onnx`: write a model as an ONNX graph for onnxruntime (extra ``onnx``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

def register(app: typer.Typer) -> None:
    """Add the ``export`` command group to the `refseg` app."""
    export_app = typer.Typer(help="Export a model to another runtime.", no_args_is_help=True)
    export_app.command("onnx")(onnx)
    app.add_typer(export_app, name="export")


def onnx(
    output: Optional[Path] = typer.Option(
        None, "--output", "-o",
        help="ONNX file to write (instance_ref: a folder of graphs). Default: next to the checkpoint (<stem>.onnx),"
        " where runtime 'onnx' looks first.",
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Checkpoint file, run folder or shipped model name (default: the bundled model)."
    ),
    opset: int = typer.Option(17, "--opset", min=13, help="ONNX opset version."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Canvas side (default: the model's)."),
) -> None:
    """Export image + token ids + lengths -> logits (instance_ref: a graph per network), verified against PyTorch."""
    from refseg.extras import require

    require("onnx", "'refseg export onnx'")  # before the model loads
    from refseg.export.onnx import default_onnx_path, export_checkpoint, export_size
    from refseg.runtime import load_pretrained

    loaded, card = load_pretrained(model, canvas=image_size)
    checkpoint = card.provenance.path
    target = output if output is not None else default_onnx_path(checkpoint)
    result = export_checkpoint(loaded, checkpoint, target, card.canvas, opset=opset)
    texts = "any number of texts" if result.layout.dynamic_batch else "one text per call"
    words = "any length" if result.layout.dynamic_words else f"padded to {result.max_tokens} tokens"
    graphs = f"graphs {', '.join(result.graphs)}, " if result.graphs else ""
    size_mb = export_size(result.path) / 2**20
    typer.echo(
        f"{result.path}: {card.name}, {card.canvas}px, {graphs}{texts}, words {words}, "
        f"outputs {', '.join(result.outputs)}, max |probability - torch| {result.max_probability_diff:.1e}, {size_mb:.1f} MB"
    )
