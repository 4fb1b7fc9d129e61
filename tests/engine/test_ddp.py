"""``torchrun --nproc_per_node 2 -m refseg train``: two CPU processes (gloo), one run folder."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from refseg.engine.checkpoint import load_model
from refseg.engine.hooks import read_csv
from tests.fixtures.training import tiny_config_text, write_square_manifest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_train_validate_and_checkpoint_once(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    manifest = write_square_manifest(tmp_path / "data", 24, seed=4)
    config = tmp_path / "ddp.yaml"
    config.write_text(tiny_config_text(manifest, tmp_path / "run", epochs=2))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),  # tests.fixtures.training
        "OMP_NUM_THREADS": "1",
    }
    command = [
        torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "refseg", "train", str(config),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    # 18 training samples split over 2 processes: 9 each → 3 steps of 4 per epoch, logged once (rank 0)
    rows = read_csv(run / "train.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    # validation gathers both shards: all 6 val samples are scored, not 3
    val = read_csv(run / "val.csv")
    assert [int(r["n"]) for r in val] == [6, 6]
    model, meta = load_model(run / "last.safetensors")
    assert meta["epoch"] == 2 and meta["metrics"]["n"] == 6
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
