"""`refseg detect`: the COCO detector's boxes on one photo (what an instance-aware model chooses from)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``detect`` to the `refseg` app."""
    app.command("detect")(detect)


def detect(
    image: Path = typer.Argument(..., help="Photo (JPEG, PNG, ...)."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="Write the photo with the boxes, classes and scores (PNG)."),
    threshold: float = typer.Option(0.2, "--threshold", min=0.0, max=1.0, help="Keep detections scoring at least this."),
    size: int = typer.Option(300, "--size", min=64, max=1024, help="Detector input side (the photo is stretched to it)."),
) -> None:
    """List the COCO objects the SSD-MobileNetV2 detector finds in IMAGE (one line each)."""
    from refseg import viz
    from refseg.data.images import load_image
    from refseg.io import check_output_path, save_png
    from refseg.models.detector import load_detector

    if boxes is not None:
        check_output_path(boxes, inputs=[image])  # fail before the model load, not after it
    rgb = load_image(image)
    found = load_detector().detect(rgb, size=size, score_threshold=threshold)
    captions = [f"{name} {score:.2f}" for name, score in zip(found.names, found.scores)]
    for caption, box in zip(captions, found.boxes):
        typer.echo(f"{caption}  " + " ".join(f"{v:.1f}" for v in box))
    if boxes is not None:
        save_png(boxes, viz.boxes(rgb, found.boxes, captions))
        typer.echo(f"{boxes}: {len(found)} detections")
