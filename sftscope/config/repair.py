"""The config of ``sftscope repair``: repair methods compared on the same facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from sftscope.config.base import PromptStyle, key_values, runtime
from sftscope.config.stages import DataConfig, EvalSettings, RunContext, compute_device_field
from sftscope.registry import REPAIR_METHODS


class RepairEval(EvalSettings):
    """How every repaired model is evaluated: each point on dev (where the pick is made), the
    picked points and the unrepaired model on ``split``."""

    prompt: PromptStyle = Field("sft", description="prompt of every evaluated model")
    mastery: Path | None = Field(
        None,
        description="the base model's probes, DIR/<split> and optionally DIR/dev (sftscope probe "
        "--split S --out DIR/S; a grid's probe/ folder), or one probe folder of the split: "
        "per-level accuracy (the paper's mean of levels) and the known facts kept",
    )


class RepairConfig(RunContext):
    """``sftscope repair``: every repair method at every strength, in place on the loaded
    fine-tuned model, evaluated on dev; per method the best dev point, reported on test."""

    base: str = Field(description="the base model (path, hub id or 'smollm2')")
    tuned: Path = Field(description="the fine-tuned model folder (or a PEFT adapter)")
    relations: list[str] | None = DataConfig.model_fields["relations"]
    methods: list[str] = Field(
        list(REPAIR_METHODS.names), description=f"repair methods: {REPAIR_METHODS.help()}"
    )
    strengths: dict[str, str] = Field(
        {},
        description="strength grid per method, METHOD=a/b/c (default: the method's own grid)",
    )
    region: str = Field(
        "paper",
        description="weights repaired: paper (decoder layers, no norms), attention, mlp, "
        "embedding, all or re:PATTERN",
    )
    seed: int = Field(0, description="seed of random draws (dare)")
    task_data: Path | None = Field(
        None,
        description="the fine-tune's own held-out SFT rows (any shape train reads): the task "
        "every point is scored on and picked by; default the in-domain CBQA in eval.prompt",
    )
    keep_task: float | None = Field(
        None,
        gt=0,
        le=1,
        description="pick per method the point with the most knowledge (known facts kept, or "
        "out-of-domain accuracy) that keeps this share of the task gain over the base, e.g. "
        "0.95; default the paper's rule: the best dev task score",
    )
    eval: RepairEval = Field(RepairEval(), description="how repaired models are evaluated")
    save: str | None = runtime(
        None,
        "write a repaired checkpoint (OUT/models/LABEL): best (the pick with the best dev "
        "score) or METHOD:STRENGTH",
    )
    compute_device: str = compute_device_field()
    out: Path = runtime(description="output folder")

    @field_validator("methods", "relations", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        return [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else v

    @field_validator("strengths", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = key_values(v, "METHOD=a/b/c")
        if isinstance(v, dict):
            return {
                k: "/".join(map(str, x)) if isinstance(x, list | tuple) else str(x)
                for k, x in v.items()
            }
        return v

    @model_validator(mode="after")
    def _check_grids(self) -> RepairConfig:
        for method in self.methods:
            REPAIR_METHODS[method]  # an unknown one: one line naming the known ones
        unknown = sorted(set(self.strengths) - set(self.methods))
        if unknown:
            raise ValueError(f"strengths for {unknown[0]!r}, which is not in methods")
        for method in self.methods:
            self.grid(method)
        if self.save not in (None, "best"):
            method, sep, value = self.save.partition(":")
            try:
                strength = float(value)
            except ValueError:
                strength = None
            if not sep or strength is None:
                raise ValueError(f"save {self.save!r}: expected best or METHOD:STRENGTH")
            REPAIR_METHODS[method].check_strength(method, strength)
        return self

    def grid(self, method: str) -> list[float] | None:
        """The strengths of ``method``, checked against its range; None: the method's default
        from the model (its registry entry has no grid)."""
        entry = REPAIR_METHODS[method]
        text = self.strengths.get(method)
        if text is None:
            return [float(x) for x in entry.strengths] or None
        try:
            values = [float(x) for x in text.replace(",", "/").split("/") if x.strip()]
        except ValueError:
            raise ValueError(f"strengths {method}={text!r}: expected numbers a/b/c") from None
        if not values:
            raise ValueError(f"strengths {method}: no value")
        return [entry.check_strength(method, x) for x in values]
