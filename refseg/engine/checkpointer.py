"""The checkpoint files of a run folder, and resuming from them.

* ``last.safetensors`` + ``last_state.pt`` (optimiser, scheduler, python/numpy/torch RNG states,
  position in the data, best metric, and the weights again) and ``best.safetensors`` when the
  validation metric improves — all written atomically, by rank 0 only. A crash between the two
  files is harmless: resume takes the weights from ``last_state.pt``.
* Resume is exact: together with data order and augmentation that are functions of ``(seed,
  epoch, index)``, the restored state makes the losses after ``--resume`` equal those of an
  uninterrupted run. A resumed run may change only :data:`RESUMABLE_KEYS` of its config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from refseg.config import Config, to_dict
from refseg.engine.checkpoint import (
    check_tensors, load_model, load_training_state, read_header, rng_state, save_model, save_training_state,
    saved_tensors, set_rng_state,
)
from refseg.errors import CheckpointError, ConfigError, TrainingError
from refseg.models.base import RefSegModel, import_plugins

if TYPE_CHECKING:
    from refseg.engine.trainer import Trainer

LAST_MODEL = "last.safetensors"
LAST_STATE = "last_state.pt"
BEST_MODEL = "best.safetensors"
#: Config keys a resumed run may change: they do not change what the run computes.
#: The budget (epochs, iterations) may grow: the run goes on to the new one.
RESUMABLE_KEYS = frozenset({"train.out_dir", "train.device", "train.workers", "train.progress",
                            "train.log_every", "train.checkpoint_every", "train.epochs", "train.iterations"})


@dataclass
class RunningMeans:
    """Loss and IoU of the training samples since the last log row (sums and count)."""

    loss: float = 0.0
    iou: float = 0.0
    n: int = 0

    def add(self, loss: float, ious: Tensor) -> None:
        self.loss += loss * len(ious)
        self.iou += float(ious.sum())
        self.n += len(ious)


@dataclass
class TrainState:
    """Where a run is — what a checkpoint saves — and the last step's numbers, for the hooks."""

    epoch: int = 0
    batches_done: int = 0  # of ``epoch`` (a run resumed inside an epoch starts past the ones it did)
    step: int = 0
    best: float = -math.inf
    loss: Tensor | None = None  # of the last step
    lr: float = 0.0  # the rate the last step used (first parameter group)
    window: RunningMeans = field(default_factory=RunningMeans)
    metrics: dict[str, Any] | None = None  # validation at the end of this epoch, if any
    improved: bool = False  # whether ``metrics`` beat ``best``

    def position(self, steps_per_epoch: int) -> tuple[int, int]:
        """(epoch, batches done in it) where a run resumed now goes on."""
        return (self.epoch + 1, 0) if self.batches_done >= steps_per_epoch else (self.epoch, self.batches_done)


def resolve_resume(resume: str | Path) -> Path:
    """A run folder, its ``last_state.pt`` or its ``last.safetensors`` → the training-state file."""
    path = Path(resume)
    if path.is_dir():
        path = path / LAST_STATE
    elif path.suffix == ".safetensors":
        path = path.with_name(LAST_STATE)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: training state not found: {path}")
    return path


class Checkpointer:
    """Saves a run's checkpoints into ``out_dir`` and resumes from ``resume_from`` (a training-state file)."""

    def __init__(self, out_dir: Path, resume_from: Path | None = None) -> None:
        self.out_dir = out_dir
        self.resume_from = resume_from

    def check_resumable(self, config: Config) -> None:
        """Refuse to resume with a config that differs from the run's outside :data:`RESUMABLE_KEYS`
        (checked before config.yaml is rewritten, so that it keeps describing the run)."""
        saved = read_header(self.resume_from.with_name(LAST_MODEL))["meta"].get("train_config")
        if not isinstance(saved, dict):
            raise ConfigError(f"cannot resume {self.out_dir}: its {LAST_MODEL} does not record the config of the run")
        changed = config_changes(saved, to_dict(config))
        if changed:
            raise ConfigError(
                f"cannot resume {self.out_dir} with a changed config: {'; '.join(changed[:4])}"
                f"{f' (and {len(changed) - 4} more)' if len(changed) > 4 else ''}; resume with the run's own "
                f"config ({self.out_dir / 'config.yaml'}) or start a new run"
            )

    def saved_model(self, config: Config) -> RefSegModel:
        """The model of the run being resumed (its config, vocabulary and weights)."""
        import_plugins(config)
        model, _ = load_model(self.resume_from.with_name(LAST_MODEL))
        if model.name != config.model.name:
            raise CheckpointError(f"cannot resume a {model.name} run with model {config.model.name}")
        return model.train()

    def restore(self, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any) -> TrainState:
        """Load the training state into the run's objects and the RNGs; returns where the run was."""
        state = load_training_state(self.resume_from)
        if "model" in state:
            check_tensors(self.resume_from, model, state["model"], f"does not belong to the run in {self.out_dir}")
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            position = TrainState(epoch=int(state["epoch"]), batches_done=int(state["skip_batches"]),
                                  step=int(state["step"]), best=float(state["best"]))
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise CheckpointError(
                f"{self.resume_from} does not belong to the run in {self.out_dir}: {str(exc).splitlines()[0]}"
            ) from None
        if "model" in state:
            model.load_state_dict(state["model"], strict=False)
        return position

    def save(self, trainer: "Trainer", metrics: dict[str, Any] | None = None, improved: bool = False) -> None:
        """``last.safetensors`` + ``last_state.pt`` at the trainer's state (and ``best.safetensors``)."""
        state, model = trainer.state, trainer.model
        # every process checks (DDP keeps the weights identical), so that all of them stop together
        if not finite_weights(model):
            raise divergence_error(trainer, f"by step {state.step}: the weights are no longer finite")
        if not trainer.runtime.is_main:
            return
        epoch, skip = state.position(trainer.steps_per_epoch)
        meta = {
            "epoch": epoch, "step": state.step, "image_size": trainer.config.data.image_size,
            "metrics": {k: v for k, v in (metrics or {}).items() if k != "by_length"},
            "train_config": to_dict(trainer.config),
        }
        save_model(self.out_dir / LAST_MODEL, model, meta)
        if improved:
            save_model(self.out_dir / BEST_MODEL, model, meta)
        save_training_state(self.out_dir / LAST_STATE, {
            "epoch": epoch, "skip_batches": skip, "step": state.step, "best": float(state.best),
            "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(), "rng": rng_state(),
            # the weights again, so that a kill between the two files cannot pair new weights with an old state
            "model": saved_tensors(model),
        })


def divergence_error(trainer: "Trainer", what: str) -> TrainingError:
    """The one-line error of a run whose loss or weights stopped being finite (nothing is saved after it)."""
    kept = (f"the checkpoints in {trainer.out_dir} keep the last finite weights"
            if (trainer.out_dir / LAST_MODEL).exists() else "no checkpoint was written")
    return TrainingError(
        f"training diverged {what}; lower train.lr (now {trainer.config.train.lr:g}) or set train.grad_clip; {kept}"
    )


def finite_weights(model: nn.Module) -> bool:
    """Whether every floating-point tensor of the model's state is finite."""
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for each dotted config key that differs, outside :data:`RESUMABLE_KEYS`."""
    old, new = _flatten(saved), _flatten(current)
    keys = sorted((old.keys() | new.keys()) - RESUMABLE_KEYS)
    return [f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys if old.get(k) != new.get(k)]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
