"""Pydantic configs, one per stage. Each loads from YAML, takes ``key=value`` overrides, and is
what the CLI fills in, so a YAML file and a command line describe the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sftscope.data.schema import Split
from sftscope.errors import SftscopeError
from sftscope.io import read_yaml
from sftscope.prompts import PromptStyle

C = TypeVar("C", bound=BaseModel)


class StageConfig(BaseModel):
    """Common base: unknown keys are errors (a typo must not silently become a default)."""

    model_config = ConfigDict(extra="forbid")


class DataConfig(StageConfig):
    data: str = Field("geo", description="'geo' (built-in geography set) or 'entityquestions'")
    data_dir: Path | None = Field(None, description="dataset folder ({split}/{rel}.{split}.json)")
    relations: list[str] | None = Field(None, description="relation ids (default: all)")
    limit_per_relation: int | None = Field(None, ge=1, description="first N items per relation")

    @field_validator("relations", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [r.strip() for r in v.split(",") if r.strip()] or None
        return v


class EvalConfig(DataConfig):
    """Closed-book QA evaluation (PAPER.md §4): greedy, 16 new tokens, stop at newline."""

    model: str = Field(description="local path, hub id, or 'smollm2' (the bundled model)")
    split: Split = "test"
    prompt: PromptStyle = Field("fewshot", description="'sft' for fine-tuned models")
    n_shots: int = Field(4, ge=0, description="few-shot exemplars from the train split")
    max_new_tokens: int = Field(16, ge=1)
    batch_size: int = Field(32, ge=1)
    device: str = Field("auto", description="auto, cpu or cuda[:N]")
    seed: int = Field(0, description="seed for exemplar choice")
    fold_accents: bool = Field(False, description="accent-insensitive answer matching")
    trust_remote_code: bool = False
    out: Path


ProbeMethod = Literal["sampling", "likelihood", "slick"]
PAPER_THRESHOLDS = (0.0, 0.25, 0.5, 0.75)


class ProbeConfig(DataConfig):
    """Knowledge-mastery probe of a base model (PAPER.md §2); defaults are the paper's."""

    model: str = Field(description="local path, hub id, or 'smollm2' (the bundled model)")
    split: Split = "train"
    method: ProbeMethod = "sampling"
    templates: int = Field(21, ge=1, description="mapping templates per fact (N_map)")
    samples: int = Field(10, ge=1, description="samples per template (N_sample)")
    temperature: float = Field(0.7, gt=0)
    max_new_tokens: int = Field(32, ge=1)
    thresholds: tuple[float, float, float, float] = Field(
        PAPER_THRESHOLDS, description="level k when R > thresholds[k-1] (R=0 is level 0)"
    )
    calibration: Path | None = Field(None, description="likelihood: calibration.json to use")
    templates_file: Path | None = Field(None, description="mapping templates (default: bundled)")
    early_exit: bool = Field(True, description="sampling: stop a sample once an alias appears")
    slick_sets: int = Field(10, ge=1, description="SliCK: few-shot exemplar sets")
    slick_shots: int = Field(4, ge=1, description="SliCK: exemplars per set")
    slick_samples: int = Field(4, ge=1, description="SliCK: samples per set at slick_temperature")
    slick_temperature: float = Field(0.5, gt=0)
    chunk_size: int = Field(16, ge=1, description="facts per resumable chunk")
    batch_size: int = Field(64, ge=1)
    device: str = "auto"
    seed: int = 0
    trust_remote_code: bool = False
    out: Path

    @field_validator("thresholds")
    @classmethod
    def _ascending(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if list(v) != sorted(v):
            raise ValueError("thresholds must be ascending")
        return v


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings to a dict; values are parsed as YAML scalars (``true``, ``3``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SftscopeError(f"override {pair!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value) if value else None
    return out


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    options: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> C:
    """YAML file < CLI options (those given) < ``key=value`` overrides, validated by ``cls``."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path, "config file") or {}
        if not isinstance(loaded, dict):
            raise SftscopeError(f"{path}: expected a mapping of config fields")
        values.update(loaded)
    values.update({k: v for k, v in (options or {}).items() if v is not None})
    values.update(parse_overrides(overrides or []))
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "config"
        where = f"{path}: " if path else ""
        raise SftscopeError(f"{where}config field {field!r}: {err['msg']}") from None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
