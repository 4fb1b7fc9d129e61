"""`refseg train CONFIG [key=value ...] [--resume RUN]` (also under ``torchrun -m refseg train``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``train`` to the `refseg` app."""
    app.command("train")(train)


def train(
    config: Path = typer.Argument(..., help="YAML config (see configs/ and docs/train.md)."),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="key=value overrides with dotted keys, e.g. train.lr=1e-3 model.hidden=256."
    ),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue a run: its folder, last_state.pt or last.safetensors."
    ),
) -> None:
    """Train a model; checkpoints, logs and the resolved config go to train.out_dir."""
    from rich.console import Console

    from refseg.config import load_config
    from refseg.engine.trainer import train as run_training

    cfg = load_config(config, overrides or [])
    console = Console(stderr=True)
    out = run_training(cfg, resume=resume, console=console)
    console.print(f"run folder: {out}")
