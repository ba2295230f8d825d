"""Pydantic configs of the stages, one each. Each loads from YAML, takes ``key=value``
overrides, and is what the CLI fills in, so a YAML file and a command line describe the same
run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from sftscope.config.base import (
    CHAT_INSTRUCTION,
    BatchSize,
    PromptStyle,
    Split,
    StageConfig,
    added,
    content,
    key_values,
    runtime,
)
from sftscope.config.engine import EngineFields
from sftscope.registry import PROBE_METHODS, READERS

# The fields of a QA item a generic table's column mapping may name (docs/data.md).
COLUMN_FIELDS = ("question", "answers", "subject", "relation", "split", "popularity", "domain")


class DataSource(StageConfig):
    """Where a stage's QA data comes from: a reader (the registry's names) over a folder or file."""

    data: str = Field("geo", description=f"dataset reader: {READERS.help()}")
    data_dir: Path | None = content(
        None,
        "dataset folder ({split}/{rel}.{split}.json) or table file (popqa, "
        "generic: JSONL, JSON, CSV, TSV, Parquet, or a datasets save_to_disk folder)",
    )
    columns: dict[str, str] | None = added(
        None,
        "generic: the table's column of each field, e.g. answers=golden_answers "
        f"({', '.join(COLUMN_FIELDS)}); unmapped fields are recognised by name",
    )

    @field_validator("columns", mode="before")
    @classmethod
    def _column_pairs(cls, v: Any) -> Any:
        """``question=q,answers=a`` (the option's and ``key=value``'s form) or a mapping; the
        keys must be item fields. Empty is None, so an empty mapping changes no fingerprint."""
        if isinstance(v, str):
            v = key_values(v, "FIELD=COLUMN")
        if isinstance(v, dict):
            unknown = [k for k in v if k not in COLUMN_FIELDS]
            if unknown:
                raise ValueError(
                    f"unknown field {unknown[0]!r} (expected {', '.join(COLUMN_FIELDS)})"
                )
            return v or None
        return v


class ModelRuntime(EngineFields):
    """How a stage runs its model(s): the engine (and its settings section), the device, and
    whether the model repo's own code may run."""

    device: str = runtime("auto", "auto, cpu or cuda")
    trust_remote_code: bool = Field(False, description="run the model repo's own code")

    def runtime_fields(self) -> dict[str, Any]:
        """These fields as they are (to run another stage the same way)."""
        return {name: getattr(self, name) for name in ModelRuntime.model_fields}


class RunContext(ModelRuntime, DataSource):
    """The run context, declared once: what every model stage of a run shares (the data, and
    where and on what it runs). A composite run's config is one; it hands it to each stage it
    plans with :meth:`context`."""

    def context(self) -> dict[str, Any]:
        """The context's fields as they are (to build a stage's config with)."""
        data = {name: getattr(self, name) for name in DataSource.model_fields}
        return {**self.runtime_fields(), **data}


class DataConfig(DataSource):
    """The data of one stage: the source, the relations and how many items of each."""

    relations: list[str] | None = Field(
        None, description="relation ids, e.g. P17,P36; all if not given"
    )
    limit_per_relation: int | None = Field(None, ge=1, description="first N items per relation")

    @field_validator("relations", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [r.strip() for r in v.split(",") if r.strip()] or None
        return v


class EvalSettings(StageConfig):
    """How answers are generated and judged; shared by ``sftscope eval`` and the grid."""

    split: Split = Field("test", description="split evaluated")
    limit_per_relation: int | None = Field(None, ge=1, description="first N items per relation")
    n_shots: int = Field(4, ge=0, description="few-shot exemplars (base model prompts)")
    max_new_tokens: int = Field(16, ge=1, description="greedy tokens per answer")
    batch_size: BatchSize = runtime(32, "prompts per batch; auto: from free GPU memory")
    seed: int = Field(0, description="seed for exemplar choice")
    fold_accents: bool = Field(False, description="accent-insensitive answer matching")
    chat_instruction: str = added(
        CHAT_INSTRUCTION, "what a chat prompt asks beside the question (empty: nothing)"
    )


class AdapterBase(StageConfig):
    """For a stage of one model, which may be a PEFT adapter folder (a stage comparing a tuned
    model with a base applies a tuned adapter to that base)."""

    base: str | None = added(
        None,
        "with a PEFT adapter folder as the model: its base model (default: "
        "base_model_name_or_path in its adapter_config.json)",
    )


class EvalConfig(RunContext, DataConfig, EvalSettings, AdapterBase):
    """Closed-book QA evaluation (docs/method.md §4): greedy, 16 new tokens, stop at newline."""

    model: str = Field(description="local path, hub id, or 'smollm2' (the bundled model)")
    prompt: PromptStyle = Field(
        "fewshot",
        description="fewshot (Question/Answer exemplars: base models), sft (the paper's format: "
        "models trained by sftscope train) or chat (the tokenizer's chat template: instruct "
        "models)",
    )
    mastery: Path | None = Field(None, description="probe folder or mastery.jsonl: per-level acc")
    out: Path = runtime(description="output folder")


ProbeMethod = PROBE_METHODS.literal()
PAPER_THRESHOLDS = (0.0, 0.25, 0.5, 0.75)


class ProbeSettings(StageConfig):
    """How mastery is measured (docs/method.md §2); defaults are the paper's. Shared by
    ``sftscope probe`` and the grid."""

    method: ProbeMethod = Field("sampling", description=f"probe method: {PROBE_METHODS.help()}")
    templates: int = Field(
        21, ge=1, description="mapping templates per fact (N_map); question: exemplar sets"
    )
    samples: int = Field(10, ge=1, description="samples per template (N_sample)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature")
    max_new_tokens: int = Field(32, ge=1, description="tokens per sample")
    thresholds: tuple[float, float, float, float] = Field(
        PAPER_THRESHOLDS, description="level k when R > thresholds[k-1] (R=0 is level 0)"
    )
    calibration: Path | None = content(None, "likelihood: calibration.json to use")
    templates_file: Path | None = content(None, "mapping templates (default: bundled)")
    early_exit: bool = Field(True, description="sampling: stop a sample once an alias appears")
    slick_sets: int = Field(10, ge=1, description="SliCK: few-shot exemplar sets")
    slick_shots: int = Field(4, ge=1, description="SliCK and question: exemplars per set")
    slick_samples: int = Field(4, ge=1, description="SliCK: samples per set at slick_temperature")
    slick_temperature: float = Field(0.5, gt=0, description="SliCK: sampling temperature")
    prompt: Literal["fewshot", "chat"] = added(
        "fewshot",
        "question: each exemplar set as few-shot Question/Answer text (fewshot), or as earlier "
        "turns of the tokenizer's chat template before the question (chat: instruct models)",
    )
    chat_instruction: str = added(
        CHAT_INSTRUCTION, "question with prompt chat: what the prompt asks beside the question"
    )
    chunk_size: int = Field(16, ge=1, description="facts per resumable chunk")
    batch_size: BatchSize = runtime(64, "prompts per batch; auto: from free GPU memory")
    seed: int = Field(0, description="sampling and exemplar seed")

    @field_validator("thresholds")
    @classmethod
    def _ascending(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if list(v) != sorted(v):
            raise ValueError("thresholds must be ascending")
        return v

    @field_validator("prompt")
    @classmethod
    def _chat_asks_questions(cls, v: str, info: ValidationInfo) -> str:
        """Only the question method prompts with exemplar sets; the others would silently
        ignore ``chat`` (``auto``, select's and the audit's, then picks ``question``)."""
        method = info.data.get("method")
        if v == "chat" and method not in (None, "question", "auto"):
            raise ValueError(f"chat is for the question method, not {method}")
        return v


ProbeSplit = Literal["train", "dev", "test", "all"]


class ProbeConfig(RunContext, DataConfig, ProbeSettings, AdapterBase):
    """``sftscope probe``: the mastery level of every fact of one split, for one base model."""

    model: str = Field(description="local path, hub id, or 'smollm2' (the bundled model)")
    split: ProbeSplit = Field(
        "train",
        description="split probed; all: every item of every split as one pool (few-shot "
        "exemplars then come from the other items, never from the fact itself)",
    )
    out: Path = runtime(description="output folder")


SelectMethod = PROBE_METHODS.literal("auto")


class SelectProbe(ProbeSettings):
    """The probe inside ``sftscope select``: the paper's settings; the method from the data."""

    method: SelectMethod = Field(  # type: ignore[assignment]
        "auto",
        description="auto: sampling when the data has mapping templates (a packaged "
        "dataset's, or templates_file), else question (any QA file); or a probe method",
    )


class SelectConfig(RunContext, DataConfig, AdapterBase):
    """``sftscope select``: the base model's mastery level of every pair of an SFT file, and
    the subsets the paper's findings recommend (see :mod:`sftscope.select_data`)."""

    model: str = Field(description="the base model: local path, hub id, or 'smollm2'")
    data: str = Field(
        "generic",
        description="dataset reader of the SFT file: generic (any QA table), popqa, "
        "entityquestions, testbed, geo",
    )
    probe: SelectProbe = Field(SelectProbe(), description="how mastery is measured")
    size: int = Field(
        240, ge=1, description="pairs in recommended.jsonl (docs/method.md §5.1: ~240 is best)"
    )
    min_level: int = Field(
        2,
        ge=0,
        le=4,
        description="lowest mastery level recommended (level 0 hurts: docs/method.md §5.1)",
    )
    max_level: int = Field(4, ge=0, le=4, description="highest mastery level recommended")
    seed: int = Field(0, description="seed of the recommended sample")
    out: Path = runtime(description="output folder")

    @field_validator("max_level")
    @classmethod
    def _level_range(cls, v: int, info: ValidationInfo) -> int:
        low = info.data.get("min_level")
        if low is not None and v < low:
            raise ValueError(f"max_level {v} is below min_level {low}")
        return v


class TrainRecipe(StageConfig):
    """The SFT recipe (docs/method.md §3.2); defaults are the paper's. Shared by ``sftscope train``
    and the grid, so a cell's recipe and a single run's are the same object."""

    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate")
    batch_size: int = Field(8, ge=1, description="global batch (split over processes)")
    epochs: float = Field(1.0, gt=0, description="passes over the data")
    optimizer: str = Field("adamw_torch", description="a transformers optim name")
    lr_scheduler: str = Field("cosine", description="a transformers scheduler name")
    warmup: float = Field(0.0, ge=0, description="warmup steps, or a fraction of steps if < 1")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    max_length: int = Field(256, ge=8, description="tokens per example (prompt + answer)")
    lora: bool = Field(False, description="train LoRA adapters (PEFT) instead of all weights")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling alpha")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    lora_targets: str | list[str] = Field("all-linear", description="PEFT target_modules")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30% slower"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto: fp32 on CPU; on CUDA bf16 mixed precision (fp32 master weights; LoRA "
        "keeps the frozen weights in bf16). bfloat16/float16: the weights themselves in 16 bits "
        "(half the memory, but AdamW steps below their resolution are lost)",
    )
    device: str = runtime("auto", "auto, cpu or cuda")
    seed: int = Field(0, description="seed of shuffling and initialisation")
    logging_steps: int = runtime(1, "log the loss every N steps", ge=1)


class TrainConfig(TrainRecipe, AdapterBase):
    """``sftscope train``: one fine-tuning run on one JSONL file."""

    model: str = Field(description="local path, hub id, or 'smollm2' (the bundled model)")
    train_file: Path = Field(
        description="SFT rows (JSONL, JSON, CSV, TSV, Parquet): question+answer, "
        "prompt+completion, chat messages or Alpaca instruction/input/output"
    )
    trust_remote_code: bool = Field(False, description="run the model repo's own code")
    watch: Path | None = runtime(
        None,
        "a probe folder (its known and unknown facts) or a QA file whose facts are answered "
        "every few steps while training (knowledge_log.jsonl beside the model)",
    )
    watch_every: int | None = runtime(None, "steps between measurements (default: 10 % of the run)")
    watch_stop_below: float | None = added(
        None, "stop training when the watched known facts kept fall below this share", gt=0, le=1
    )
    out: Path = runtime(description="output folder")


class KLSettings(StageConfig):
    """How the token-level distance is measured (docs/method.md §6); shared by ``sftscope kl`` and
    the grid."""

    level: int = Field(4, ge=0, le=4, description="paper KL: mastery level of the facts")
    answer_within: int = Field(2, ge=1, description="paper KL: answer starts in the first N tokens")
    top_k: int = Field(10, ge=2, description="paper KL: tokens compared at the first position")
    tuned_prompt: Literal["sft", "template"] = Field(
        "sft", description="paper KL: the fine-tuned model's prompt (template: best mapping one)"
    )
    base_prompt: Literal["sft", "template"] = Field(
        "template", description="paper KL: the base model's prompt"
    )
    paper: bool = added(
        True, "the paper KL (needs mapping templates); false: only the full-vocabulary KL"
    )
    full: bool = Field(True, description="also the full-vocabulary KL (SFT prompt, every fact)")
    chunk_size: int = Field(256, ge=1, description="answer positions per fp32 KL chunk")
    batch_size: BatchSize = runtime(16, "facts per forward pass; auto: from free GPU memory")


class KLConfig(RunContext, DataConfig, KLSettings):
    """``sftscope kl``: how far a fine-tuned model moved from its base (docs/method.md §6)."""

    base: str = Field(description="the base model (path, hub id or 'smollm2')")
    tuned: str = Field(description="the fine-tuned model folder")
    split: Split = Field("test", description="split measured")
    probe: Path = Field(description="base-model probe of this split: levels, template success")
    templates_file: Path | None = content(None, "mapping templates (default: bundled)")
    out: Path = runtime(description="the JSON summary to write (records go beside it)")


PAPER_K = (1.0, 3.0, 5.0, 10.0, 20.0, 40.0, 60.0)


def compute_device_field() -> Any:
    """Where diff/restore do their arithmetic. The selected weights are the same on any device
    (elementwise fp32 ops round alike, rankings count integers), so the field is left out of
    fingerprints."""
    return runtime("cpu", "auto, cpu or cuda: device for the r arithmetic")


class DiffConfig(StageConfig):
    """``sftscope diff``: relative change of every weight and its concentration
    (docs/method.md §7)."""

    base: str = Field(description="the base model (path, hub id or 'smollm2')")
    tuned: Path = Field(description="the fine-tuned model folder")
    region: str = Field(
        "paper",
        description="weights: paper (decoder layers, no norms), attention, mlp, embedding, "
        "all or re:PATTERN",
    )
    nonzero_base: bool = Field(
        False, description="concentration over weights whose base value is not exactly 0"
    )
    compute_device: str = compute_device_field()
    out: Path = runtime(description="output folder")


class RestoreSettings(StageConfig):
    """Which fine-tuned weights go back to their pre-SFT values (docs/method.md §7); defaults
    are the paper's. Shared by ``sftscope restore`` and the grid."""

    k: list[float] = Field(list(PAPER_K), min_length=1, description="% of region weights, 0<k<100")
    scope: Literal["global", "layer", "tensor"] = Field(
        "global", description="one ranking of the weights per region, layer or tensor"
    )
    strategy: Literal["top", "bottom", "random"] = Field(
        "top", description="restore the most changed, least changed or random weights"
    )
    region: str = Field(
        "paper",
        description="weights: paper (decoder layers, no norms), attention, mlp, embedding, "
        "all or re:PATTERN",
    )
    layers: list[str] | None = Field(
        None,
        description="layer blocks A-B, e.g. 0-3,4-7, restored entirely, one output each (not k)",
    )
    seed: int = Field(0, description="seed of the random strategy")
    max_shard_bytes: int = runtime(2 * 2**30, "output shard size", ge=1)
    save: bool = runtime(
        True,
        "write a checkpoint per output; false (with eval): restore each in the loaded "
        "model, evaluate it, put the tuned weights back; same scores, no checkpoints",
    )

    @field_validator("k", "layers", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        if isinstance(v, int | float):
            return [v]
        return v

    @field_validator("k")
    @classmethod
    def _percent(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not 0 < x < 100]
        if bad:
            raise ValueError(f"k={bad[0]:g} is not a percentage strictly between 0 and 100")
        if len(set(v)) != len(v):
            raise ValueError("k values repeat")
        return v


class RestoreEval(DataConfig, EvalSettings):
    """Evaluate every restored model (and the unrestored one, k = 0) after restoring."""

    mastery: Path | None = Field(None, description="probe of the split: per-level accuracy")
    pick_on: Literal["dev"] | None = Field(
        None, description="choose k by dev in-domain accuracy and report test at that k"
    )
    keep_models: bool = runtime(True, "false: delete restored weights once evaluated")
    prompt: PromptStyle = added(
        "sft",
        "prompt of every evaluated model: sft (the paper's format), fewshot (the "
        "base model's few-shot prompt, for a fine-tune in another format), or chat (the "
        "tokenizer's chat template, for an instruct fine-tune)",
    )


class RestoreConfig(ModelRuntime, RestoreSettings):
    """``sftscope restore``: restored checkpoints per k (or layer block), optionally evaluated."""

    base: str = Field(description="the base model (path, hub id or 'smollm2')")
    tuned: Path = Field(description="the fine-tuned model folder")
    eval: RestoreEval | None = Field(None, description="evaluate every restored model (--eval)")
    device: str = runtime("auto", "device of the evaluation (--eval)")
    compute_device: str = compute_device_field()
    out: Path = runtime(description="output folder")
