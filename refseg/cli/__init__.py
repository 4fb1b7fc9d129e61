"""The ``refseg`` command. Thin: each module here adds its commands and calls the library.

Nothing in the library imports this package. User errors (:class:`refseg.errors.RefsegError`)
are printed as one line on stderr with exit code 2, never as a traceback.
"""
from __future__ import annotations

import sys

import typer

from refseg.errors import RefsegError

app = typer.Typer(
    name="refseg",
    help="Referring image segmentation: type a phrase, get the mask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    from refseg.cli import data, detect, eval, export, release, segment, serve, train

    for module in (data, train, eval, segment, detect, serve, export, release):
        module.register(app)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. an expression cut to the model's length) as one ``warning: ...`` line. Deprecation
    warnings of the libraries underneath (numpy's about pycocotools, say) are for developers: not shown."""
    if issubclass(category, DeprecationWarning):
        return
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``refseg`` script and ``python -m refseg``."""
    import warnings

    warnings.showwarning = _show_warning
    _register_commands()
    try:
        app(args=argv, standalone_mode=False)
    except RefsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        # typer >= 0.20 vendors click: its usage errors derive from typer.TyperException
        if isinstance(exc, (click.ClickException, typer.TyperException)) and hasattr(exc, "show"):
            exc.show()
            sys.exit(exc.exit_code)
        raise
