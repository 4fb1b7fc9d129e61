"""Configs: YAML loading, dotted key=value overrides, type coercion, one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from refseg.cli import main
from refseg.config import (
    Config,
    DatasetSpec,
    apply_override,
    check_data_paths,
    dump_config,
    from_dict,
    load_config,
)
from refseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_model_kwargs_are_flat_and_overrides_reach_every_level(tmp_path):
    path = write(tmp_path, "model:\n  name: rmi\n  hidden: 64\ntrain:\n  lr: 0.01\n")
    config = load_config(
        path,
        ["train.lr=1e-3", "model.hidden=256", "model.text.kind=glove", "train.epochs=7", "train.amp=off",
         "data.augment.scale=[0.5, 0.9]", "data.train.0.kind=shaperef", "data.train.0.n=50",
         "data.train.1.path=x.jsonl", "data.cache_features=false", "imports=[my.models]"],
    )
    assert config.train.lr == pytest.approx(1e-3) and isinstance(config.train.lr, float)
    assert config.model.name == "rmi"
    assert config.model.kwargs == {"hidden": 256, "text": {"kind": "glove"}}
    assert config.train.epochs == 7 and config.train.amp == "off"
    assert config.data.augment.scale == (0.5, 0.9)
    assert config.data.train[0] == DatasetSpec(kind="shaperef", n=50)
    assert config.data.train[1].path == "x.jsonl" and config.data.train[1].kind == "manifest"
    assert config.data.cache_features is False
    assert config.imports == ["my.models"]
    assert config.train.out_dir == str(Path("runs") / "cfg")


def test_dump_and_load_round_trip(tmp_path):
    config = load_config(None, ["model.name=step", "model.k=3", "data.val.0.kind=shaperef", "data.val.0.n=9",
                                "train.schedule=step", "train.out_dir=somewhere"])
    again = load_config(write(tmp_path, dump_config(config)))
    assert again == config


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", r"unknown config key 'train.lrr'; did you mean 'lr'\?"),
        ("trian.lr=1", r"unknown config key 'trian'; did you mean 'train'\?"),
        ("train.epochs=many", r"train.epochs must be an integer, got str 'many'"),
        ("train.epochs=2.5", r"train.epochs must be an integer"),
        ("train.lr=fast", r"train.lr must be a number"),
        ("train.progress=maybe", r"train.progress must be true or false"),
        ("train.optimizer=rmsprop", r"train.optimizer must be one of sgd, adam, adamw; got 'rmsprop'"),
        ("data.augment.scale=0.5", r"data.augment.scale must be a list of 2 values"),
        ("data.train.3.path=x", r"index 3 is out of range"),
        ("data.train.first.path=x", r"selected by index"),
        ("train.lr", r"must look like key=value"),
        ("train.lr.x=1", r"has no sub-key 'x'"),
    ],
)
def test_bad_overrides_raise_one_line_config_errors(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        apply_override(Config(), override)
    assert "\n" not in str(info.value)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match=r"unknown config key 'data.train.0.pth'; did you mean 'path'"):
        from_dict({"data": {"train": [{"kind": "manifest", "pth": "x"}]}})
    with pytest.raises(ConfigError, match="data.train.0.kind must be one of"):
        from_dict({"data": {"train": [{"kind": "tfrecord"}]}})


def test_missing_data_paths_and_required_values(tmp_path):
    config = load_config(None, ["data.train.0.path=nowhere.jsonl"])
    with pytest.raises(ConfigError, match="data.train.0.path: manifest not found: nowhere.jsonl"):
        check_data_paths(config)
    config = load_config(None, ["data.root=???", "data.train.0.kind=refer", "data.train.0.path=."])
    with pytest.raises(ConfigError, match="data.root is required"):
        check_data_paths(config)
    apply_override(config, f"data.root={tmp_path}")
    with pytest.raises(ConfigError, match="data.train.0.split is required"):
        check_data_paths(config)
    apply_override(config, "data.train.0.split=val")
    check_data_paths(config)  # relative paths resolve against data.root
    apply_override(config, "data.train.0.path=refer")
    with pytest.raises(ConfigError, match=f"refer folder not found: {tmp_path / 'refer'}"):
        check_data_paths(config)


@pytest.mark.parametrize(
    "overrides, message",
    [(["data.augment.hflip=1.5"], r"data.augment.hflip is a probability in \[0, 1\], got 1.5"),
     (["data.augment.pair_paste=-0.1"], r"data.augment.pair_paste is a probability"),
     (["data.augment.copy_paste=0.6", "data.augment.pair_paste=0.5"], r"must be at most 1 \(one paste per sample\)")],
)
def test_augmentation_probabilities_are_checked(overrides, message):
    config = load_config(None, ["data.train.0.kind=shaperef", "data.train.0.n=4", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_data_paths(config)
    check_data_paths(load_config(None, ["data.train.0.kind=shaperef", "data.train.0.n=4"]))


MODELS = ("whole_image", "per_word", "lstm_cnn", "lstm_cnn_plus", "rmi", "step")


@pytest.mark.parametrize("dataset", ["shaperef", "coco", "refcoco"])
@pytest.mark.parametrize("model", MODELS)
def test_shipped_configs_load_and_name_real_model_options(model, dataset):
    from refseg.models.base import constructor_keys, list_models, model_class

    config = load_config(REPO / "configs" / f"{model}_{dataset}.yaml")
    assert config.model.name == model and config.data.train and config.data.val
    if model in list_models():
        valid = constructor_keys(model_class(model))
        assert valid is None or set(config.model.kwargs) <= valid


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*_paper_*.yaml")), ids=lambda p: p.stem)
def test_paper_configs_build_a_fine_tuned_model_that_runs(path):
    """Each paper config names real options of its model, fine-tunes the backbone (as every paper
    does) and asks for the data roots on the command line."""
    import torch

    from refseg.models import Batch
    from refseg.models.base import build_model, constructor_keys, list_models, model_class

    config = load_config(path)
    assert config.model.name in list_models() and config.data.root == "???"
    assert set(config.model.kwargs) <= constructor_keys(model_class(config.model.name))
    model = build_model(config, ["the man on the left", "a red car"]).eval()
    assert not model.backbone_frozen
    with torch.no_grad():
        out = model(Batch(torch.randn(1, 3, 64, 64), *model.tokenize(["the man on the left"])))
    assert out.logits.shape[:2] == (1, 1) and bool(torch.isfinite(out.logits).all())


def test_relative_paths_in_a_config_file_are_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    monkeypatch.chdir(tmp_path / "configs")
    with_root = write(tmp_path / "configs", "data:\n  root: ../data\n  train:\n    - {path: a.jsonl}\n")
    assert load_config(with_root).data.root == str(tmp_path / "data")
    assert load_config(with_root, ["data.root=other"]).data.root == "other"  # overrides: cwd-relative
    no_root = write(tmp_path / "configs", "data:\n  train:\n    - {path: ../a.jsonl}\n    - {path: /abs/b.jsonl}\n")
    assert [s.path for s in load_config(no_root).data.train] == [str(tmp_path / "a.jsonl"), "/abs/b.jsonl"]
    lists = write(tmp_path / "configs", "data:\n  root: ../data\n  val:\n    - {path: a, only_images: ../dev.jsonl}\n")
    assert load_config(lists).data.val[0].only_images == str(tmp_path / "dev.jsonl")  # not under data.root


def test_photo_lists_must_exist_and_name_image_ids(tmp_path):
    from refseg.data.sources import read_image_ids

    config = load_config(None, ["data.train.0.kind=shaperef", "data.train.0.n=10",
                                f"data.train.0.exclude_images={tmp_path / 'dev.jsonl'}"])
    with pytest.raises(ConfigError, match="data.train.0.exclude_images: photo list not found: .*dev.jsonl"):
        check_data_paths(config)
    (tmp_path / "dev.jsonl").write_text('{"image_id": 7, "sentence": "x"}\n\n{"image_id": "a"}\n')
    check_data_paths(config)
    assert read_image_ids(tmp_path / "dev.jsonl") == {"7", "a"}
    (tmp_path / "dev.jsonl").write_text('{"image_id": 7}\n{"id": 3}\n')
    with pytest.raises(ConfigError, match=r"dev.jsonl:2: no image_id"):
        read_image_ids(tmp_path / "dev.jsonl")
    (tmp_path / "dev.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"dev.jsonl: cannot read the photo list \(UnicodeDecodeError\)"):
        read_image_ids(tmp_path / "dev.jsonl")
    for bad, message in (("{oops\n", "1: not valid JSON"), ('{"image_id": 1}\n[1]\n', "2: not a JSON object")):
        (tmp_path / "dev.jsonl").write_text(bad)
        with pytest.raises(ConfigError, match=rf"dev.jsonl:{message}"):
            read_image_ids(tmp_path / "dev.jsonl")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train.lrr=1"], "error: unknown config key 'train.lrr'; did you mean 'lr'?"),
        (["train.batch_size=big"], "error: train.batch_size must be an integer, got str 'big'"),
    ],
)
def test_cli_config_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    path = write(tmp_path, "train:\n  epochs: 1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == message


def test_cli_missing_config_and_data_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "nope.yaml")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: config file not found: {tmp_path / 'nope.yaml'}"
    path = write(tmp_path, f"data:\n  train:\n    - {{path: {tmp_path}/none.jsonl}}\ntrain:\n  out_dir: {tmp_path}/run\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: data.train.0.path: manifest not found")
