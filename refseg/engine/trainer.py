"""The training loop: single process or DDP under ``torchrun``, AMP, exact resume, feature cache.

``train(config)`` writes into the run folder (``train.out_dir``):

* ``config.yaml`` — the resolved config;
* ``train.csv`` (epoch, step, loss, lr, running IoU) and ``val.csv`` (validation metrics);
* ``last.safetensors`` + ``last_state.pt`` (optimiser, scheduler, python/numpy/torch RNG states,
  epoch, batches done, best metric, and the weights again) after every epoch and every
  ``train.checkpoint_every`` steps, and ``best.safetensors`` when the validation metric
  improves — all written atomically, by rank 0 only. A crash between the two files is harmless:
  resume takes the weights from ``last_state.pt``.

Resume is exact: the data order of an epoch is a function of ``(seed, epoch)``
(:class:`~torch.utils.data.DistributedSampler`), augmentation a function of ``(seed, epoch,
index)`` and every RNG state is restored, so the losses after ``--resume`` equal those of an
uninterrupted run. Under ``torchrun`` each process trains on its shard (gloo on CPU, NCCL on
GPU) and validation metrics are gathered across processes.
"""
from __future__ import annotations

import csv
import importlib
import inspect
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
from refseg.data.dataset import Collator, FeatureCache, RefDataset, load_samples
from refseg.data.sample import RefSample
from refseg.engine.metrics import MetricAccumulator
from refseg.errors import CheckpointError, ConfigError, TrainingError
from refseg.models.base import Batch, RefSegModel, create_model
from refseg.models.losses import distractor_logistic, soft_iou

LAST_MODEL = "last.safetensors"
LAST_STATE = "last_state.pt"
BEST_MODEL = "best.safetensors"
#: Config keys a resumed run may change: they do not change what the run computes.
#: The budget (epochs, iterations) may grow: the run goes on to the new one.
RESUMABLE_KEYS = frozenset({"train.out_dir", "train.device", "train.workers", "train.progress",
                            "train.log_every", "train.checkpoint_every", "train.epochs", "train.iterations"})


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


# --------------------------------------------------------------------------- model, optimiser, schedule


def import_plugins(config: Config) -> None:
    """Import the modules listed in ``imports`` (they register custom models)."""
    for module in config.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"imports: cannot import {module!r}: {exc}") from None


def build_model(config: Config, train_texts: list[str]) -> RefSegModel:
    """``create_model(config.model.name, **kwargs)`` after checking the kwargs against the
    constructor chain. ``vocab: train`` becomes the vocabulary of ``train_texts`` and
    ``words: train`` (per-word baseline) their ``num_words`` most frequent words."""
    import_plugins(config)
    from refseg.models import base

    base._import_models()
    cls = base._REGISTRY.get(config.model.name)
    if cls is None:
        return create_model(config.model.name)  # raises the ConfigError listing the models
    kwargs = dict(config.model.kwargs)
    valid = constructor_keys(cls)
    if valid is not None:
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            from refseg.config import suggest

            raise ConfigError(
                f"unknown model key 'model.{unknown[0]}' for {config.model.name}{suggest(unknown[0], sorted(valid))}"
            )
    if kwargs.get("vocab") == "train":
        from refseg.models.text import Vocab

        kwargs["vocab"] = Vocab.build(train_texts).to_list()
    if kwargs.get("words") == "train":  # per-word baseline: the N most frequent training words
        from refseg.models.text import most_frequent_words

        kwargs["words"] = most_frequent_words(train_texts, int(kwargs.get("num_words", 500)))
    try:
        return create_model(config.model.name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {config.model.name}: {str(exc).splitlines()[0]}") from None


def constructor_keys(cls: type[RefSegModel]) -> set[str] | None:
    """Keyword arguments a model class accepts, following ``**kwargs`` up to :class:`RefSegModel`
    (None when some constructor accepts anything)."""
    keys: set[str] = set()
    for klass in cls.__mro__:
        if klass is RefSegModel:
            return keys
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        keys |= {n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return keys
    return None


def set_stage(model: RefSegModel, stage: str) -> None:
    """Two-stage schedule (paper 1 §4.2): switch a model with a ``stage`` option to "low"/"high"."""
    model.config["stage"] = stage


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (paper 1 §3.3) or Adam/AdamW (paper 3 §4.2) over trainable parameters.

    Trainable backbone parameters (fine-tuning) form a second group at ``lr * backbone_lr_scale``;
    the first group, whose rate the log reports, holds everything else."""
    t = config.train
    head: list[Tensor] = []
    backbone: list[Tensor] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if name.startswith("backbone.") else head).append(param)
    if not head and not backbone:
        return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)  # e.g. whole_image
    groups = ({"params": head}, {"params": backbone, "lr": t.lr * t.backbone_lr_scale})
    params = [group for group in groups if group["params"]]
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


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/builtins (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- logs


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


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


# --------------------------------------------------------------------------- resume


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
        """``feature_cache`` may be shared by runs whose models have the same frozen backbone and
        image size (e.g. a benchmark of several heads); by default each run has its own."""
        self.config = config
        self.shared_cache = feature_cache
        self.resume_state = resolve_resume(resume) if resume is not None else None
        self.out_dir = self.resume_state.parent if self.resume_state else Path(config.train.out_dir or "runs/run")
        self.runtime = setup_runtime(config)
        self.console = console
        self.train_samples: list[RefSample] = []
        self.val_samples: list[RefSample] = []

    def log(self, message: str) -> None:
        if self.runtime.is_main and self.console is not None:
            self.console.print(message)

    def _check_out_dir(self) -> None:
        if self.resume_state is None and (self.out_dir / LAST_STATE).exists():
            raise ConfigError(
                f"run folder {self.out_dir} already has a run: pass --resume {self.out_dir} "
                "or choose another train.out_dir=..."
            )
        if self.resume_state is not None:
            self._check_resumed_config()

    def _prepare_out_dir(self) -> None:
        """Create the run folder and write config.yaml, once the data and the model have loaded."""
        if self.runtime.is_main:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                from refseg.errors import OutputError

                raise OutputError(f"cannot create run folder {self.out_dir}: {exc.strerror}") from None
            save_config(self.config, self.out_dir / "config.yaml")

    def run(self) -> Path:
        """Train; returns the run folder."""
        cfg, rt = self.config, self.runtime
        for key in ("iou_loss_weight", "distractor_weight"):
            if getattr(cfg.train, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(cfg.train, key)}")
        self._check_out_dir()
        seed_everything(cfg.train.seed)
        self.train_samples = load_samples(cfg, "train")
        if not self.train_samples:
            raise ConfigError("data.train is empty: give at least one training dataset")
        self.val_samples = load_samples(cfg, "val") if cfg.data.val else []
        if cfg.model.name in STAGED_TRAINING:
            return self._run_staged(build_model(cfg, [s.sentence for s in self.train_samples]))
        if self.resume_state is not None:
            model = self._saved_model()
        else:
            model = build_model(cfg, [s.sentence for s in self.train_samples])
        self._prepare_out_dir()
        model = model.to(rt.device)
        model.train()
        cache = None
        if cfg.data.cache_features and model.backbone_frozen:
            cache = self.shared_cache
            if cache is None:
                cache = FeatureCache(torch.float16 if cfg.data.cache_dtype == "float16" else torch.float32)
        dataset = RefDataset(
            self.train_samples, cfg.data.image_size, cfg.data.augment, cfg.train.seed, cached=cache is not None
        )
        sampler = DistributedSampler(dataset, num_replicas=rt.world, rank=rt.rank, shuffle=True, seed=cfg.train.seed)
        steps_per_epoch = math.ceil(len(sampler) / cfg.train.batch_size)
        total_steps = cfg.train.iterations or steps_per_epoch * cfg.train.epochs
        epochs = math.ceil(total_steps / steps_per_epoch)
        optimizer = build_optimizer(cfg, model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(cfg, step, total_steps, steps_per_epoch)
        )
        scaler = torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16)

        start_epoch, skip_batches, step, best = 0, 0, 0, -math.inf
        if self.resume_state is not None:
            start_epoch, skip_batches, step, best = self._restore(model, optimizer, scheduler, scaler)
            self.log(f"resumed from {self.resume_state} at epoch {start_epoch + 1}, step {step}")
        keep = step if self.resume_state is not None else None
        train_log = val_log = board = None
        if rt.is_main:
            train_log = CsvLog(self.out_dir / "train.csv", ["epoch", "step", "loss", "lr", "iou"], keep)
            val_log = CsvLog(self.out_dir / "val.csv", ["epoch", "step", "n", "overall_iou", "mean_iou",
                                                        "prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8", "prec@0.9"], keep)
            board = _tensorboard(self.out_dir)

        if cache is not None:
            self._fill_cache(cache, model, dataset, "training")
        step_module: nn.Module = _TrainStep(model, cfg.train.iou_loss_weight, cfg.train.distractor_weight)
        if rt.world > 1:
            step_module = nn.parallel.DistributedDataParallel(
                step_module,
                device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        collate = Collator(model.tokenize)
        two_stage = cfg.train.low_res_epochs > 0 and "stage" in model.config

        for epoch in range(start_epoch, epochs):
            if step >= total_steps:
                break
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            if two_stage:
                set_stage(model, "low" if epoch < cfg.train.low_res_epochs else "high")
                if cfg.train.stage_restart and epoch == cfg.train.low_res_epochs and not skip_batches:
                    optimizer.state.clear()  # no momentum / Adam moments carried into the new stage
            indices = list(sampler)[skip_batches * cfg.train.batch_size :]
            loader = DataLoader(
                dataset, batch_size=cfg.train.batch_size, sampler=indices, collate_fn=collate,
                num_workers=cfg.train.workers,
                # its own generator: creating the iterator must not draw from the global torch RNG,
                # or a mid-epoch resume would see different dropout than the uninterrupted run
                generator=torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch),
            )
            batches_done = skip_batches
            skip_batches = 0
            window_loss, window_iou, window_n = 0.0, 0.0, 0
            with self._progress(f"epoch {epoch + 1}/{epochs}", steps_per_epoch, batches_done) as advance:
                for collated in loader:
                    batch = collated.batch
                    if cache is not None:
                        batch.features = cache.features(collated.views, rt.device)
                    batch = batch.to(rt.device)
                    with rt.autocast():
                        loss, logits = step_module(batch)
                    if _diverged(loss, rt.world):
                        raise self._divergence(f"at step {step + 1}: the loss is {float(loss.detach()):g}")
                    optimizer.zero_grad(set_to_none=True)
                    if loss.requires_grad:  # False for models with nothing to train (whole_image)
                        scaler.scale(loss).backward()
                        if cfg.train.grad_clip > 0:
                            scaler.unscale_(optimizer)
                            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                    lr = optimizer.param_groups[0]["lr"]
                    if loss.requires_grad:
                        scheduler.step()
                    step += 1
                    batches_done += 1
                    ious = batch_ious(logits, batch)
                    window_loss += float(loss.detach()) * len(ious)
                    window_iou += float(ious.sum())
                    window_n += len(ious)
                    advance(loss=float(loss.detach()), iou=window_iou / window_n)
                    if step % cfg.train.log_every == 0 or batches_done == steps_per_epoch:
                        row = {"epoch": epoch + 1, "step": step, "loss": f"{window_loss / window_n:.6g}",
                               "lr": f"{lr:.6g}", "iou": f"{window_iou / window_n:.4f}"}
                        if train_log is not None:
                            train_log.write(row)
                        if board is not None:
                            board.add_scalar("train/loss", window_loss / window_n, step)
                            board.add_scalar("train/iou", window_iou / window_n, step)
                        window_loss, window_iou, window_n = 0.0, 0.0, 0
                    if step >= total_steps:
                        break
                    every_n = cfg.train.checkpoint_every
                    if every_n and step % every_n == 0 and batches_done < steps_per_epoch:
                        self._save(model, optimizer, scheduler, scaler, epoch, batches_done, step, best, None, False)
            finished_epoch = batches_done >= steps_per_epoch
            last = step >= total_steps
            metrics = None
            every = cfg.train.eval_every
            if self.val_samples and (last or (every and finished_epoch and (epoch + 1) % every == 0)):
                metrics = self.validate(model, cache).summary()
                self.log(
                    f"epoch {epoch + 1}: val mean IoU {100 * metrics['mean_iou']:.2f}, "
                    f"overall IoU {100 * metrics['overall_iou']:.2f} (n={metrics['n']})"
                )
                if val_log is not None:
                    val_log.write({"epoch": epoch + 1, "step": step, **{
                        k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in metrics.items() if k != "by_length"}})
                if board is not None:
                    board.add_scalar("val/mean_iou", metrics["mean_iou"], step)
                    board.add_scalar("val/overall_iou", metrics["overall_iou"], step)
            improved = metrics is not None and (metrics[cfg.train.best_metric] or 0.0) > best
            if improved:
                best = metrics[cfg.train.best_metric]
            next_epoch, next_skip = (epoch + 1, 0) if finished_epoch else (epoch, batches_done)
            self._save(model, optimizer, scheduler, scaler, next_epoch, next_skip, step, best, metrics, improved)
        if board is not None:
            board.close()
        if rt.world > 1:
            dist.barrier()
        return self.out_dir

    def _run_staged(self, model: RefSegModel) -> Path:
        """Models trained stage by stage by their own routine (``STAGED_TRAINING``), then validated and saved."""
        cfg = self.config
        if self.resume_state is not None:
            raise ConfigError(f"{cfg.model.name} trains in stages and cannot resume; start the run again")
        self._prepare_out_dir()
        fit = importlib.import_module(STAGED_TRAINING[cfg.model.name]).fit
        losses = fit(model, self.train_samples, cfg.data.image_size, cfg.train.stages, lr=cfg.train.lr,
                     seed=cfg.train.seed, log=self.log)
        if not finite_weights(model):
            raise self._divergence("in its staged training: the weights are no longer finite")
        model.eval()
        metrics = self.validate(model, FeatureCache(torch.float32)).summary() if self.val_samples else None
        if metrics is not None:
            self.log(f"val mean IoU {100 * metrics['mean_iou']:.2f}, overall IoU {100 * metrics['overall_iou']:.2f}")
        if self.runtime.is_main:
            from refseg.engine.checkpoint import save_model

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
        todo = sum(1 for view, _ in dataset.views() if view not in cache)
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

    def _save(self, model, optimizer, scheduler, scaler, epoch, skip, step, best, metrics, improved) -> None:
        # every process checks (DDP keeps the weights identical), so that all of them stop together
        if not finite_weights(model):
            raise self._divergence(f"by step {step}: the weights are no longer finite")
        if not self.runtime.is_main:
            return
        from refseg.engine.checkpoint import save_model, save_training_state, saved_tensors

        meta = {
            "epoch": epoch, "step": step, "image_size": self.config.data.image_size,
            "metrics": {k: v for k, v in (metrics or {}).items() if k != "by_length"},
            "train_config": to_dict(self.config),
        }
        save_model(self.out_dir / LAST_MODEL, model, meta)
        if improved:
            save_model(self.out_dir / BEST_MODEL, model, meta)
        save_training_state(self.out_dir / LAST_STATE, {
            "epoch": epoch, "skip_batches": skip, "step": step, "best": float(best),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(),
            # the weights again, so that a kill between the two files cannot pair new weights with an old state
            "model": saved_tensors(model),
        })

    def _divergence(self, what: str) -> TrainingError:
        """The one-line error of a run whose loss or weights stopped being finite (nothing is saved after it)."""
        kept = (f"the checkpoints in {self.out_dir} keep the last finite weights"
                if (self.out_dir / LAST_MODEL).exists() else "no checkpoint was written")
        return TrainingError(
            f"training diverged {what}; lower train.lr (now {self.config.train.lr:g}) or set train.grad_clip; {kept}"
        )

    def _saved_model(self) -> RefSegModel:
        """The model of the run being resumed (its config, vocabulary and weights)."""
        from refseg.engine.checkpoint import load_model

        import_plugins(self.config)
        model, _ = load_model(self.resume_state.with_name(LAST_MODEL))
        if model.name != self.config.model.name:
            raise CheckpointError(f"cannot resume a {model.name} run with model {self.config.model.name}")
        return model.train()

    def _check_resumed_config(self) -> None:
        """Refuse to resume with a config that differs from the run's outside :data:`RESUMABLE_KEYS`
        (checked before config.yaml is rewritten, so that it keeps describing the run)."""
        from refseg.engine.checkpoint import read_header

        saved = read_header(self.resume_state.with_name(LAST_MODEL))["meta"].get("train_config")
        if not isinstance(saved, dict):
            raise ConfigError(f"cannot resume {self.out_dir}: its {LAST_MODEL} does not record the config of the run")
        changed = config_changes(saved, to_dict(self.config))
        if changed:
            raise ConfigError(
                f"cannot resume {self.out_dir} with a changed config: {'; '.join(changed[:4])}"
                f"{f' (and {len(changed) - 4} more)' if len(changed) > 4 else ''}; resume with the run's own "
                f"config ({self.out_dir / 'config.yaml'}) or start a new run"
            )

    def _restore(self, model, optimizer, scheduler, scaler) -> tuple[int, int, int, float]:
        from refseg.engine.checkpoint import check_tensors, load_training_state

        state = load_training_state(self.resume_state)
        if "model" in state:
            check_tensors(self.resume_state, model, state["model"], f"does not belong to the run in {self.out_dir}")
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            counters = int(state["epoch"]), int(state["skip_batches"]), int(state["step"]), float(state["best"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise CheckpointError(
                f"{self.resume_state} does not belong to the run in {self.out_dir}: {str(exc).splitlines()[0]}"
            ) from None
        if "model" in state:
            model.load_state_dict(state["model"], strict=False)
        return counters


def _diverged(loss: Tensor, world: int) -> bool:
    """Whether the loss of any process is NaN or infinite (all processes agree, so all stop)."""
    bad = (~torch.isfinite(loss.detach().float())).float().reshape(1)
    if world > 1:
        dist.all_reduce(bad)
    return bool(bad.item() > 0)


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


def finite_weights(model: nn.Module) -> bool:
    """Whether every floating-point tensor of the model's state is finite."""
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


#: Models trained stage by stage: model name → module with ``fit(model, samples, size, stages, lr, seed, log)``.
STAGED_TRAINING = {"instance_ref": "refseg.engine.instance_training"}


def train(config: Config, resume: str | Path | None = None, console: Any = None) -> Path:
    """Train ``config`` (optionally resuming a run); returns the run folder."""
    return Trainer(config, resume, console).run()
