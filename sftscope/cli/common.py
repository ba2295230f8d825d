"""What every ``sftscope`` subcommand shares: the console, ``--config`` and the ``key=value``
overrides (the stage options are generated from the configs: :mod:`sftscope.cli.options`), and
the one-line error handling (``error: …`` on stderr, exit code 2)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sftscope.errors import SftscopeError

console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key=value config overrides")]


def _one_line_errors(fn):
    """Turn SftscopeError into ``error: …`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SftscopeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper
