"""Run configuration: typed sections (pydantic), YAML files and ``key=value`` overrides.

A config has four parts: ``model`` (registered name + constructor kwargs), ``data`` (training and
validation dataset specs, image size, augmentation), ``train`` (optimiser, schedule, budget,
checkpoints) and ``imports`` (extra modules that register custom models or dataset sources).
Every key can be overridden from the command line with a dotted path::

    refseg train configs/rmi_shaperef.yaml train.lr=1e-3 model.hidden=256 data.train.0.n=500

Values are converted to the declared type; unknown keys, wrong types and missing data paths raise
:class:`~refseg.errors.ConfigError` with a one-line message (and close matches for typos).
"""
from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from refseg.errors import ConfigError

#: Value meaning "must be given on the command line" in a YAML config.
REQUIRED = "???"


def _not_bool(error_type: str):
    """Before-validator refusing YAML booleans where a number is declared (pydantic reads true as 1)."""

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError(error_type, "boolean")
        return value

    return BeforeValidator(check)


def _pair(value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PydanticCustomError("pair", "must be a list of 2 values, got {got}", {"got": _describe(value)})
    return value


def _choice(*choices: str) -> Any:
    """A string limited to ``choices``; YAML 1.1's bare off/on (read as booleans) count as the words."""

    def check(value: Any) -> Any:
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            value = "on" if value else "off"
        if isinstance(value, bool) or value not in choices:
            raise PydanticCustomError(
                "choice", "must be one of {choices}; got {got}", {"choices": ", ".join(choices), "got": repr(value)}
            )
        return value

    return Annotated[Literal[choices], BeforeValidator(check)]


Int = Annotated[int, _not_bool("int_type")]
Number = Annotated[float, _not_bool("float_type")]
CacheDtype = _choice("float32", "float16")
Optimizer = _choice("sgd", "adam", "adamw")
Schedule = _choice("poly", "constant", "step")
Precision = _choice("auto", "off", "bf16", "fp16")
BestMetric = _choice("mean_iou", "overall_iou")


class _Section(BaseModel):
    """A config section: unknown keys are errors with close matches; numbers may be given as strings."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError(
                        "unknown_key", "{key}", {"key": str(key), "hint": suggest(str(key), sorted(cls.model_fields))}
                    )
        return data


class DatasetSpec(_Section):
    """One source of samples; several specs are concatenated.

    ``kind`` names a registered source (:mod:`refseg.data.sources`: manifest, refer, coco-instances,
    coco-panoptic, camvid, shaperef, or one a module in ``imports`` registers); each source's module
    says which of the fields below it reads. ``path`` is resolved against ``data.root``.

    ``limit`` keeps only the first N samples (0 = all). ``exclude_images`` / ``only_images``: a JSONL
    file whose lines name photos by ``image_id`` (e.g. ``bench/human_dev/expressions.jsonl``); the
    samples of those photos are dropped / kept alone. That trains on a split without the photos a
    dev set is written on, and validates on exactly those.
    """

    kind: str = "manifest"
    path: str = ""
    dataset: str = "refcoco"
    split_by: str = "unc"
    split: str = ""  # "" = every sample (manifest, shaperef); required for the other kinds
    images: str = ""
    synthesize: Int = 0
    captions: bool = False
    n: Int = 0
    seed: Int = 0
    limit: Int = 0
    exclude_images: str = ""
    only_images: str = ""
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind", mode="before")
    @classmethod
    def _registered(cls, kind: Any, info: ValidationInfo) -> Any:
        """A registered kind; the config's ``imports`` are imported first when the kind is not built in."""
        from refseg.data.sources import source_kinds

        kinds = source_kinds()
        if kind not in kinds and info.context and info.context.get("imports"):
            import_modules(info.context["imports"])
            kinds = source_kinds()
        if kind not in kinds:
            close = difflib.get_close_matches(str(kind), kinds, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PydanticCustomError(
                "choice", "must be one of {choices}; got {got}{hint}", {"choices": ", ".join(kinds), "got": repr(kind), "hint": hint}
            )
        return kind


class AugmentConfig(_Section):
    """Text-consistent augmentation (applied to training samples only)."""

    hflip: Number = 0.5  # probability; swaps left/right words in the expression
    scale: Annotated[tuple[Number, Number], BeforeValidator(_pair)] = (0.7, 1.0)  # crop side / image side
    crop: Number = 0.0  # probability of a scale/crop jitter that keeps the target inside
    crop_positions: bool = True  # also crop expressions with position words ("left", "top", "behind", ...)
    copy_paste: Number = 0.0  # probability of pasting another sample's instance as the target
    pair_paste: Number = 0.0  # probability of pasting two instances of one category, the target named by side or size


class DataConfig(_Section):
    """What to train and validate on."""

    train: list[DatasetSpec] = Field(default_factory=list)
    val: list[DatasetSpec] = Field(default_factory=list)
    root: str = ""  # relative dataset paths resolve against this folder (see load_config)
    image_size: Int = 320
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    cache_features: bool = True  # cache backbone taps when the model's backbone is frozen
    cache_dtype: CacheDtype = "float32"


class ModelConfig(_Section):
    """A registered model name and its constructor keyword arguments (YAML writes them flat)."""

    name: str = "lstm_cnn"
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _fold_kwargs(cls, data: Any) -> Any:
        """``{name, hidden, ...}`` → ``{name, kwargs: {hidden, ...}}``."""
        if not isinstance(data, dict):
            return data
        kwargs = dict(data.get("kwargs") or {})
        kwargs.update({k: v for k, v in data.items() if k not in ("name", "kwargs")})
        return {**({"name": data["name"]} if "name" in data else {}), "kwargs": kwargs}


class TrainConfig(_Section):
    """Optimisation, budget, logging and checkpoints."""

    optimizer: Optimizer = "adam"
    lr: Number = 2.5e-4  # paper 3 §4.2 (Adam 0.00025, weight decay 0.0005)
    momentum: Number = 0.9  # SGD with momentum (paper 1 §3.3)
    weight_decay: Number = 5e-4
    backbone_lr_scale: Number = 0.1  # learning-rate multiplier for backbone parameters that train
    schedule: Schedule = "poly"  # poly: paper 4 §3.6
    poly_power: Number = 0.9
    step_every: Int = 10  # epochs between decays (schedule=step)
    step_gamma: Number = 0.1
    warmup_steps: Int = 0
    epochs: Int = 10
    iterations: Int = 0  # > 0: stop after this many optimiser steps (overrides epochs)
    batch_size: Int = 8  # per process
    grad_clip: Number = 0.0  # max gradient norm; 0 = off
    iou_loss_weight: Number = 0.0  # > 0: add this × (1 − soft IoU) per sample to the model's loss
    distractor_weight: Number = 0.0  # > 0: add this × the logistic loss on the target category's other pixels
    seed: Int = 0
    amp: Precision = "auto"  # auto: bf16/fp16 on GPU, off on CPU
    workers: Int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: Int = 1  # epochs between validations (0 = only at the end)
    eval_batch_size: Int = 16
    best_metric: BestMetric = "mean_iou"
    low_res_epochs: Int = 0  # two-stage schedule (paper 1 §4.2): low-res loss for N epochs
    stage_restart: bool = False  # the high-res stage starts a fresh schedule and optimiser state (a new fine-tuning run)
    log_every: Int = 10  # steps between CSV rows
    checkpoint_every: Int = 0  # steps between mid-epoch checkpoints (0 = at the end of each epoch only)
    progress: bool = True
    out_dir: str = ""  # default: runs/<config file stem>
    stages: dict[str, Int] = Field(default_factory=dict)  # steps per stage of staged models (instance_ref)


class Config(_Section):
    """A full run configuration."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    imports: list[str] = Field(default_factory=list)  # modules that register custom models or dataset sources


def import_modules(names: list[str]) -> None:
    """Import the modules a config lists in ``imports`` (they register models or dataset sources)."""
    for module in names:
        try:
            importlib.import_module(str(module))
        except ImportError as exc:
            raise ConfigError(f"imports: cannot import {module!r}: {exc}") from None


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
    try:
        imports = raw.get("imports") if isinstance(raw, dict) else None
        return Config.model_validate(raw, context={"imports": imports if isinstance(imports, list) else None})
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors()[0])) from None


def to_dict(config: BaseModel) -> dict[str, Any]:
    """Plain YAML/JSON-ready structure of a config (model kwargs stay nested under ``kwargs``)."""
    return config.model_dump(mode="json")


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


# --------------------------------------------------------------------------- overrides


def apply_override(config: Config, item: str) -> None:
    """Apply one ``dotted.key=value`` override in place (list items by index: ``data.train.0.n``;
    index ``len`` appends a new item)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-3)")
    parts = key.split(".")
    if parts[0] == "model" and len(parts) >= 2 and parts[1] not in ("name", "kwargs"):
        parts = ["model", "kwargs", *parts[1:]]  # model.hidden=256 → model.kwargs.hidden
    raw = config.model_dump()
    node: Any = raw
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(part, node, where)
            if index == len(node):
                node.append({})  # data.train.1.path=... appends a new spec
            part = index
        elif not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(parts[:i])!r} has no sub-key {part!r}")
        if last:
            node[part] = _parse_scalar(text)
        else:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    updated = from_dict(raw)
    for name in Config.model_fields:
        setattr(config, name, getattr(updated, name))


def _list_index(part: str, items: list, where: str) -> int:
    """Index of a list item in a dotted key; ``len(items)`` appends a new item."""
    if not part.isdigit():
        raise ConfigError(f"config key {where!r}: list items are selected by index (0, 1, ...)")
    index = int(part)
    if index > len(items):
        raise ConfigError(f"config key {where!r}: index {index} is out of range (0..{len(items)})")
    return index


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


# --------------------------------------------------------------------------- error messages

_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
             "list": "a list", "dict": "a mapping", "model": "a mapping"}


def _message(error: dict) -> str:
    """One pydantic error → the one-line message of this module ("train.lr must be a number, got …")."""
    where = ".".join(str(p) for p in error["loc"])
    label = where or "config"
    kind = error["type"]
    if kind == "unknown_key":
        key = f"{where}.{error['ctx']['key']}" if where else error["ctx"]["key"]
        return f"unknown config key {key!r}{error['ctx']['hint']}"
    if kind in ("choice", "pair"):
        return f"{label} {error['msg']}"
    expected = _EXPECTED.get(kind.split("_")[0], None)
    if expected is None:
        return f"{label}: {error['msg']}"
    return f"{label} must be {expected}, got {_describe(error['input'])}"


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
    from refseg.data.sources import check_spec

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
            check_spec(spec, key, resolve_path(config, spec.path) if spec.path else None)
