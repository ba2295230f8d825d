"""Where sftscope keeps derived files that are expensive to rebuild (``$SFTSCOPE_CACHE``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$SFTSCOPE_CACHE`` or ``~/.cache/sftscope``; created on demand by the callers."""
    return Path(os.environ.get("SFTSCOPE_CACHE", Path.home() / ".cache" / "sftscope"))
