"""Executable checks of the documentation: what the docs claim must match the program.

Every ``refseg`` command in a ``bash`` block of README.md and docs/*.md parses with the real CLI
(commands, options, argument counts); ``refseg train`` commands whose config is in the repository
also load with their overrides; every inline ``train.x=...`` / ``data.x=...`` override is accepted
by the config parser; numbers and model lists quoted from the program are read from it.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from refseg.cli import _register_commands, app
from refseg.config import load_config

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```bash\n(.*?)```", re.S)
FENCED = re.compile(r"```.*?```", re.S)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
OVERRIDE = re.compile(r"(?:^|\s)((?:train|data)\.[a-z_][a-z_0-9.]*=[A-Za-z0-9_.,/\[\]-]+)(?=\s|$)")
OPTIONAL = re.compile(r" \[(-[^\]]*)\]")  # "[--size 128]": an optional option, checked as given
ELLIPSIS = re.compile(r" \[[^\]]*\.\.\.\]")  # "[key=value ...]": a placeholder
#: commands that need an extra, and the extra the README must name next to them
NEEDS_EXTRA = {"serve": "serve", "export onnx": "onnx", "--runtime onnx": "onnx", "--crf": "crf"}


def _commands(path: Path) -> list[tuple[str, str]]:
    """(command, comment) of each ``refseg`` line in the bash blocks of ``path``."""
    found = []
    for block in FENCE.findall(path.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                command, _, comment = part.partition(" #")
                command = OPTIONAL.sub(r" \1", ELLIPSIS.sub("", command.strip()))
                if command.startswith("refseg "):
                    found.append((command, comment.strip()))
    return found


COMMANDS = [(path.name, command, comment) for path in DOCS for command, comment in _commands(path)]


def _parse(args: list[str]) -> None:
    """Parse ``args`` with the real click commands without running them (raises on a usage error)."""
    _register_commands()
    command = typer.main.get_command(app)
    ctx = command.make_context("refseg", list(args))
    while hasattr(command, "resolve_command"):
        name, command, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)


@pytest.mark.parametrize("doc, command, comment", COMMANDS, ids=[c for _, c, _ in COMMANDS])
def test_documented_commands_parse(doc: str, command: str, comment: str, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    args = shlex.split(command)[1:]
    _parse(args)
    if args[0] == "train" and (REPO / args[1]).is_file():
        load_config(REPO / args[1], [a for a in args[2:] if "=" in a and not a.startswith("-")])


def test_readme_says_which_commands_need_an_extra() -> None:
    for command, comment in _commands(REPO / "README.md"):
        for needle, extra in NEEDS_EXTRA.items():
            if needle in command:
                assert f"[{extra}]" in comment, f"README: {command!r} must name the extra refseg[{extra}]"


INLINE = sorted({
    override
    for path in DOCS
    for span in INLINE_CODE.findall(FENCED.sub("", path.read_text(encoding="utf-8")))
    for override in OVERRIDE.findall(span)
})


@pytest.mark.parametrize("override", INLINE)
def test_inline_overrides_are_accepted(override: str) -> None:
    load_config(REPO / "configs" / "rmi_shaperef.yaml", [override])


def test_api_doc_states_the_shipped_threshold() -> None:
    from refseg.engine.checkpoint import read_header, resolve_model_path

    shipped = read_header(resolve_model_path(None))["meta"]["threshold"]
    stated = re.findall(r"([0-9.]+) for the bundled model", (REPO / "docs" / "api.md").read_text())
    assert stated and all(float(s) == shipped for s in stated)


def test_export_doc_lists_every_registered_model() -> None:
    from refseg.models.base import list_models

    text = (REPO / "docs" / "export.md").read_text()
    table = text.split("## Which models export", 1)[1]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
    assert listed == {name for name in list_models() if not name.startswith("_")}
    assert "not registered" not in table and "not checked" not in table


def test_documented_bench_tools_are_modules() -> None:
    """Bench tools run as ``python -m bench.<tool>``: every one the docs quote exists."""
    import importlib.util

    for path in [*DOCS, REPO / "bench" / "human_dev" / "README.md", *sorted((REPO / "configs").glob("*.yaml"))]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"python bench/", text), f"{path.name}: run bench tools as python -m bench.<tool>"
        for module in re.findall(r"python -m (bench(?:\.\w+)+)", text):
            assert importlib.util.find_spec(module) is not None, f"{path.name}: no module {module}"
