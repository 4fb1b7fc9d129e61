"""Run configuration: typed dataclasses, YAML files and ``key=value`` overrides.

A config has four parts: ``model`` (registered name + constructor kwargs), ``data`` (training and
validation dataset specs, image size, augmentation), ``train`` (optimiser, schedule, budget,
checkpoints) and ``imports`` (extra modules that register custom models). Every key can be
overridden from the command line with a dotted path::

    refseg train configs/rmi_shaperef.yaml train.lr=1e-3 model.hidden=256 data.train.0.n=500

Values are coerced to the declared type; unknown keys, wrong types and missing data paths raise
:class:`~refseg.errors.ConfigError` with a one-line message (and close matches for typos).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from refseg.errors import ConfigError

#: Value meaning "must be given on the command line" in a YAML config.
REQUIRED = "???"

DatasetKind = Literal[
    "manifest", "refer", "coco-instances", "coco-panoptic", "camvid", "shaperef"
]


@dataclass
class DatasetSpec:
    """One source of samples; several specs are concatenated.

    * ``manifest``: ``path`` = a JSONL manifest (see docs/datasets.md).
    * ``refer``: ``path`` = the refer root, ``dataset`` (refcoco, refcoco+, refcocog, refclef),
      ``split_by`` (unc, umd, google, berkeley), ``split``; ``images`` overrides the photo folder.
    * ``coco-instances`` / ``coco-panoptic`` / ``camvid``: ``path`` = dataset root, ``split``;
      ``synthesize`` expressions per image are generated on the fly with ``seed``
      (paper 2 §2.2), plus caption-grounded ones when ``captions`` is true (COCO instances).
    * ``shaperef``: ``n`` generated samples with ``seed`` (in memory); ``split`` selects
      train/val/test; ``options`` go to the generator.

    ``limit`` keeps only the first N samples (0 = all). ``exclude_images`` / ``only_images``: a JSONL
    file whose lines name photos by ``image_id`` (e.g. ``bench/human_dev/expressions.jsonl``); the
    samples of those photos are dropped / kept alone. That trains on a split without the photos a
    dev set is written on, and validates on exactly those.
    """

    kind: DatasetKind = "manifest"
    path: str = ""
    dataset: str = "refcoco"
    split_by: str = "unc"
    split: str = ""  # "" = every sample (manifest, shaperef); required for the other kinds
    images: str = ""
    synthesize: int = 0
    captions: bool = False
    n: int = 0
    seed: int = 0
    limit: int = 0
    exclude_images: str = ""
    only_images: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AugmentConfig:
    """Text-consistent augmentation (applied to training samples only)."""

    hflip: float = 0.5  # probability; swaps left/right words in the expression
    scale: tuple[float, float] = (0.7, 1.0)  # crop side as a fraction of the image side
    crop: float = 0.0  # probability of a scale/crop jitter that keeps the target inside
    crop_positions: bool = True  # also crop expressions with position words ("left", "top", "behind", ...)
    copy_paste: float = 0.0  # probability of pasting another sample's instance as the target
    pair_paste: float = 0.0  # probability of pasting two instances of one category, the target named by side or size


@dataclass
class DataConfig:
    """What to train and validate on."""

    train: list[DatasetSpec] = field(default_factory=list)
    val: list[DatasetSpec] = field(default_factory=list)
    root: str = ""  # relative dataset paths resolve against this folder (see load_config)
    image_size: int = 320
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache_features: bool = True  # cache backbone taps when the model's backbone is frozen
    cache_dtype: Literal["float32", "float16"] = "float32"


@dataclass
class ModelConfig:
    """A registered model name and its constructor keyword arguments."""

    name: str = "lstm_cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation, budget, logging and checkpoints."""

    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 2.5e-4  # paper 3 §4.2 (Adam 0.00025, weight decay 0.0005)
    momentum: float = 0.9  # SGD with momentum (paper 1 §3.3)
    weight_decay: float = 5e-4
    backbone_lr_scale: float = 0.1  # learning-rate multiplier for backbone parameters that train
    schedule: Literal["poly", "constant", "step"] = "poly"  # poly: paper 4 §3.6
    poly_power: float = 0.9
    step_every: int = 10  # epochs between decays (schedule=step)
    step_gamma: float = 0.1
    warmup_steps: int = 0
    epochs: int = 10
    iterations: int = 0  # > 0: stop after this many optimiser steps (overrides epochs)
    batch_size: int = 8  # per process
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    iou_loss_weight: float = 0.0  # > 0: add this × (1 − soft IoU) per sample to the model's loss
    distractor_weight: float = 0.0  # > 0: add this × the logistic loss on the target category's other pixels
    seed: int = 0
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on GPU, off on CPU
    workers: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 1  # epochs between validations (0 = only at the end)
    eval_batch_size: int = 16
    best_metric: Literal["mean_iou", "overall_iou"] = "mean_iou"
    low_res_epochs: int = 0  # two-stage schedule (paper 1 §4.2): low-res loss for N epochs
    stage_restart: bool = False  # the high-res stage starts a fresh schedule and optimiser state (a new fine-tuning run)
    log_every: int = 10  # steps between CSV rows
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = at the end of each epoch only)
    progress: bool = True
    out_dir: str = ""  # default: runs/<config file stem>
    stages: dict[str, int] = field(default_factory=dict)  # steps per stage of staged models (instance_ref)


@dataclass
class Config:
    """A full run configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    imports: list[str] = field(default_factory=list)  # modules that register custom models


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or start from defaults), then apply ``key=value`` overrides.

    Relative paths in the file (``data.root``, or dataset paths when there is no root, and photo
    lists) are relative to the file's folder; relative paths given as overrides are relative to the
    current directory. Data paths are checked when the data is loaded (:func:`check_data_paths`).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must contain a mapping at the top level")
        raw = loaded or {}
    raw = _fold_model_kwargs(raw)
    config = from_dict(raw)
    if path is not None:
        _anchor_paths(config, path.parent)
    for item in overrides:
        apply_override(config, item)
    if path is not None and not config.train.out_dir:
        config.train.out_dir = str(Path("runs") / path.stem)
    return config


def _anchor_paths(config: Config, folder: Path) -> None:
    """Relative data paths written in a config file are relative to that file's folder."""

    def anchored(value: str) -> str:
        if not value or value == REQUIRED or Path(os.path.expanduser(value)).is_absolute():
            return value
        return os.path.normpath(folder / value)

    specs = [*config.data.train, *config.data.val]
    for spec in specs:
        spec.exclude_images, spec.only_images = anchored(spec.exclude_images), anchored(spec.only_images)
    if config.data.root:
        config.data.root = anchored(config.data.root)
        return
    for spec in specs:
        spec.path = anchored(spec.path)


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a nested mapping, checking keys and types."""
    return _coerce(raw, Config, "")


def to_dict(config: Any) -> Any:
    """Plain YAML/JSON-ready structure of a config (model kwargs stay nested under ``kwargs``)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def dump_config(config: Config) -> str:
    """The config as YAML text with model kwargs written flat (``model: {name, hidden, ...}``)."""
    data = to_dict(config)
    model = data.pop("model")
    data = {"model": {"name": model["name"], **model["kwargs"]}, **data}
    return yaml.safe_dump(data, sort_keys=False)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config atomically."""
    from refseg.io import atomic_write_bytes

    atomic_write_bytes(Path(path), dump_config(config).encode("utf-8"))


def _fold_model_kwargs(raw: dict[str, Any]) -> dict[str, Any]:
    """YAML writes model kwargs flat next to ``name``; the dataclass keeps them under ``kwargs``."""
    model = raw.get("model")
    if model is None:
        return raw
    if not isinstance(model, dict):
        raise ConfigError("model must be a mapping with at least a 'name'")
    kwargs = dict(model.get("kwargs") or {})
    kwargs.update({k: v for k, v in model.items() if k not in ("name", "kwargs")})
    folded = {"kwargs": kwargs}
    if "name" in model:
        folded["name"] = model["name"]
    return {**raw, "model": folded}


# --------------------------------------------------------------------------- overrides


def apply_override(config: Config, item: str) -> None:
    """Apply one ``dotted.key=value`` override in place (list items by index: ``data.train.0.n``)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-3)")
    parts = key.split(".")
    if parts[0] == "model" and len(parts) >= 2 and parts[1] not in ("name", "kwargs"):
        parts = ["model", "kwargs", *parts[1:]]  # model.hidden=256 → model.kwargs.hidden
    value = _parse_scalar(text)
    parent: Any = config
    path = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = f"{path}.{part}" if path else part
        if dataclasses.is_dataclass(parent):
            names = [f.name for f in dataclasses.fields(parent)]
            if part not in names:
                raise ConfigError(f"unknown config key {where!r}{suggest(part, names)}")
            hint = typing.get_type_hints(type(parent))[part]
            if last:
                setattr(parent, part, _coerce(value, hint, where))
            else:
                parent = getattr(parent, part)
        elif isinstance(parent, list):
            index = _list_index(part, parent, where)
            item_type = _list_item_type(config, parts[:i])
            if index == len(parent):  # data.train.1.path=... appends a new spec
                parent.append(_coerce({}, item_type, where) if item_type else None)
            if last:
                parent[index] = _coerce(value, item_type, where) if item_type else value
            else:
                parent = parent[index]
        elif isinstance(parent, dict):
            if last:
                parent[part] = value
            else:
                parent = parent.setdefault(part, {})
                if not isinstance(parent, dict):
                    raise ConfigError(f"config key {where!r} is not a mapping")
        else:
            raise ConfigError(f"config key {path!r} has no sub-key {part!r}")
        path = where


def _list_index(part: str, items: list, where: str) -> int:
    """Index of a list item in a dotted key; ``len(items)`` appends a new item."""
    if not part.isdigit():
        raise ConfigError(f"config key {where!r}: list items are selected by index (0, 1, ...)")
    index = int(part)
    if index > len(items):
        raise ConfigError(f"config key {where!r}: index {index} is out of range (0..{len(items)})")
    return index


def _list_item_type(config: Config, parts: list[str]) -> Any:
    """Declared item type of the list at dotted ``parts`` (None for untyped lists)."""
    owner: Any = config
    for part in parts[:-1]:
        owner = owner[int(part)] if isinstance(owner, list) else getattr(owner, part, None)
    if not dataclasses.is_dataclass(owner):
        return None
    hint = typing.get_type_hints(type(owner)).get(parts[-1])
    args = typing.get_args(hint)
    return args[0] if args else None


def _parse_scalar(text: str) -> Any:
    """Command-line value → Python value using YAML rules ('null', 'true', '[1, 2]', '{a: 1}')."""
    text = text.strip()
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def suggest(word: str, choices: list[str]) -> str:
    """"; did you mean ...?" for close matches of ``word`` (else the valid choices), for error messages."""
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    if close:
        return f"; did you mean {' or '.join(repr(c) for c in close)}?"
    return f"; valid keys: {', '.join(choices)}"


# --------------------------------------------------------------------------- type coercion


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert ``value`` to the declared type ``hint`` (``where`` names the key in errors)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    label = where or "config"
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{label} must be a mapping, got {_describe(value)}")
        names = {f.name for f in dataclasses.fields(hint)}
        hints = typing.get_type_hints(hint)
        kwargs = {}
        for key, item in value.items():
            sub = f"{where}.{key}" if where else str(key)
            if key not in names:
                raise ConfigError(f"unknown config key {sub!r}{suggest(str(key), sorted(names))}")
            kwargs[key] = _coerce(item, hints[key], sub)
        return hint(**kwargs)
    if origin is Literal:
        if isinstance(value, bool) and ("off" if not value else "on") in args:
            value = "off" if not value else "on"  # YAML 1.1 reads a bare off/on as a boolean
        if value not in args or isinstance(value, bool):
            raise ConfigError(
                f"{label} must be one of {', '.join(map(str, args))}; got {value!r}"
            )
        return value
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None and len(non_none) < len(args):
            return None
        errors = []
        for option in non_none:
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{label} must be a list, got {_describe(value)}")
        item_type = args[0] if args else Any
        return [_coerce(v, item_type, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{label} must be a list of {len(args)} values, got {_describe(value)}")
        return tuple(_coerce(v, t, f"{where}.{i}") for i, (v, t) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{label} must be a mapping, got {_describe(value)}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(f"{label} must be true or false, got {_describe(value)}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{label} must be an integer, got {_describe(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{label} must be an integer, got {_describe(value)}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{label} must be a number, got {_describe(value)}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        raise ConfigError(f"{label} must be a number, got {_describe(value)}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{label} must be a string, got {_describe(value)}")
    raise TypeError(f"unsupported config type {hint!r} at {label}")  # a bug in this module


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


# --------------------------------------------------------------------------- data paths


def resolve_path(config: Config, path: str) -> Path:
    """A dataset path resolved against ``data.root`` (or the current directory)."""
    p = Path(os.path.expanduser(path))
    if not p.is_absolute() and config.data.root:
        p = Path(os.path.expanduser(config.data.root)) / p
    return p


def check_data_paths(config: Config) -> None:
    """Raise ConfigError for required values left unset, augmentation probabilities outside
    [0, 1] and dataset paths that do not exist."""
    if config.data.root == REQUIRED:
        raise ConfigError("data.root is required: pass data.root=/path/to/data on the command line")
    augment = config.data.augment
    for name in ("hflip", "crop", "copy_paste", "pair_paste"):
        if not 0.0 <= getattr(augment, name) <= 1.0:
            raise ConfigError(f"data.augment.{name} is a probability in [0, 1], got {getattr(augment, name)}")
    if augment.copy_paste + augment.pair_paste > 1.0:
        raise ConfigError(
            f"data.augment.copy_paste + data.augment.pair_paste must be at most 1 (one paste per sample), "
            f"got {augment.copy_paste} + {augment.pair_paste}"
        )
    for group in ("train", "val"):
        for i, spec in enumerate(getattr(config.data, group)):
            key = f"data.{group}.{i}"
            for name in ("path", "split", "dataset", "split_by", "images"):
                if getattr(spec, name) == REQUIRED:
                    raise ConfigError(f"{key}.{name} is required: pass {key}.{name}=... on the command line")
            for name in ("exclude_images", "only_images"):
                listing = getattr(spec, name)
                if listing and not Path(os.path.expanduser(listing)).is_file():
                    raise ConfigError(f"{key}.{name}: photo list not found: {listing}")
            if spec.kind == "shaperef":
                if spec.n <= 0:
                    raise ConfigError(f"{key}.n must be > 0 for a shaperef dataset")
                continue
            if not spec.path:
                raise ConfigError(f"{key}.path is required for a {spec.kind} dataset")
            if spec.kind != "manifest" and not spec.split:
                raise ConfigError(f"{key}.split is required for a {spec.kind} dataset (e.g. train, val)")
            path = resolve_path(config, spec.path)
            if spec.kind == "manifest" and not path.is_file():
                raise ConfigError(f"{key}.path: manifest not found: {path}")
            if spec.kind != "manifest" and not path.is_dir():
                raise ConfigError(f"{key}.path: {spec.kind} folder not found: {path}")
