"""How a model name is read: the bundled model's name, a local path or a hub id, and whether
the hub may be asked (light: no torch, no transformers)."""

from __future__ import annotations

import os
from pathlib import Path

SMOLLM2 = "smollm2"


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).exists()


def offline() -> bool:
    """Read at call time (huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
