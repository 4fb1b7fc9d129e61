"""Crash-safe training: a `refseg train` process SIGKILLed mid-epoch resumes from its last
periodic checkpoint (``train.checkpoint_every``) and ends exactly like an uninterrupted run
with the same seed — same logged losses, same final validation metrics, same weights."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from refseg.config import load_config
from refseg.engine import checkpoint as checkpoint_module
from refseg.engine import checkpointer as checkpointer_module
from refseg.engine.checkpoint import load_training_state
from refseg.engine.hooks import read_csv
from refseg.engine.trainer import train
from tests.fixtures.training import tiny_shaperef_config

CHECKPOINT_EVERY = 3


def refseg_train(*args: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "refseg", "train", *map(str, args)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 120) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output


def logged_steps(run: Path) -> int:
    try:
        return max((int(row["step"]) for row in read_csv(run / "train.csv")), default=0)
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def assert_same_run(a: Path, b: Path) -> None:
    """Same losses and learning rates at every step, same final metrics, bit-identical weights."""
    assert read_csv(b / "train.csv") == read_csv(a / "train.csv")
    assert read_csv(b / "val.csv") == read_csv(a / "val.csv")
    weights_a, weights_b = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    config = tiny_shaperef_config(tmp_path, n=48, epochs=2, checkpoint_every=CHECKPOINT_EVERY)
    reference = tmp_path / "reference"
    finish(refseg_train(config, f"train.out_dir={reference}"))
    rows = read_csv(reference / "train.csv")
    steps_per_epoch = max(int(r["step"]) for r in rows if r["epoch"] == "1")
    total_steps = logged_steps(reference)
    assert steps_per_epoch > 2 * CHECKPOINT_EVERY  # the checkpoints at steps 3 and 6 are mid-epoch

    killed = tmp_path / "killed"
    victim = refseg_train(config, f"train.out_dir={killed}")
    deadline = time.monotonic() + 90
    while logged_steps(killed) <= CHECKPOINT_EVERY:  # the first periodic checkpoint is written at step 3
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline, "the training run made no progress"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL

    done = logged_steps(killed)
    state = load_training_state(killed / "last_state.pt")
    assert done < total_steps, "the run finished before it was killed"
    assert state["epoch"] == 0 and state["skip_batches"] == state["step"] > 0  # a mid-epoch checkpoint
    assert 0 <= done - state["step"] <= CHECKPOINT_EVERY  # lost at most the steps since that checkpoint

    finish(refseg_train(config, f"train.out_dir={killed}", "--resume", killed))
    assert_same_run(reference, killed)


class Killed(BaseException):
    """Stands for the process dying (BaseException: nothing in refseg may swallow it)."""


def test_death_between_the_model_file_and_the_training_state_is_harmless(tmp_path: Path, monkeypatch) -> None:
    """The two files of a checkpoint are not renamed together: dying after ``last.safetensors``
    is replaced but before ``last_state.pt`` must still resume exactly (from the older state)."""
    config = load_config(tiny_shaperef_config(tmp_path, n=40, epochs=1, checkpoint_every=2))
    config.train.out_dir = str(tmp_path / "reference")
    reference = train(config)

    real_save_state = checkpoint_module.save_training_state
    saves = []

    def die_on_second_state(path, state):
        saves.append(state["step"])
        if len(saves) == 2:
            raise Killed
        return real_save_state(path, state)

    config.train.out_dir = str(tmp_path / "killed")
    with monkeypatch.context() as patch:
        patch.setattr(checkpointer_module, "save_training_state", die_on_second_state)
        with pytest.raises(Killed):
            train(config)
    killed = tmp_path / "killed"
    model_step = checkpoint_module.read_header(killed / "last.safetensors")["meta"]["step"]
    assert (load_training_state(killed / "last_state.pt")["step"], model_step) == (saves[0], saves[1])
    train(config, resume=killed)
    assert_same_run(reference, killed)


def test_mid_epoch_resume_is_exact_for_a_model_with_dropout(tmp_path: Path, monkeypatch) -> None:
    """Dropout draws from the global torch RNG, which the checkpoint restores; nothing else
    (e.g. creating the epoch's DataLoader) may draw from it, or the resumed steps would differ."""
    from refseg.engine.checkpointer import Checkpointer
    from tests.fixtures.training import tiny_config_text, write_square_manifest

    manifest = write_square_manifest(tmp_path / "squares", 24, seed=1)

    def config(name: str):
        path = tmp_path / f"{name}.yaml"
        path.write_text(tiny_config_text(manifest, tmp_path / name, epochs=2, checkpoint_every=2, eval_every=0))
        return load_config(path, ["data.cache_features=false"])

    reference = train(config("reference"))
    real_save = Checkpointer.save
    saves = []

    def save_then_die(self, trainer, *args):
        real_save(self, trainer, *args)
        saves.append(trainer.state.step)
        if len(saves) == 4:  # steps 2, 4, 5 (end of epoch 1), 7
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(Checkpointer, "save", save_then_die)
        with pytest.raises(Killed):
            train(config("killed"))
    state = load_training_state(tmp_path / "killed" / "last_state.pt")
    assert state["skip_batches"] > 0  # died right after a mid-epoch checkpoint
    train(config("killed"), resume=tmp_path / "killed")
    assert_same_run(reference, tmp_path / "killed")
