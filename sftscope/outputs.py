"""The stages' typed outputs: one pydantic summary model per stage (eval, probe, kl, the restore
sweep, the audit), written with ``model_dump_json`` and read back with ``model_validate``, so
a summary's shape is declared once and every reader (the CLI's tables, the grid's report, the
audit, the restore sweep) reads attributes, not key paths. The file names are in
:mod:`sftscope.layout`.

Summaries written by earlier versions still read: fields added since have defaults, and keys a
model does not declare are kept (``extra="allow"``), never an error. A file that is not a
summary at all is a one-line error naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import Self

from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_text, json_text


class Part(BaseModel):
    """A block inside a summary (same tolerance as a summary)."""

    model_config = ConfigDict(extra="allow")


class Summary(Part):
    """A stage's summary file."""

    def write(self, path: str | Path) -> Path:
        """Atomically, as indented JSON with each list of numbers on one line (its presence
        marks a stage's output complete)."""
        return atomic_write_text(path, json_text(self.model_dump(mode="json")))

    @classmethod
    def read(cls, path: str | Path) -> Self:
        path = Path(path)
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise SftscopeError(f"{path}: not found (has its stage run?)") from None
        except (json.JSONDecodeError, ValidationError) as e:
            first = str(e).splitlines()[0]
            raise SftscopeError(f"{path}: expected {cls.__name__} JSON ({first})") from None

    @classmethod
    def read_if(cls, path: str | Path) -> Self | None:
        """The summary at ``path``, or None when there is none yet."""
        return cls.read(path) if Path(path).exists() else None


# -- evaluation ---------------------------------------------------------------------------
class Score(Part):
    """Accuracy of a group of items under both criteria (None when the group is empty)."""

    n: int = 0
    containment: float | None = None
    exact: float | None = None


class Means(Part):
    """An unweighted mean of group accuracies (over relations, or over mastery levels)."""

    containment: float | None = None
    exact: float | None = None


class RelationScore(Score):
    domain: str


class LevelScores(Part):
    """Accuracy per mastery level (0-4) and the paper's headline, their unweighted mean."""

    per_level: list[Score]
    mean_of_levels: Means
    missing_levels: list[int] = []


class EvalSummary(Summary):
    """``eval/<name>/summary.json``: accuracy per relation, in-domain, out-of-domain and
    overall, and (with a probe's levels) per mastery level."""

    model: str
    data: str
    split: str
    prompt: str
    engine: dict[str, Any] = {}
    overall: Score
    in_domain: Score
    ood: Score
    macro_relations: Means
    per_relation: dict[str, RelationScore]
    by_level: dict[str, LevelScores] | None = None
    unprobed: int | None = None

    def group(self, domain: str) -> Score:
        """``in_domain``, ``ood`` or ``overall``."""
        return getattr(self, domain)

    def levels(self, domain: str) -> LevelScores | None:
        return (self.by_level or {}).get(domain)

    def headline(self, domain: str) -> float | None:
        """The paper's headline when levels are known (mean of per-level accuracies), else plain
        containment accuracy; None for a domain without items."""
        block = self.levels(domain)
        if block is not None and block.mean_of_levels.containment is not None:
            return block.mean_of_levels.containment
        group = self.group(domain)
        return group.containment if group.n else None


# -- probe ----------------------------------------------------------------------------------
class ProbeSummary(Summary):
    """``probe/<split>/summary.json``: facts per mastery level and how the probe ran."""

    method: str
    model: str | None = None
    data: str | None = None
    split: str | None = None
    thresholds: list[float]
    n_items: int | None = None
    n_probed: int
    no_subject: int = 0
    histogram: dict[str, list[int]]
    wall_seconds: float | None = None
    facts_per_second: float | None = None
    forward_tokens: int | None = None
    engine: dict[str, Any] | None = None
    calibration: str | None = None


class ProbeShard(Part):
    """What one shard of a probe reports (its chunks are merged by a last, unsharded call)."""

    chunks: int
    facts: int
    seconds: float


# -- token level ----------------------------------------------------------------------------
class Stats(Part):
    n: int = 0
    mean: float | None = None
    std: float | None = None


class PaperKL(Stats):
    """The paper's top-k first-token KL on the level-``level`` facts that answer first."""

    per_relation: dict[str, Stats] = {}
    level: int
    candidates: int
    answer_first: int
    top_k: int
    prompts: dict[str, str]
    templates: dict[str, Any] = {}


class FullKLBlock(Part):
    n: int = 0
    kl_mean: float | None = None
    kl_std: float | None = None
    dlogp_mean: float | None = None
    gained: float | None = None


class FullKL(Part):
    """Mean per-token KL over the gold answer and the change of its log-likelihood."""

    overall: FullKLBlock
    per_level: list[FullKLBlock]
    per_relation: dict[str, FullKLBlock] = {}
    prompt: str


class KLSummary(Summary):
    """``kl/<name>.json``: how far the tuned model's distributions moved from the base's."""

    base: str
    tuned: str
    split: str
    engine: dict[str, Any] = {}
    paper: PaperKL | None = None
    full: FullKL | None = None


# -- the restore sweep ----------------------------------------------------------------------
class SweepRow(Part):
    """One model of the sweep (``tuned``, a k, or a layer block): its headline accuracies on
    the evaluated split and, when k is picked on dev, on dev."""

    label: str
    k: float | None = None
    in_domain: float | None = None
    ood: float | None = None
    dev_in_domain: float | None = None
    dev_ood: float | None = None


class SweepPick(Part):
    label: str
    k: float | None = None
    dev_in_domain: float | None = None
    in_domain: float | None = None
    ood: float | None = None
    gain_in_domain: float | None = None
    gain_ood: float | None = None


class SweepSummary(Summary):
    """``params/<cell>/restore/sweep.json`` (or ``blocks/``): every restored model's scores."""

    split: str
    engine: str = "hf"
    rows: list[SweepRow]
    pick: SweepPick | None = None


# -- repair ---------------------------------------------------------------------------------
class RepairPoint(Part):
    """One model of a repair sweep on one split: the unrepaired fine-tune (no method) or a
    method at a strength. ``known_kept``: of the in-domain facts the base model knew (levels
    3-4), the share answered right; ``lost`` / ``gained``: in-domain facts the unrepaired model
    answered right and this one wrong, and the reverse; ``p_value``: exact McNemar test of
    those flips (test picks only)."""

    label: str
    method: str | None = None
    strength: float | None = None
    split: str
    task: float | None = None  # the fine-tune's own held-out rows (task_data)
    in_domain: float | None = None
    ood: float | None = None
    known_kept: float | None = None
    lost: int = 0
    gained: int = 0
    p_value: float | None = None


class RepairSummary(Summary):
    """``repair.json``: every point on dev, and per method the dev pick on the test split."""

    region: str
    split: str
    pick_rule: str = "paper"
    tuned: dict[str, RepairPoint]  # split -> the unrepaired model
    base: dict[str, RepairPoint] | None = None  # split -> the base model (keep_task)
    points: list[RepairPoint]
    picks: list[RepairPoint]
    saved: str | None = None  # the repaired checkpoint written (``save``)


# -- the audit ------------------------------------------------------------------------------
class AuditSummary(Summary):
    """``audit.json``: what fine-tuning did to a model's knowledge (see
    :mod:`sftscope.pipeline.audit`); its blocks are the readers' of
    :mod:`sftscope.report.results`."""

    base: str
    tuned: str
    data: str
    data_dir: str
    split: str
    facts: int
    notes: list[str] = []
    probe: dict[str, Any]
    prompts: dict[str, str | None]
    transitions: dict[str, Any]
    accuracy: dict[str, dict[str, Any]]
    answers: dict[str, Any]
    kl: dict[str, Any] | None = None
    params: dict[str, Any] = {}
    # the fine-tune's knowledge_log.jsonl when ``sftscope train --watch`` made it: one row a
    # measurement of its training's watch set (step, knowledge/known_kept, ...)
    training: list[dict[str, Any]] = []
