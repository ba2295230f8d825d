"""The ``sftscope`` command line (entry only): load a config, call a stage or a composite
command, print. The stage subcommands are in :mod:`.commands`, the composite ones (grid, audit,
demo, report, testbed) in :mod:`.composite`; their options are generated from the config
models (:mod:`.options`)."""

from sftscope.cli.commands import app

__all__ = ["app"]
