"""The configs of the composite commands: the experiment grid (``sftscope run``) and the audit of
a base / tuned pair (``sftscope audit``), built from the stages' settings sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from sftscope.config.base import PromptStyle, added, runtime
from sftscope.config.executors import ExecutorConfig
from sftscope.config.stages import (
    DataConfig,
    EvalSettings,
    KLSettings,
    ProbeSettings,
    RestoreSettings,
    RunContext,
    SelectProbe,
    TrainRecipe,
    compute_device_field,
)


class GridKL(KLSettings):
    """The token-level stage inside the grid (on the evaluation split's items)."""

    enabled: bool = Field(True, description="run sftscope kl for every cell")


class GridEval(EvalSettings):
    """Evaluation inside the grid: every cell (SFT prompt) and, optionally, the base model."""

    base: bool = Field(True, description="also evaluate the base model (few-shot prompt)")


class ParamsSettings(RestoreSettings):
    """The parameter level of a composite run (docs/method.md §7), as the grid and the audit
    plan it: the diff (``params/<cell>/diff/``) and the restore sweep, each restored model
    evaluated like the tuned one (``params/<cell>/restore/``), and optionally layer blocks."""

    layers: list[str] | None = Field(
        None, description="also restore these layer blocks A-B entirely (params/<cell>/blocks)"
    )
    diff: bool = Field(True, description="relative change of every weight")
    restore: bool = Field(True, description="the restore sweep, each restored model evaluated")
    save: bool = runtime(
        False, "write every restored checkpoint (default: restore in place, evaluate, undo)"
    )
    compute_device: str = compute_device_field()
    pick_on: Literal["dev"] | None = Field(None, description="also pick k on dev")


class GridParams(ParamsSettings):
    """Parameter-level analyses inside the grid, for the cells named."""

    cells: list[str] = Field([], description="cell names, e.g. 2-240-0, or 'all'")

    @field_validator("cells", mode="before")
    @classmethod
    def _split_cells(cls, v: Any) -> Any:
        return [c.strip() for c in v.split(",") if c.strip()] if isinstance(v, str) else v


def _relation_list(v: Any) -> Any:
    """``P17,P36`` (from a command line) as a list of relation ids."""
    return DataConfig._split_commas(v)


def _executor_config(v: Any) -> Any:
    """``executor: slurm`` as ``executor: {kind: slurm}``."""
    return ExecutorConfig._from_name(v)


class GridConfig(RunContext):
    """``sftscope run``: the experiment grid; cells = level x size x seed (docs/method.md §1.4)."""

    model: str = Field(description="base model: local path, hub id, or 'smollm2'")
    relations: list[str] | None = Field(None, description="in-domain relations to train on")
    train_limit_per_relation: int | None = Field(
        None, ge=1, description="train facts probed per relation (None: all)"
    )
    levels: list[int | Literal["mixed"]] = Field(
        [0, 1, 2, 3, 4],
        min_length=1,
        description="mastery levels of the training subsets, or mixed",
    )
    sizes: list[int | Literal["all"]] = Field(
        [60, 240, 960, 1920, "all"], min_length=1, description="training facts per subset, or all"
    )
    seeds: list[int] = Field([0], min_length=1, description="subset and training seeds")
    probe: ProbeSettings = Field(ProbeSettings(), description="mastery probe of the base model")
    train: TrainRecipe = Field(TrainRecipe(), description="the SFT recipe of every cell")
    eval: GridEval = Field(GridEval(), description="evaluation of every cell")
    kl: GridKL = Field(GridKL(), description="token-level KL of every cell")
    params: GridParams = Field(GridParams(), description="diff and restore of the cells named")
    transitions: bool = Field(
        False,
        description="re-probe the eval facts with every tuned model (probe/after/<cell>/): "
        "the knowledge-transition table, base level -> level after SFT",
    )
    watch: bool = runtime(
        False,
        "record each cell's knowledge curve while it trains: the known and unknown facts of "
        "the evaluation split's probe, answered every 10 % of the run "
        "(models/<cell>/knowledge_log.jsonl)",
    )
    keep_models: bool = runtime(True, "false: delete checkpoints once a cell is done")
    executor: ExecutorConfig = runtime(
        ExecutorConfig(), "how jobs run: local | processes | slurm | ray, and their settings"
    )
    device: str = runtime("auto", "auto, cpu or cuda: every stage's device")
    note: str | None = runtime(
        None, "a sentence for the report's header: why this run departs from the paper"
    )
    out: Path = runtime(description="run folder")

    _relations = field_validator("relations", mode="before")(_relation_list)
    _executor = field_validator("executor", mode="before")(_executor_config)

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list) -> list:
        bad = [x for x in v if x != "mixed" and x not in range(5)]
        if bad:
            raise ValueError(f"level {bad[0]} is not 0..4 or 'mixed'")
        return v

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list) -> list:
        bad = [x for x in v if x != "all" and x < 1]
        if bad:
            raise ValueError(f"size {bad[0]} is not a positive integer or 'all'")
        return v


class AuditProbe(SelectProbe):
    """The probe of both models in ``sftscope audit``: the same settings, items and seed before
    and after SFT (the clean measure of what was lost and gained)."""


class AuditEval(EvalSettings):
    """CBQA of both models in ``sftscope audit`` (its split and limit are also the probed
    facts')."""

    tuned_prompt: PromptStyle = Field(
        "fewshot",
        description="the tuned model's prompt: fewshot, the base model's own "
        "few-shot Question/Answer prompt (n_shots exemplars; fair to any SFT format), sft, the "
        "paper's <|question|> ... <|answer|> (for models trained by sftscope train), or chat, "
        "the tokenizer's chat template (instruct models)",
    )
    base_prompt: Literal["fewshot", "chat"] = added(
        "fewshot", "the base model's prompt: fewshot, or chat for an instruct base model"
    )


class AuditKL(GridKL):
    """The token-level KL in ``sftscope audit``, on the probed facts."""

    tuned_prompt: Literal["auto", "sft", "template"] = Field(  # type: ignore[assignment]
        "auto",
        description="paper KL: the tuned model's prompt; auto: sft when tuned_prompt is "
        "sft, else template (the base model's best mapping template)",
    )


class AuditParams(ParamsSettings):
    """The parameter level in ``sftscope audit``: where the weights changed, and the restore
    sweep with k picked on dev."""

    pick_on: Literal["dev"] | None = Field(  # type: ignore[assignment]
        "dev",
        description="choose k by dev in-domain accuracy and report the test score at "
        "that k (null: the sweep only, no dev split needed)",
    )


class AuditConfig(RunContext):
    """``sftscope audit``: what fine-tuning did to a model's knowledge, for any base / tuned
    pair of the same architecture (see :mod:`sftscope.pipeline.audit`)."""

    base: str = Field(description="the base model: a local save_pretrained folder or 'smollm2'")
    tuned: Path = Field(description="the fine-tuned model folder (the base's architecture)")
    relations: list[str] | None = DataConfig.model_fields["relations"]
    probe: AuditProbe = Field(AuditProbe(), description="the mastery probe of both models")
    eval: AuditEval = Field(AuditEval(), description="CBQA of both models")
    kl: AuditKL = Field(AuditKL(), description="token-level KL of the tuned model from the base")
    params: AuditParams = Field(AuditParams(), description="weight diff and restore sweep")
    repair: list[str] = Field(
        [],
        description="repair methods compared in place on the tuned model, each picked on dev "
        "(sftscope repair; all: every one); none by default",
    )
    keep_models: bool = runtime(
        True, "false: delete each restored checkpoint (params.save: true) once evaluated"
    )
    # how and where the stages run: as in the grid
    executor: ExecutorConfig = GridConfig.model_fields["executor"]
    device: str = GridConfig.model_fields["device"]
    out: Path = runtime(description="audit folder")

    _relations = field_validator("relations", mode="before")(_relation_list)
    _executor = field_validator("executor", mode="before")(_executor_config)

    @field_validator("repair", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> Any:
        from sftscope.registry import REPAIR_METHODS

        names = [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else v
        if names == ["all"]:
            return list(REPAIR_METHODS.names)
        for name in names or []:
            REPAIR_METHODS[name]  # an unknown one: one line naming the known ones
        return names
