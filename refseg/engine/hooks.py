"""Hooks of the training loop, as in detectron2: each does one job around the steps of
:class:`~refseg.engine.trainer.Trainer`, which calls them in the order of its ``build_hooks()``.

* :class:`StageSchedule` — the two-stage schedule (paper 1 §4.2) of a model with stages;
* :class:`Validation` — metrics on ``data.val`` every ``train.eval_every`` epochs and at the end; the best;
* :class:`MetricsLog` — ``train.csv``, ``val.csv`` and TensorBoard scalars (rank 0);
* :class:`EpochCheckpoint` and :class:`PeriodicCheckpoint` — checkpoints after each epoch and every
  ``train.checkpoint_every`` steps inside one (:class:`~refseg.engine.checkpointer.Checkpointer`).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refseg.engine.checkpointer import Checkpointer, RunningMeans

if TYPE_CHECKING:
    from refseg.engine.trainer import Trainer


class Hook:
    """Called by the trainer at these points of a run; each does nothing unless overridden."""

    def before_train(self, trainer: "Trainer") -> None:
        """Once, after the run's objects are built (and restored when resuming)."""

    def before_epoch(self, trainer: "Trainer") -> None:
        """Before the first step of ``trainer.state.epoch``."""

    def after_step(self, trainer: "Trainer") -> None:
        """After each optimiser step (``trainer.state`` holds its loss, rate and counters)."""

    def after_epoch(self, trainer: "Trainer") -> None:
        """After the last step of an epoch (finished, or cut short by ``train.iterations``)."""

    def after_train(self, trainer: "Trainer") -> None:
        """Once, after the last epoch."""


class StageSchedule(Hook):
    """A model with :attr:`~refseg.models.base.RefSegModel.stages` runs its first (low-resolution)
    stage for ``epochs`` epochs and its last afterwards; with ``restart`` the optimiser state
    (momentum, Adam moments) is not carried into the last stage."""

    def __init__(self, epochs: int, restart: bool) -> None:
        self.epochs, self.restart = epochs, restart

    def before_epoch(self, trainer: "Trainer") -> None:
        model, epoch = trainer.model, trainer.state.epoch
        model.set_stage(model.stages[0] if epoch < self.epochs else model.stages[-1])
        if self.restart and epoch == self.epochs and not trainer.state.batches_done:
            trainer.optimizer.state.clear()


class Validation(Hook):
    """Metrics on ``data.val`` after every ``every``-th finished epoch (0: none) and after the last
    step; keeps the best value of ``metric`` in ``trainer.state``."""

    def __init__(self, every: int, metric: str) -> None:
        self.every, self.metric = every, metric

    def after_epoch(self, trainer: "Trainer") -> None:
        state = trainer.state
        finished = state.batches_done >= trainer.steps_per_epoch
        last = state.step >= trainer.total_steps
        state.metrics, state.improved = None, False
        if not (last or (self.every and finished and (state.epoch + 1) % self.every == 0)):
            return
        state.metrics = metrics = trainer.validate(trainer.model, trainer.cache).summary()
        trainer.log(
            f"epoch {state.epoch + 1}: val mean IoU {100 * metrics['mean_iou']:.2f}, "
            f"overall IoU {100 * metrics['overall_iou']:.2f} (n={metrics['n']})"
        )
        if (metrics[self.metric] or 0.0) > state.best:
            state.best, state.improved = metrics[self.metric], True


class MetricsLog(Hook):
    """``train.csv`` (mean loss and IoU every ``every`` steps and at the end of each epoch, with the
    learning rate), ``val.csv`` and, when tensorboard is installed, the same as TensorBoard scalars."""

    TRAIN_FIELDS = ["epoch", "step", "loss", "lr", "iou"]
    VAL_FIELDS = ["epoch", "step", "n", "overall_iou", "mean_iou", "prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8",
                  "prec@0.9"]

    def __init__(self, out_dir: Path, every: int) -> None:
        self.out_dir, self.every = out_dir, every

    def before_train(self, trainer: "Trainer") -> None:
        keep = trainer.state.step if trainer.resumed else None
        self.train_log = CsvLog(self.out_dir / "train.csv", self.TRAIN_FIELDS, keep)
        self.val_log = CsvLog(self.out_dir / "val.csv", self.VAL_FIELDS, keep)
        self.board = _tensorboard(self.out_dir)

    def after_step(self, trainer: "Trainer") -> None:
        state, window = trainer.state, trainer.state.window
        if state.step % self.every and state.batches_done != trainer.steps_per_epoch:
            return
        loss, iou = window.loss / window.n, window.iou / window.n
        self.train_log.write({"epoch": state.epoch + 1, "step": state.step, "loss": f"{loss:.6g}",
                              "lr": f"{state.lr:.6g}", "iou": f"{iou:.4f}"})
        self._scalars(state.step, {"train/loss": loss, "train/iou": iou})
        state.window = RunningMeans()

    def after_epoch(self, trainer: "Trainer") -> None:
        state, metrics = trainer.state, trainer.state.metrics
        if metrics is None:
            return
        self.val_log.write({"epoch": state.epoch + 1, "step": state.step, **{
            k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in metrics.items() if k != "by_length"}})
        self._scalars(state.step, {"val/mean_iou": metrics["mean_iou"], "val/overall_iou": metrics["overall_iou"]})

    def after_train(self, trainer: "Trainer") -> None:
        if self.board is not None:
            self.board.close()

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        if self.board is not None:
            for tag, value in values.items():
                self.board.add_scalar(tag, value, step)


class EpochCheckpoint(Hook):
    """A checkpoint after every epoch, with its validation metrics (``best.safetensors`` when they improved)."""

    def __init__(self, checkpointer: Checkpointer) -> None:
        self.checkpointer = checkpointer

    def after_epoch(self, trainer: "Trainer") -> None:
        self.checkpointer.save(trainer, trainer.state.metrics, trainer.state.improved)


class PeriodicCheckpoint(Hook):
    """A checkpoint every ``every`` steps inside an epoch (the end of an epoch has its own)."""

    def __init__(self, checkpointer: Checkpointer, every: int) -> None:
        self.checkpointer, self.every = checkpointer, every

    def after_step(self, trainer: "Trainer") -> None:
        state = trainer.state
        if state.step % self.every == 0 and state.batches_done < trainer.steps_per_epoch \
                and state.step < trainer.total_steps:
            self.checkpointer.save(trainer)


class CsvLog:
    """Append-only CSV; on resume, rows after the resumed step are dropped (they will be redone)."""

    def __init__(self, path: Path, fields: list[str], keep_until_step: int | None) -> None:
        self.path, self.fields = path, fields
        rows: list[dict[str, str]] = []
        if keep_until_step is not None and path.is_file():
            with path.open(newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= keep_until_step]
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore").writerow(row)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a run's CSV log."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _tensorboard(out_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))
