"""``sftscope repair``: the ways to move a fine-tune back toward its base, compared on the same
facts (the repair methods of :data:`sftscope.registry.REPAIR_METHODS`, :mod:`sftscope.params.
repair`).

The fine-tuned model is loaded once on the HF engine. Every method at every strength of its
grid is applied in place, evaluated on dev, and undone exactly; per method the point with the
best dev score (the paper's rule: the in-domain mean of mastery levels, or plain in-domain
accuracy without a probe; ties: the first in the grid) is applied again and evaluated on the
test split, beside the unrepaired model, with an exact McNemar test of the facts that flipped.
Evaluations are the usual folders (``OUT/eval/<label>/<split>/``), so a rerun resumes: a point
whose evaluation exists is neither applied nor evaluated again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sftscope.config import EvalConfig, RepairConfig, dump_config
from sftscope.data.dataset import load_items
from sftscope.data.readers import resolve_dataset
from sftscope.errors import SftscopeError
from sftscope.evaluate import run_eval
from sftscope.io import atomic_write_text, read_json
from sftscope.layout import REPAIR, SUMMARY
from sftscope.outputs import EvalSummary, RepairPoint, RepairSummary
from sftscope.registry import REPAIR_METHODS
from sftscope.stats import mcnemar
from sftscope.transitions import KNOWN, read_answers

if TYPE_CHECKING:
    from sftscope.models.engines import Engine
    from sftscope.params.repair.base import RepairContext, Repairer

log = logging.getLogger(__name__)
TUNED = "tuned"  # the unrepaired fine-tune's label
BASE = "base"  # the base model's (keep_task: the task gain is measured from it)
DEV = "dev"


class Sweep:
    """The state of one repair run: the checkpoints, and the model once an evaluation is due."""

    def __init__(self, cfg: RepairConfig) -> None:
        from sftscope.models.loading import resolve_device, resolve_model
        from sftscope.params.lora import open_weights
        from sftscope.params.repair.base import RepairContext

        if cfg.engine != "hf":
            raise SftscopeError(
                f"--engine {cfg.engine}: repair applies every point in place to the loaded "
                "model, which only the hf engine allows"
            )
        self.cfg, self.out = cfg, Path(cfg.out)
        if cfg.eval.split == DEV:
            raise SftscopeError("eval.split dev: dev is where points are picked; report on test")
        self.mastery = {s: self._mastery(s) for s in (DEV, cfg.eval.split)}
        dataset = resolve_dataset(cfg.data, cfg.data_dir, cfg.columns)
        if not load_items(dataset, [DEV], cfg.relations):
            raise SftscopeError(f"{dataset.root}: no dev items to pick the repair on")
        device = resolve_device(cfg.compute_device, "--compute-device")
        base = open_weights(resolve_model(cfg.base))
        tuned = open_weights(cfg.tuned, base=cfg.base)
        self.ctx: RepairContext = RepairContext(base, tuned, cfg.region, cfg.seed, device)
        self.engine: Engine | None = None
        self._base: Engine | None = None
        self.repairer: Repairer | None = None
        self.task: list[dict[str, str]] | None = None
        if cfg.task_data is not None:  # read (and checked) before anything is written
            from sftscope.models.loading import load_tokenizer
            from sftscope.task_eval import task_examples

            tokenizer = load_tokenizer(str(cfg.tuned), cfg.trust_remote_code, cfg.base)
            self.task = task_examples(cfg.task_data, tokenizer)

    def _mastery(self, split: str) -> Path | None:
        """The base's probe of ``split`` under ``eval.mastery`` (a grid's ``probe/`` folder
        has the evaluation split's; dev may be missing: its points are then scored without
        levels)."""
        root = self.cfg.eval.mastery
        if root is None:
            return None
        if (Path(root) / "mastery.jsonl").exists():  # one probe: the reported split's
            return Path(root) if split == self.cfg.eval.split else None
        folder = Path(root) / split
        if (folder / "mastery.jsonl").exists():
            return folder
        if split == DEV:
            return None
        raise SftscopeError(f"eval.mastery: {folder}/mastery.jsonl not found (probe {split})")

    def folder(self, label: str, split: str) -> Path:
        return self.out / "eval" / label / split

    def task_folder(self, label: str) -> Path:
        return self.out / "eval" / label / "task"

    def done(self, label: str, split: str) -> bool:
        from sftscope.task_eval import TASK_SUMMARY

        task = self.task is None or (self.task_folder(label) / TASK_SUMMARY).exists()
        return task and (self.folder(label, split) / SUMMARY).exists()

    def model(self) -> Repairer:
        """The fine-tuned model, loaded on first use, and its repairer."""
        if self.repairer is None:
            from sftscope.models.factory import in_place_engine
            from sftscope.params.repair.base import Repairer

            self._base = None  # one model in memory at a time
            self.engine = in_place_engine(self.cfg)
            self.repairer = Repairer(self.ctx, self.engine.model)
        return self.repairer

    def evaluate(self, label: str, split: str) -> EvalSummary:
        """The evaluation of the model as it is now (``label`` BASE: the base model, loaded
        for it alone), resumed from its folder."""
        out = self.folder(label, split)
        if self.done(label, split):  # resumed: no model is loaded for it
            return EvalSummary.read(out / SUMMARY)
        ev, cfg = self.cfg.eval, self.cfg
        base = label == BASE
        if base:
            engine = self._base_engine()
        else:
            self.model()
            engine = self.engine
        if self.task is not None:
            from sftscope.task_eval import evaluate_task

            max_tokens = max(ev.max_new_tokens, 32)
            evaluate_task(engine, self.task, self.task_folder(label), max_tokens)
        if (out / SUMMARY).exists():
            return EvalSummary.read(out / SUMMARY)
        ecfg = EvalConfig(
            **ev.model_dump(exclude={"mastery", "split"}),
            model=cfg.base if base else str(cfg.tuned),
            base=None if base else cfg.base,
            split=split,
            mastery=self.mastery[split],
            relations=cfg.relations,
            out=out,
            **cfg.context(),
        )
        return run_eval(ecfg, engine)

    def _base_engine(self) -> Engine:
        """The base model (keep_task), loaded once and kept only until the fine-tune loads."""
        from sftscope.models.factory import EngineRequest, make_engine

        if self._base is None:
            cfg = self.cfg
            request = EngineRequest(
                cfg.base, cfg.device, cfg.eval.batch_size, cfg.trust_remote_code, settings=cfg.hf
            )
            self._base = make_engine("hf", request)
        return self._base

    def point(self, label: str, split: str, method: str | None, strength: float | None):
        """The scores of an evaluated point, its flips against the unrepaired model."""
        s = EvalSummary.read(self.folder(label, split) / SUMMARY)
        now = read_answers(self.folder(label, split))
        before = read_answers(self.folder(TUNED, split))
        known = [ok for ok, level in now.values() if level is not None and level >= KNOWN]
        lost = sum(before[i][0] and not now[i][0] for i in now if i in before)
        gained = sum(now[i][0] and not before[i][0] for i in now if i in before)
        task = None
        if self.task is not None:
            from sftscope.task_eval import TASK_SUMMARY

            task = read_json(self.task_folder(label) / TASK_SUMMARY)["task"]
        return RepairPoint(
            label=label,
            method=method,
            strength=strength,
            split=split,
            task=task,
            in_domain=s.headline("in_domain"),
            ood=s.headline("ood"),
            known_kept=sum(known) / len(known) if known else None,
            lost=lost,
            gained=gained,
        )

    def at(self, method: Method, strength: float, label: str, split: str) -> None:
        """Evaluate ``method`` at ``strength`` on ``split`` unless done: apply, eval, undo."""
        if self.done(label, split):
            return
        repairer = self.model()
        repairer.apply(method.ready(self.ctx), strength, label)
        try:
            self.evaluate(label, split)
        finally:
            repairer.undo()


class Method:
    """One method of the run and its grid; prepared (e.g. its SVDs) on first use only, so a
    resumed run that has every evaluation does no work."""

    def __init__(self, name: str, strengths: list[float] | None, ctx: RepairContext) -> None:
        self.impl = REPAIR_METHODS.load(name)()
        self.name, self.strengths = name, strengths or self.impl.default_grid(ctx)
        self.impl.check(ctx, self.strengths)
        self.prepared = False
        self.labels = [f"{name}-{x:g}" for x in self.strengths]

    def ready(self, ctx: RepairContext):
        if not self.prepared:
            self.impl.prepare(ctx, self.strengths)
            self.prepared = True
        return self.impl


def task_of(point: RepairPoint) -> float | None:
    """A point's task score: its own held-out SFT rows (``task_data``), else in-domain CBQA."""
    return point.task if point.task is not None else point.in_domain


def _best(points: list[RepairPoint]) -> RepairPoint:
    """The paper's pick: the best dev task score (in-domain: the mean of levels when known)."""
    scored = [p for p in points if task_of(p) is not None]
    if not scored:
        raise SftscopeError("repair: no in-domain dev items to pick on")
    return max(scored, key=task_of)  # max keeps the first of equals


def knowledge(point: RepairPoint) -> float | None:
    """A point's knowledge score: the base-known facts kept when the split was probed, else
    out-of-domain accuracy (relations the fine-tune never saw)."""
    return point.known_kept if point.known_kept is not None else point.ood


def _keeping(
    points: list[RepairPoint], share: float, base: RepairPoint, tuned: RepairPoint
) -> RepairPoint:
    """``keep_task``: of the points that keep ``share`` of the fine-tune's task gain over the
    base, the one with the most knowledge; when none does, the paper's pick."""
    b, t = task_of(base), task_of(tuned)
    if b is None or t is None:
        return _best(points)
    floor = b + share * (t - b)
    kept = [p for p in points if (x := task_of(p)) is not None and x >= floor]
    scored = [p for p in kept if knowledge(p) is not None]
    if not scored:
        return _best(points)
    return max(scored, key=lambda p: knowledge(p))


def _save(sweep: Sweep, choice: str, summary: RepairSummary) -> Path:
    """``save``: the chosen point as a checkpoint (``OUT/models/<label>``), unless written."""
    from sftscope.params.repair.base import save_repaired

    if choice == "best":
        dev = {p.label: p for p in summary.points}
        pick = max(summary.picks, key=lambda p: dev[p.label].in_domain or 0.0)
        name, strength = pick.method, pick.strength
    else:
        name, _, value = choice.partition(":")
        strength = float(value)
    assert name is not None and strength is not None
    out = sweep.out / "models" / f"{name}-{strength:g}"
    if not (out / "config.json").exists():
        method = Method(name, [strength], sweep.ctx)
        save_repaired(sweep.ctx, method.ready(sweep.ctx), strength, out)
    return out


def run_repair(cfg: RepairConfig) -> RepairSummary:
    """Every method's sweep on dev, each method's pick on test; writes ``OUT/repair.json``."""
    sweep = Sweep(cfg)
    methods = [Method(name, cfg.grid(name), sweep.ctx) for name in cfg.methods]  # (checked)
    split = cfg.eval.split
    labels = [BASE, TUNED] if cfg.keep_task is not None else [TUNED]
    for label in labels:  # the base first: one model in memory at a time
        for s in (DEV, split):
            sweep.evaluate(label, s)
    tuned_dev = sweep.point(TUNED, DEV, None, None)
    points: list[RepairPoint] = []
    picks: list[RepairPoint] = []
    for method in methods:
        grid = list(zip(method.strengths, method.labels, strict=True))
        for x, label in grid:
            sweep.at(method, x, label, DEV)
        mine = [sweep.point(label, DEV, method.name, x) for x, label in grid]
        points += mine
        if cfg.keep_task is None:
            best = _best(mine)
        else:
            best = _keeping(mine, cfg.keep_task, sweep.point(BASE, DEV, None, None), tuned_dev)
        assert best.strength is not None
        sweep.at(method, best.strength, best.label, split)
        pick = sweep.point(best.label, split, method.name, best.strength)
        pick.p_value = mcnemar(pick.gained, pick.lost)
        picks.append(pick)
    summary = RepairSummary(
        region=cfg.region,
        split=split,
        pick_rule="paper" if cfg.keep_task is None else f"keep-task {cfg.keep_task:g}",
        base={s: sweep.point(BASE, s, None, None) for s in (DEV, split)}
        if cfg.keep_task is not None
        else None,
        tuned={s: sweep.point(TUNED, s, None, None) for s in (DEV, split)},
        points=points,
        picks=picks,
    )
    if cfg.save is not None:
        summary.saved = str(_save(sweep, cfg.save, summary))
    atomic_write_text(Path(cfg.out) / "config.yaml", dump_config(cfg))
    summary.write(Path(cfg.out) / REPAIR)
    return summary
