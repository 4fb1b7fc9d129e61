"""`refseg segment` (one photo, one phrase → mask PNG) and `refseg demo` (sample gallery)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


_MODEL_HELP = "Checkpoint file, run folder or shipped model name (default: the bundled model)."


def register(app: typer.Typer) -> None:
    """Add ``segment`` and ``demo`` to the `refseg` app."""
    app.command("segment")(segment)
    app.command("demo")(demo)


def segment(
    image: Path = typer.Argument(..., help="Photo to segment (JPEG, PNG, ...)."),
    text: str = typer.Argument(..., help='Referring expression, e.g. "the dog on the left".'),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Mask PNG (0/255, photo size). Default: <image-stem>.mask.png in the current folder."
    ),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="Also write the mask tinted on the photo (PNG)."),
    heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Also write the probability heat map (PNG)."),
    candidates: Optional[Path] = typer.Option(
        None, "--candidates", help="Instance-aware models: draw the chosen candidates and the two runners-up (PNG)."
    ),
    crf: bool = typer.Option(False, "--crf", help="Refine the mask with DenseCRF (extra 'crf')."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="Probability threshold (default: the model's; 0.5 unless stored)."
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    runtime: str = typer.Option("torch", "--runtime", help="Run the network with torch or onnx (refseg.runtime)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Canvas side (default: the model's)."),
) -> None:
    """Segment the object TEXT refers to in IMAGE and write its mask as a PNG."""
    from refseg import viz
    from refseg.api import Segmenter
    from refseg.data.images import load_image
    from refseg.errors import OutputError
    from refseg.extras import require
    from refseg.io import check_outputs, save_mask_png, save_png
    from refseg.runtime import check_runner

    check_runner(runtime)  # before the (slow) model load
    if crf:
        require("crf", "--crf")
    output = output if output is not None else Path(f"{image.stem}.mask.png")
    check_outputs((output, overlay, heatmap, candidates), inputs=[image])  # fail before the (slow) model load
    rgb = load_image(image)
    segmenter = Segmenter.from_pretrained(model, runtime=runtime, canvas=image_size)
    pred = segmenter.predict(rgb, text, threshold=threshold, crf=crf)
    if candidates is not None and not pred.candidates:
        raise OutputError("--candidates needs an instance-aware model (this one has no candidates)")
    save_mask_png(output, pred.mask)
    if overlay is not None:
        save_png(overlay, viz.overlay(rgb, pred.mask, labels=[text]))
    if heatmap is not None:
        save_png(heatmap, viz.heatmap(rgb, pred.prob))
    if candidates is not None:
        shown = [c for c in pred.candidates if c.chosen] + [c for c in pred.candidates if not c.chosen][:2]
        captions = [f"{'chosen' if c.chosen else 'runner-up'}: {c.label} {c.score:.2f}" for c in shown]
        save_png(candidates, viz.boxes(rgb, [c.box for c in shown], captions))
    h, w = pred.mask.shape
    if pred.empty:
        typer.echo(f"{output}: nothing found for {text!r}: empty {w}x{h} mask, confidence {pred.confidence:.2f}")
    else:
        typer.echo(f"{output}: {w}x{h} mask, area {100 * pred.area:.1f}%, confidence {pred.confidence:.2f}")


def demo(
    out: Path = typer.Option(Path("refseg-demo"), "--out", "-o", help="Folder for the overlays and index.html."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    crf: bool = typer.Option(False, "--crf", help="Refine the masks with DenseCRF (extra 'crf')."),
) -> None:
    """Run the model on the bundled sample photos and write an HTML gallery."""
    from refseg.api import Segmenter
    from refseg.samples import write_gallery

    segmenter = Segmenter.from_pretrained(model)
    index = write_gallery(segmenter, out, crf=crf)
    typer.echo(str(index))
