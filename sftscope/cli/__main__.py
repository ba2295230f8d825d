"""``python -m sftscope.cli`` (as ``accelerate launch -m sftscope.cli train ...`` runs it)."""

from sftscope.cli.commands import app

app()
