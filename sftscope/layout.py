"""The run folder's layout (docs/architecture.md, "The run directory contract"): the one place
that knows where each stage of a run writes. The grid plans into it, the executors' jobs and
logs live in it, and the run's readers (tables, report) read from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# What a stage writes in its output folder: the contract its readers (the report, the audit,
# the restore sweep) read; the summaries' shapes are in sftscope.outputs.
SUMMARY = "summary.json"  # eval, probe: the stage's summary, written last (it marks completion)
RECORDS = "records.jsonl"  # eval: one record per item (prediction, correct, level, domain)
MASTERY = "mastery.jsonl"  # probe: one record per fact (R, level)
GENERATIONS = "generations.jsonl.gz"  # probe (sampling methods): every sample
SWEEP = "sweep.json"  # restore sweep: every restored model's scores
DIFF = "diff.json"  # diff: change per layer and module, and the concentration
CONCENTRATION = "concentration.json"  # diff: share of the change in the top k %
DIFF_TSV = "diff_summary.tsv"  # diff: one row per tensor
AUDIT = "audit.json"  # audit: the summary numbers
TRANSITIONS = "transitions.jsonl"  # audit: every fact lost or gained
REPAIR = "repair.json"  # repair: every point on dev, the picks on test
KNOWLEDGE_LOG = "knowledge_log.jsonl"  # train --watch: one row a measurement, beside the model


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- the run's own files ------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def items(self) -> Path:
        return self.root / "data" / "items.jsonl"

    @property
    def lock(self) -> Path:
        """The driver's claim: one ``sftscope run`` per folder, across hosts."""
        return self.root / ".lock"

    def job_file(self, job: str) -> Path:
        """A planned job as JSON, what a worker process (local, SLURM, Ray) is given."""
        return self.root / "jobs" / f"{_flat(job)}.json"

    @property
    def claims(self) -> Path:
        """Who runs which job now (:mod:`sftscope.pipeline.claims`)."""
        return self.root / "claims"

    def claim(self, job: str) -> Path:
        return self.claims / f"{_flat(job)}.json"

    def log(self, job: str) -> Path:
        return self.root / "logs" / f"{_flat(job)}.log"

    @property
    def slurm_logs(self) -> Path:
        return self.root / "logs" / "slurm"

    # -- stage outputs -------------------------------------------------------------------
    def probe(self, split: str) -> Path:
        return self.root / "probe" / split

    def probe_after(self, cell: str) -> Path:
        """The eval facts re-probed with a cell's tuned model (``transitions: true``)."""
        return self.root / "probe" / "after" / cell

    def subset(self, cell: str) -> Path:
        return self.root / "subsets" / f"{cell}.jsonl"

    def model(self, cell: str) -> Path:
        return self.root / "models" / cell

    def eval(self, cell: str) -> Path:
        """A cell's evaluation, or the base model's (``cell="base"``)."""
        return self.root / "eval" / cell

    def kl(self, cell: str) -> Path:
        return self.root / "kl" / f"{cell}.json"

    def params(self, cell: str, part: str | None = None) -> Path:
        """``params/<cell>/`` or one part of it: ``diff``, ``restore`` or ``blocks``."""
        folder = self.root / "params" / cell
        return folder / part if part else folder

    def names(self, kind: str) -> list[str]:
        """The cells (and ``base``) that have a folder of one kind: ``"eval"``, ``"params"``,
        ``"probe_after"`` or ``"model"``; unsorted (see ``run_results.cell_order``)."""
        parent = getattr(self, kind)("_").parent
        if not parent.is_dir():
            return []
        return [p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def report(self) -> Path:
        return self.root / "report"


def _flat(name: str) -> str:
    """A job or stage key as a file name: ``eval/base`` -> ``eval--base``."""
    return name.replace("/", "--")
