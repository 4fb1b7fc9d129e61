"""The training loop: single process or DDP under ``torchrun``, AMP, exact resume, feature cache.

``train(config)`` writes into the run folder (``train.out_dir``) ``config.yaml`` (the resolved
config), the logs and the checkpoints. :class:`Trainer` builds the run — model (new, or the one
being resumed), data, optimiser, schedule, feature cache — and then runs a short step loop (a
step stops the run on a NaN or infinite loss, before its backward pass); what happens around the
steps is done by hooks (:mod:`refseg.engine.hooks`, listed by :meth:`Trainer.build_hooks`): the
two-stage schedule, validation and the best metric, ``train.csv`` / ``val.csv`` / TensorBoard, and
the checkpoints (:mod:`refseg.engine.checkpointer`, which also describes what makes resume exact).

Under ``torchrun`` each process trains on its shard (gloo on CPU, NCCL on GPU) and validation
metrics are gathered across processes. Models listed in :data:`STAGED_TRAINING` are trained by
their own routine instead of the step loop.
"""
from __future__ import annotations

import importlib
import math
import os
import random
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from refseg.config import Config, save_config, to_dict
from refseg.data.dataset import RefDataset
from refseg.data.sample import RefSample
from refseg.data.sources import load_samples
from refseg.engine.checkpoint import rng_state, save_model, set_rng_state
from refseg.engine.checkpointer import (
    BEST_MODEL, LAST_MODEL, LAST_STATE, Checkpointer, RunningMeans, TrainState, divergence_error, finite_weights,
    resolve_resume,
)
from refseg.engine.collate import Collator
from refseg.engine.feature_cache import FeatureCache
from refseg.engine.hooks import EpochCheckpoint, Hook, MetricsLog, PeriodicCheckpoint, StageSchedule, Validation
from refseg.engine.metrics import MetricAccumulator
from refseg.errors import ConfigError
from refseg.models.base import Batch, RefSegModel, build_model
from refseg.models.losses import distractor_logistic, soft_iou

#: Models trained stage by stage: model name → module with ``fit(model, samples, size, stages, lr, seed, log)``.
STAGED_TRAINING = {"instance_ref": "refseg.engine.instance_training"}


# --------------------------------------------------------------------------- process setup


@dataclass
class Runtime:
    """Where this process runs: rank, world size, device, mixed precision."""

    rank: int
    world: int
    device: torch.device
    amp_dtype: torch.dtype | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def setup_runtime(config: Config) -> Runtime:
    """Initialise torch.distributed when launched by torchrun; pick the device and AMP dtype."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = config.train.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={config.train.device!r} but CUDA is not available")
    device = torch.device(f"cuda:{local_rank}" if wanted == "cuda" else wanted)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world, device, _amp_dtype(config.train.amp, device))


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


# --------------------------------------------------------------------------- optimiser, schedule, step


def build_optimizer(config: Config, model: RefSegModel) -> torch.optim.Optimizer:
    """SGD with momentum (paper 1 §3.3) or Adam/AdamW (paper 3 §4.2) over the model's parameter groups
    (:meth:`~refseg.models.base.RefSegModel.parameter_groups`): a ``"backbone"`` group (fine-tuning)
    at ``lr * backbone_lr_scale``, the others at ``lr``; the log reports the rate of the first."""
    t = config.train
    scales = {"backbone": t.backbone_lr_scale}
    params = [{"params": group, "lr": t.lr * scales.get(name, 1.0)}
              for name, group in model.parameter_groups().items() if group]
    if not params:
        return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)  # e.g. whole_image
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)


def lr_factor(config: Config, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then poly (paper 4 §3.6), step or constant.
    With ``stage_restart`` each stage of the two-stage schedule runs the schedule over its own steps."""
    t = config.train
    switch = t.low_res_epochs * steps_per_epoch
    if t.stage_restart and 0 < switch < total_steps:
        step, total_steps = (step, switch) if step < switch else (step - switch, total_steps - switch)
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "poly":
        return max(0.0, 1.0 - step / max(1, total_steps)) ** t.poly_power
    if t.schedule == "step":
        return t.step_gamma ** ((step // max(1, steps_per_epoch)) // max(1, t.step_every))
    return 1.0


class _TrainStep(nn.Module):
    """Forward + loss in one module so DDP sees the loss and the logits as outputs. The model's own
    loss, plus ``iou_loss_weight`` × the per-sample soft-IoU loss of its logits and
    ``distractor_weight`` × the logistic loss on the target category's other pixels, each when > 0."""

    def __init__(self, model: RefSegModel, iou_loss_weight: float = 0.0, distractor_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.iou_loss_weight = iou_loss_weight
        self.distractor_weight = distractor_weight

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        out = self.model(batch)
        loss = self.model.loss(out, batch)
        if self.iou_loss_weight > 0:
            loss = loss + self.iou_loss_weight * soft_iou(out.logits, batch.masks, batch.valid)
        if self.distractor_weight > 0:
            loss = loss + self.distractor_weight * distractor_logistic(
                out.logits, batch.masks, batch.valid, batch.categories, batch.target_categories
            )
        return loss, out.logits


def batch_ious(logits: Tensor, batch: Batch) -> Tensor:
    """Per-sample IoU of ``logits > 0`` against the letterboxed targets (running training metric)."""
    size = batch.masks.shape[-2:]
    logits = F.interpolate(logits.detach().float(), size=size, mode="bilinear", align_corners=False)
    valid = batch.valid > 0.5
    pred = (logits > 0) & valid
    target = (batch.masks > 0.5) & valid
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- the loop


class Trainer:
    """One training run (see the module docstring). Use :func:`train` for the common case."""

    def __init__(
        self,
        config: Config,
        resume: str | Path | None = None,
        console: Any = None,
        feature_cache: FeatureCache | None = None,
    ) -> None:
        """``feature_cache`` may be shared by several runs (e.g. a benchmark of several heads): its
        keys keep apart what models with different image encoders cache; by default each run has its own."""
        self.config = config
        self.shared_cache = feature_cache
        resume_from = resolve_resume(resume) if resume is not None else None
        self.out_dir = resume_from.parent if resume_from else Path(config.train.out_dir or "runs/run")
        self.checkpointer = Checkpointer(self.out_dir, resume_from)
        self.runtime = setup_runtime(config)
        self.console = console
        self.train_samples: list[RefSample] = []
        self.val_samples: list[RefSample] = []

    @property
    def resumed(self) -> bool:
        return self.checkpointer.resume_from is not None

    def log(self, message: str) -> None:
        if self.runtime.is_main and self.console is not None:
            self.console.print(message)

    def run(self) -> Path:
        """Train; returns the run folder."""
        self._start()
        if self.config.model.name in STAGED_TRAINING:
            return self._run_staged()
        self._build()
        self.hooks = self.build_hooks()
        self._call("before_train")
        if self.cache is not None:
            self._fill_cache(self.cache, self.model, self.dataset, "training")
        step_module = self._step_module()
        state = self.state
        while state.epoch < self.epochs and state.step < self.total_steps:
            self._call("before_epoch")
            self._train_epoch(step_module)
            self._call("after_epoch")
            state.epoch, state.batches_done = state.position(self.steps_per_epoch)
        self._call("after_train")
        if self.runtime.world > 1:
            dist.barrier()
        return self.out_dir

    def build_hooks(self) -> list[Hook]:
        """The hooks of the run in calling order: validation before its row is logged, the log before
        the checkpoint (which may stop the run: it refuses weights that are no longer finite)."""
        t = self.config.train
        hooks: list[Hook] = []
        if t.low_res_epochs > 0 and self.model.stages:
            hooks.append(StageSchedule(t.low_res_epochs, t.stage_restart))
        if self.val_samples:
            hooks.append(Validation(t.eval_every, t.best_metric))
        if self.runtime.is_main:
            hooks.append(MetricsLog(self.out_dir, t.log_every))
        hooks.append(EpochCheckpoint(self.checkpointer))
        if t.checkpoint_every:
            hooks.append(PeriodicCheckpoint(self.checkpointer, t.checkpoint_every))
        return hooks

    def _call(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self)

    # ----------------------------------------------------------------------- building the run

    def _start(self) -> None:
        """Check the config and the run folder, seed the RNGs, read the data."""
        cfg = self.config
        for key in ("iou_loss_weight", "distractor_weight"):
            if getattr(cfg.train, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(cfg.train, key)}")
        self._check_out_dir()
        seed_everything(cfg.train.seed)
        self.train_samples = load_samples(cfg, "train")
        if not self.train_samples:
            raise ConfigError("data.train is empty: give at least one training dataset")
        self.val_samples = load_samples(cfg, "val") if cfg.data.val else []

    def _build(self) -> None:
        """Model, feature cache, data, optimiser, schedule and the state the run starts from."""
        cfg, rt = self.config, self.runtime
        if self.resumed:
            model = self.checkpointer.saved_model(cfg)
        else:
            model = build_model(cfg, [s.sentence for s in self.train_samples])
        self._prepare_out_dir()
        self.model = model.to(rt.device)
        self.model.train()
        self.cache = self._feature_cache()
        self.dataset = RefDataset(
            self.train_samples, cfg.data.image_size, cfg.data.augment, cfg.train.seed, cached=self.cache is not None
        )
        self.sampler = DistributedSampler(self.dataset, num_replicas=rt.world, rank=rt.rank, shuffle=True,
                                          seed=cfg.train.seed)
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.train.batch_size)
        self.total_steps = cfg.train.iterations or self.steps_per_epoch * cfg.train.epochs
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(cfg, step, self.total_steps, self.steps_per_epoch)
        )
        self.scaler = torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16)
        self.state = TrainState()
        if self.resumed:
            self.state = self.checkpointer.restore(model, self.optimizer, self.scheduler, self.scaler)
            self.log(f"resumed from {self.checkpointer.resume_from} at epoch {self.state.epoch + 1}, "
                     f"step {self.state.step}")

    def _feature_cache(self) -> FeatureCache | None:
        """The cache of backbone taps when the backbone is frozen and ``data.cache_features`` is on."""
        data = self.config.data
        if not (data.cache_features and self.model.backbone_frozen):
            return None
        if self.shared_cache is not None:
            return self.shared_cache
        return FeatureCache(torch.float16 if data.cache_dtype == "float16" else torch.float32)

    def _step_module(self) -> nn.Module:
        """Forward + loss of the model, wrapped in DDP under torchrun."""
        t, rt = self.config.train, self.runtime
        module: nn.Module = _TrainStep(self.model, t.iou_loss_weight, t.distractor_weight)
        if rt.world > 1:
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        return module

    def _check_out_dir(self) -> None:
        if not self.resumed and (self.out_dir / LAST_STATE).exists():
            raise ConfigError(
                f"run folder {self.out_dir} already has a run: pass --resume {self.out_dir} "
                "or choose another train.out_dir=..."
            )
        if self.resumed:
            self.checkpointer.check_resumable(self.config)

    def _prepare_out_dir(self) -> None:
        """Create the run folder and write config.yaml, once the data and the model have loaded."""
        if self.runtime.is_main:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                from refseg.errors import OutputError

                raise OutputError(f"cannot create run folder {self.out_dir}: {exc.strerror}") from None
            save_config(self.config, self.out_dir / "config.yaml")

    # ----------------------------------------------------------------------- the steps

    def _train_epoch(self, step_module: nn.Module) -> None:
        """The remaining steps of ``state.epoch``, each followed by the ``after_step`` hooks."""
        state = self.state
        state.window = RunningMeans()
        with self._progress(f"epoch {state.epoch + 1}/{self.epochs}", self.steps_per_epoch,
                            state.batches_done) as advance:
            for collated in self._loader():
                self._step(step_module, collated)
                advance(loss=float(state.loss), iou=state.window.iou / state.window.n)
                self._call("after_step")
                if state.step >= self.total_steps:
                    break

    def _loader(self) -> DataLoader:
        """The batches of ``state.epoch`` not done yet, in an order that depends only on (seed, epoch)."""
        t, epoch = self.config.train, self.state.epoch
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        return DataLoader(
            self.dataset, batch_size=t.batch_size, sampler=list(self.sampler)[self.state.batches_done * t.batch_size :],
            collate_fn=Collator(self.model.tokenize), num_workers=t.workers,
            # its own generator: creating the iterator must not draw from the global torch RNG,
            # or a mid-epoch resume would see different dropout than the uninterrupted run
            generator=torch.Generator().manual_seed(t.seed * 100_003 + epoch),
        )

    def _step(self, step_module: nn.Module, collated: Any) -> None:
        """One optimiser step; its loss, learning rate and IoU go to ``self.state``."""
        rt, t, state, optimizer, scaler = self.runtime, self.config.train, self.state, self.optimizer, self.scaler
        batch = collated.batch
        if self.cache is not None:
            batch.features = self.cache.features(self.model, self.config.data.image_size, collated.views, rt.device)
        batch = batch.to(rt.device)
        with rt.autocast():
            loss, logits = step_module(batch)
        if _diverged(loss, rt.world):
            raise divergence_error(self, f"at step {state.step + 1}: the loss is {float(loss.detach()):g}")
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:  # False for models with nothing to train (whole_image)
            scaler.scale(loss).backward()
            if t.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        state.lr = optimizer.param_groups[0]["lr"]
        if loss.requires_grad:
            self.scheduler.step()
        state.step += 1
        state.batches_done += 1
        state.loss = loss.detach()
        state.window.add(float(state.loss), batch_ious(logits, batch))

    # ----------------------------------------------------------------------- staged models

    def _run_staged(self) -> Path:
        """Models trained stage by stage by their own routine (``STAGED_TRAINING``), then validated and saved."""
        cfg = self.config
        model = build_model(cfg, [s.sentence for s in self.train_samples])
        if self.resumed:
            raise ConfigError(f"{cfg.model.name} trains in stages and cannot resume; start the run again")
        self._prepare_out_dir()
        fit = importlib.import_module(STAGED_TRAINING[cfg.model.name]).fit
        losses = fit(model, self.train_samples, cfg.data.image_size, cfg.train.stages, lr=cfg.train.lr,
                     seed=cfg.train.seed, log=self.log)
        if not finite_weights(model):
            raise divergence_error(self, "in its staged training: the weights are no longer finite")
        model.eval()
        metrics = self.validate(model, FeatureCache(torch.float32)).summary() if self.val_samples else None
        if metrics is not None:
            self.log(f"val mean IoU {100 * metrics['mean_iou']:.2f}, overall IoU {100 * metrics['overall_iou']:.2f}")
        if self.runtime.is_main:
            meta = {"image_size": cfg.data.image_size, "losses": losses,
                    "metrics": {k: v for k, v in (metrics or {}).items() if k != "by_length"},
                    "train_config": to_dict(cfg)}
            save_model(self.out_dir / LAST_MODEL, model, meta)
            save_model(self.out_dir / BEST_MODEL, model, meta)
        return self.out_dir

    # ----------------------------------------------------------------------- helpers

    def validate(self, model: RefSegModel, cache: FeatureCache | None) -> MetricAccumulator:
        """Metrics on ``data.val``, as :func:`~refseg.engine.evaluator.evaluate` gives them (each
        process scores its shard; the accumulators are gathered)."""
        from refseg.engine.evaluator import evaluate, evaluation_segmenter

        rt = self.runtime
        saved_rng = rng_state()  # validation must not change the training run's random draws
        shard = self.val_samples[rt.rank :: rt.world]
        canvas = self.config.data.image_size
        if cache is not None:
            self._fill_cache(cache, model, RefDataset(shard, canvas, cached=True), "validation")
        was_training = model.training
        segmenter = evaluation_segmenter(model, canvas, device=rt.device)
        batch_size = self.config.train.eval_batch_size
        accumulator = evaluate(segmenter, shard, batch_size=batch_size, feature_cache=cache, autocast=rt.autocast)
        model.train(was_training)
        set_rng_state(saved_rng)
        return accumulator.gather()

    def _fill_cache(self, cache: FeatureCache, model: RefSegModel, dataset: RefDataset, what: str) -> None:
        todo = len(cache.missing(model, dataset))
        if not todo:
            return
        self.log(f"caching the backbone features of {todo} {what} image views (once; the epochs then reuse them)")
        with self._progress(f"caching {what} features", todo, 0) as advance:
            done = [0]

            def on_progress(n: int, _total: int) -> None:
                for _ in range(n - done[0]):
                    advance()
                done[0] = n

            cache.fill(model, dataset, self.runtime.device, self.config.train.eval_batch_size, on_progress)
        self.log(f"cached backbone features of {len(cache)} image views")

    def _progress(self, label: str, total: int, completed: int):
        """Context manager yielding ``advance(**fields)``; a rich bar on rank 0 when enabled."""
        from contextlib import contextmanager

        @contextmanager
        def bar() -> Iterator[Callable[..., None]]:
            if not (self.runtime.is_main and self.config.train.progress):
                yield lambda **_: None
                return
            from rich.progress import (
                BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
            )

            # elapsed as well as remaining: written to a file, only the finished bar is shown
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
            with Progress(*columns, console=self.console, transient=False) as progress:
                task = progress.add_task(label, total=total, completed=completed, info="")

                def advance(loss: float | None = None, iou: float | None = None) -> None:
                    info = "" if loss is None else f"loss {loss:.4f}  IoU {100 * (iou or 0):.1f}"
                    progress.update(task, advance=1, info=info)

                yield advance

        return bar()


def _diverged(loss: Tensor, world: int) -> bool:
    """Whether the loss of any process is NaN or infinite (all processes agree, so all stop)."""
    bad = (~torch.isfinite(loss.detach().float())).float().reshape(1)
    if world > 1:
        dist.all_reduce(bad)
    return bool(bad.item() > 0)


def train(config: Config, resume: str | Path | None = None, console: Any = None) -> Path:
    """Train ``config`` (optionally resuming a run); returns the run folder."""
    return Trainer(config, resume, console).run()
