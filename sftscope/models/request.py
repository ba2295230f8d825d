"""What a stage asks an engine for (light: configs and the factory import it, never torch)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel


@dataclass(frozen=True)
class EngineRequest:
    """A model by name and how to run it; ``settings``: the engine's own settings block (its
    config section, e.g. ``vllm``), None for an engine without one or to take its defaults;
    ``base``: the base of a PEFT adapter folder given as ``model`` (default: its config's)."""

    model: str
    device: str = "auto"
    batch_size: int | str = 32
    trust_remote_code: bool = False
    progress: bool = True
    settings: BaseModel | None = None
    base: str | None = None  # the base model of a PEFT adapter folder given as ``model``
