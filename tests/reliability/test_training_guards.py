"""Class 4 of issue 24: a diverged run stops without spoiling its checkpoints, and ``--resume``
refuses a changed config and a training state that is not the run's own (one line, exit 2)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from refseg.config import load_config
from refseg.engine import trainer as trainer_module
from refseg.engine.checkpoint import load_training_state, save_training_state
from refseg.engine.trainer import train
from refseg.errors import TrainingError
from tests.fixtures.contracts import assert_one_line_error
from tests.fixtures.training import tiny_shaperef_config


def _config(folder: Path, epochs: int = 1, checkpoint_every: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return tiny_shaperef_config(folder, n=40, epochs=epochs, checkpoint_every=checkpoint_every)  # 8 steps an epoch


def _all_finite(run: Path) -> bool:
    tensors = [t for name in ("last.safetensors", "best.safetensors") if (run / name).exists()
               for t in load_file(str(run / name)).values()]
    if (run / "last_state.pt").exists():
        tensors += list(load_training_state(run / "last_state.pt")["model"].values())
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


# --------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("lr", ["1e9", "1e30"])
def test_cli_diverged_run_exits_2_in_one_line_and_saves_no_nan(cli, tmp_path, lr) -> None:
    config = _config(tmp_path)
    run = tmp_path / "run"
    code, _, err = cli("train", config, f"train.lr={lr}", f"train.out_dir={run}")
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]  # after the run's progress lines
    assert last.startswith("error: training diverged at step") and "no checkpoint was written" in last, err
    assert _all_finite(run)


def _poison_loss_from(call: int):
    """A _TrainStep.forward whose loss becomes NaN from its ``call``-th call on."""
    original = trainer_module._TrainStep.forward
    calls = [0]

    def forward(self, batch):
        calls[0] += 1
        loss, logits = original(self, batch)
        return (loss * float("nan") if calls[0] >= call else loss), logits

    return forward


def _poison_weights_from(call: int):
    """An optimiser step that writes NaN into the weights from its ``call``-th call on (the loss stays finite
    until the next forward pass)."""
    original = torch.optim.SGD.step
    calls = [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        out = original(self, *args, **kwargs)
        if calls[0] >= call:
            with torch.no_grad():
                for group in self.param_groups:
                    for param in group["params"]:
                        param.fill_(float("nan"))
        return out

    return step


@pytest.mark.parametrize("poison", ["nan_loss_at_step_5", "nan_weights_at_step_6"])
def test_divergence_keeps_the_last_finite_checkpoints(tmp_path, monkeypatch, poison) -> None:
    """Checkpoints every 3 steps; the run goes bad after step 3. The files keep the step-3 weights:
    a NaN loss stops the run before its step, NaN weights are refused by the step-6 save."""
    config = load_config(_config(tmp_path, checkpoint_every=3), [f"train.out_dir={tmp_path / 'run'}"])
    if poison == "nan_loss_at_step_5":
        monkeypatch.setattr(trainer_module._TrainStep, "forward", _poison_loss_from(5))
    else:
        monkeypatch.setattr(torch.optim.SGD, "step", _poison_weights_from(6))
    with pytest.raises(TrainingError, match="training diverged") as info:
        train(config)
    assert "\n" not in str(info.value)
    run = tmp_path / "run"
    assert load_training_state(run / "last_state.pt")["step"] == 3
    assert _all_finite(run)


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Two finished one-epoch runs (8 steps): ``run`` and ``other`` (a narrower model), trained once."""
    folder = tmp_path_factory.mktemp("trained")
    config = _config(folder / "cfg")
    train(load_config(config, [f"train.out_dir={folder / 'run'}"]))
    train(load_config(config, [f"train.out_dir={folder / 'other'}", "model.hidden=8", "model.classifier=8"]))
    return {"config": config, "run": folder / "run", "other": folder / "other"}


@pytest.fixture()
def finished_run(trained, tmp_path) -> tuple[Path, Path]:
    """A copy of the finished run (each test may spoil it) and its config file."""
    shutil.copytree(trained["run"], tmp_path / "run")
    return trained["config"], tmp_path / "run"


CHANGES = {  # override -> phrase naming the changed key
    "model.hidden=32": "model.kwargs.hidden: 16 -> 32",
    "train.batch_size=2": "train.batch_size: 4 -> 2",
    "train.lr=0.5": "train.lr: 0.01 -> 0.5",
    "data.image_size=96": "data.image_size: 64 -> 96",
    "data.train.0.n=12": "data.train",
    "train.seed=2": "train.seed: 1 -> 2",
}


@pytest.mark.parametrize("override", sorted(CHANGES))
def test_resume_with_a_changed_config_exits_2_naming_the_keys(cli, finished_run, override) -> None:
    config, run = finished_run
    before = (run / "config.yaml").read_bytes()
    code, _, err = cli("train", config, override, "--resume", run)
    assert_one_line_error(code, err, "changed config")
    assert CHANGES[override] in err
    assert (run / "config.yaml").read_bytes() == before


def test_resume_with_harmless_changes_and_a_longer_budget_goes_on(cli, finished_run) -> None:
    config, run = finished_run
    code, _, err = cli("train", config, "train.progress=true", "train.log_every=5", "train.epochs=2", "--resume", run)
    assert code == 0, err
    assert load_training_state(run / "last_state.pt")["step"] == 16
    assert "epochs: 2" in (run / "config.yaml").read_text()  # config.yaml describes the run as continued


def test_resume_of_a_run_without_its_recorded_config_exits_2(cli, finished_run) -> None:
    from refseg.engine.checkpoint import load_model, save_model

    config, run = finished_run
    model, meta = load_model(run / "last.safetensors")
    save_model(run / "last.safetensors", model, {k: v for k, v in meta.items() if k != "train_config"})
    assert_one_line_error(*cli("train", config, "--resume", run)[::2], "does not record the config")


def _edited_state(run: Path, edit) -> None:
    state = load_training_state(run / "last_state.pt")
    edit(state)
    save_training_state(run / "last_state.pt", state)


STATES = {  # name -> (edit of the run's own state, or None for another run's state; phrase)
    "state_of_another_run": (None, "does not belong to the run"),
    "weights_of_another_shape": (lambda s: s["model"].update({k: torch.zeros(3) for k in list(s["model"])[:1]}),
                                 "does not belong to the run"),
    "nan_weights": (lambda s: [t.fill_(float("nan")) for t in s["model"].values() if t.is_floating_point()],
                    "NaN or infinite"),
    "weights_not_tensors": (lambda s: s.update(model={"a": 1}), "not a mapping of tensors"),
    "no_optimizer": (lambda s: s.pop("optimizer"), "does not belong to the run"),
    "rng_empty": (lambda s: s.update(rng={}), "does not belong to the run"),
    "epoch_text": (lambda s: s.update(epoch="three"), "does not belong to the run"),
    "scheduler_a_list": (lambda s: s.update(scheduler=[1, 2]), "does not belong to the run"),
}


@pytest.mark.parametrize("name", sorted(STATES))
def test_resume_from_a_state_that_is_not_the_runs_own_exits_2(cli, trained, finished_run, name) -> None:
    config, run = finished_run
    edit, phrase = STATES[name]
    if edit is None:
        (run / "last_state.pt").write_bytes((trained["other"] / "last_state.pt").read_bytes())
    else:
        _edited_state(run, edit)
    assert_one_line_error(*cli("train", config, "--resume", run)[::2], phrase)
