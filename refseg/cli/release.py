"""`refseg release RUN --name NAME`: ship a trained model with its threshold and canvas."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``release`` to the `refseg` app."""
    app.command("release")(release)


def release(
    source: str = typer.Argument(..., help="Run folder (its best checkpoint, else the last) or checkpoint file."),
    name: Optional[str] = typer.Option(
        None, "--name", help="Ship as refseg/weights/NAME.safetensors (then from_pretrained(NAME) loads it)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Write this file instead of a shipped name."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", help="Decision threshold to store (default: the best on synthesized val)."
    ),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help="Inference canvas to store (default: the training one)."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="The run's training config: its val split picks the threshold; recorded with the model."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Write a float16 model file with its decision threshold, canvas and training record."""
    from refseg.engine.release import release as write_release
    from refseg.engine.release import release_path

    done = write_release(source, release_path(name, out), threshold, image_size, config, force)
    for value, mean_iou in done.val_mean_iou.items():
        typer.echo(f"threshold {value:g}: synthesized val mean IoU {100 * mean_iou:.1f}")
    size_mb = done.path.stat().st_size / 2**20
    typer.echo(f"{done.path}: threshold {done.threshold:g}, canvas {done.image_size} px, {size_mb:.1f} MB")
