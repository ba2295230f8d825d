"""What every ``sftscope`` subcommand shares: the console, the option types, and the one-line
error handling (``error: …`` on stderr, exit code 2)."""

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
# Options several stages share; None = "not given", so YAML and defaults apply.
ModelOpt = Annotated[str | None, typer.Option(help="path, hub id, or 'smollm2'")]
DataOpt = Annotated[str | None, typer.Option(help="geo | entityquestions")]
DataDirOpt = Annotated[Path | None, typer.Option(help="dataset folder")]
SplitOpt = Annotated[str | None, typer.Option(help="train | dev | test")]
RelationsOpt = Annotated[str | None, typer.Option(help="comma-separated ids, e.g. P17,P36")]
LimitOpt = Annotated[int | None, typer.Option(help="first N items per relation")]
BatchOpt = Annotated[str | None, typer.Option(help="prompts per batch, or auto (GPU memory)")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto | cpu | cuda")]
ComputeDeviceOpt = Annotated[
    str | None, typer.Option(help="cpu | cuda | auto: device for the r arithmetic (default cpu)")
]
OutOpt = Annotated[Path | None, typer.Option(help="output folder")]


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
