"""The experiment grid (``sftscope run``): probe -> subsets -> train -> eval (-> kl, re-probe,
diff, restore) for every cell (level x size x seed), resumable at any point.

The grid is a list of :class:`~sftscope.stages.Stage` objects whose fingerprints chain: a
changed learning rate redoes training and everything after it, and nothing else.
``manifest.json`` is a report rebuilt from the stages' markers after every stage: cells,
status, fingerprints, timings and package versions.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sftscope.config import (
    EvalConfig,
    GridConfig,
    KLConfig,
    ProbeConfig,
    RestoreConfig,
    RestoreEval,
    TrainConfig,
    dump_config,
)
from sftscope.data.dataset import load_items, resolve_dataset
from sftscope.data.schema import Domain
from sftscope.data.subsets import draw_subset, subset_name
from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from sftscope.mastery import read_levels
from sftscope.stages import (
    RunLock,
    Stage,
    fingerprint,
    model_identity,
    package_versions,
)

log = logging.getLogger(__name__)
SUBSETS_VERSION = 1  # bump when the drawing algorithm changes: subsets and all after are redone


@dataclass
class Cell:
    level: int | str
    size: int | str
    seed: int
    stages: dict[str, Stage] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return subset_name(self.level, self.size, self.seed)


class Grid:
    """The stages of one run folder, built from a ``GridConfig``; nothing runs until ``run()``."""

    def __init__(self, cfg: GridConfig):
        self.cfg = cfg
        self.root = Path(cfg.out)
        self.dataset = resolve_dataset(cfg.data, cfg.data_dir)
        in_domain = self.dataset.relation_ids(Domain.IN_DOMAIN)
        present = [r for r in in_domain if self.dataset.file(r, "train").exists()]
        self.relations = cfg.relations or present
        self.dataset.select(self.relations)  # unknown ids fail here
        ood = [r for r in self.relations if r not in in_domain]
        if ood:
            raise SftscopeError(f"config field 'relations': {ood[0]} is not an in-domain relation")
        self.train_items = load_items(
            self.dataset, ["train"], self.relations, cfg.train_limit_per_relation
        )
        self.eval_items = load_items(
            self.dataset, [cfg.eval.split], None, cfg.eval.limit_per_relation
        )
        if not self.train_items or not self.eval_items:
            raise SftscopeError(f"{self.dataset.root}: no train or {cfg.eval.split} items")
        # Serialised once: the fingerprint and the data/items.jsonl snapshot use the same rows.
        self._item_rows = [
            it.model_dump(mode="json") for it in (*self.train_items, *self.eval_items)
        ]
        self.data_fp = fingerprint(self._item_rows)
        self._train_levels: dict[str, int | None] | None = None  # read once, after the probe
        self._versions = package_versions()
        self.base_fp = fingerprint(model_identity(cfg.model))
        self.probes = {
            "train": self._probe_stage("train", self.relations, cfg.train_limit_per_relation),
            "eval": self._probe_stage(cfg.eval.split, None, cfg.eval.limit_per_relation),
        }
        self.base_eval = self._eval_stage("base", cfg.model, "fewshot", self.base_fp)
        self.cells = [
            self._cell(level, size, seed)
            for level in cfg.levels
            for size in cfg.sizes
            for seed in cfg.seeds
        ]
        names = {c.name for c in self.cells} | {"all"}
        unknown = [c for c in cfg.params.cells if c not in names]
        if unknown:
            raise SftscopeError(f"config field 'params.cells': {unknown[0]} is not a cell of this "
                                f"grid ({', '.join(sorted(names - {'all'}))})")  # fmt: skip

    # -- stage construction -------------------------------------------------------------
    def _probe_stage(
        self,
        split: str,
        relations,
        limit,
        model: str | None = None,
        upstream: str | None = None,
        key: str | None = None,
    ) -> Stage:
        """The base model's probe of one split, or (``model``) the same probe of a tuned one."""
        from sftscope.probe import load_thresholds, run_probe

        cfg = self.cfg
        key = key or f"probe/{split}"
        pcfg = ProbeConfig(
            **cfg.probe.model_dump(), model=model or cfg.model, data=cfg.data,
            data_dir=cfg.data_dir, split=split, relations=relations, limit_per_relation=limit,
            device=cfg.device, trust_remote_code=cfg.trust_remote_code, out=self.root / key,
        )  # fmt: skip
        settings = pcfg.model_dump(mode="json", exclude={"out", "model"} if model else {"out"})
        if pcfg.calibration is not None:  # the thresholds in the file, not just its path
            settings["calibrated_thresholds"] = list(load_thresholds(pcfg))
        fp = fingerprint("probe", settings, upstream or self.base_fp)
        return Stage(key, Path(pcfg.out), fp, lambda: _brief(run_probe(pcfg)), True)

    def _eval_stage(self, name: str, model: str, prompt: str, upstream: str) -> Stage:
        from sftscope.evaluate import run_eval

        cfg, ev = self.cfg, self.cfg.eval
        ecfg = EvalConfig(
            **ev.model_dump(exclude={"base"}), model=model, data=cfg.data, data_dir=cfg.data_dir,
            prompt=prompt, mastery=self.probes["eval"].output, device=cfg.device,
            trust_remote_code=cfg.trust_remote_code, out=self.root / "eval" / name,
        )  # fmt: skip
        if prompt == "sft":
            ecfg = ecfg.model_copy(update={"n_shots": 0})
        fp = fingerprint("eval", ecfg.model_dump(mode="json", exclude={"out", "model", "mastery"}),
                         upstream, self.probes["eval"].fingerprint)  # fmt: skip
        return Stage(f"eval/{name}", Path(ecfg.out), fp, lambda: _eval_brief(run_eval(ecfg)))

    def _cell(self, level, size, seed) -> Cell:
        cell = Cell(level, size, seed)
        name = cell.name
        sub_fp = fingerprint("subset", SUBSETS_VERSION, level, size, seed, self.relations,
                             self.data_fp, self.probes["train"].fingerprint)  # fmt: skip
        sub_file = self.root / "subsets" / f"{name}.jsonl"
        cell.stages["subset"] = Stage(
            f"subsets/{name}", sub_file, sub_fp, lambda: self._draw(level, size, seed, sub_file),
            marker_file=sub_file.with_suffix(".json"),
        )  # fmt: skip
        model_dir = self.root / "models" / name
        recipe = self.cfg.train
        if recipe.device == "auto":  # the grid's device, unless the recipe names one
            recipe = recipe.model_copy(update={"device": self.cfg.device})
        tcfg = TrainConfig(
            **recipe.model_dump(), model=self.cfg.model,
            train_file=sub_file, trust_remote_code=self.cfg.trust_remote_code,
            out=model_dir,
        )  # fmt: skip
        train_fp = fingerprint("train", self.cfg.train.model_dump(mode="json"), self.base_fp,
                               sub_fp)  # fmt: skip
        cell.stages["train"] = Stage(f"models/{name}", model_dir, train_fp,
                                     lambda: _train_brief(tcfg))  # fmt: skip
        cell.stages["eval"] = self._eval_stage(name, str(model_dir), "sft", train_fp)
        if self.cfg.transitions:  # the eval facts re-probed with the tuned model
            ev = self.cfg.eval
            cell.stages["reprobe"] = self._probe_stage(
                ev.split, None, ev.limit_per_relation, str(model_dir), train_fp,
                f"probe/after/{name}",
            )  # fmt: skip
        if self.cfg.kl.enabled:
            cell.stages["kl"] = self._kl_stage(name, model_dir, train_fp)
        params = self.cfg.params
        if name in params.cells or "all" in params.cells:
            if params.diff:
                cell.stages["diff"] = self._diff_stage(name, model_dir, train_fp)
            if params.restore:
                cell.stages["restore"] = self._restore_stage(name, model_dir, train_fp)
            if params.layers:
                cell.stages["blocks"] = self._restore_stage(name, model_dir, train_fp, True)
        return cell

    def _diff_stage(self, name: str, model_dir: Path, upstream: str) -> Stage:
        from sftscope.models.loading import resolve_model
        from sftscope.params.diff import run_diff

        region, out = self.cfg.params.region, self.root / "params" / name / "diff"

        def run() -> dict[str, Any]:
            s = run_diff(Path(resolve_model(self.cfg.model)), model_dir, out, region,
                         compute_device=self.cfg.params.compute_device)  # fmt: skip
            return {"concentration": {f"{r['k']:g}": r["share"] for r in s["concentration"]}}

        fp = fingerprint("diff", region, upstream, self.base_fp)
        return Stage(f"params/{name}/diff", out, fp, run)

    def _restore_stage(self, name: str, model_dir: Path, upstream: str, blocks: bool = False
                       ) -> Stage:  # fmt: skip
        """The k sweep (``params/<cell>/restore``) or, with ``blocks``, the layer blocks of
        ``params.layers`` restored entirely (``params/<cell>/blocks``, PAPER.md Table 11); the
        unrestored model's score is the cell's own evaluation."""
        from sftscope.params.sweep import run_sweep

        cfg, params, probe = self.cfg, self.cfg.params, self.probes["eval"]
        settings = params.model_dump(exclude={"cells", "diff", "restore", "pick_on", "layers"})
        folder = self.root / "params" / name / ("blocks" if blocks else "restore")
        rcfg = RestoreConfig(
            **settings, layers=params.layers if blocks else None, base=cfg.model, tuned=model_dir,
            compute_device=params.compute_device,
            device=cfg.device, trust_remote_code=cfg.trust_remote_code, out=folder,
            eval=RestoreEval(**cfg.eval.model_dump(exclude={"base"}), data=cfg.data,
                             data_dir=cfg.data_dir, mastery=probe.output, pick_on=params.pick_on,
                             keep_models=cfg.keep_models),
        )  # fmt: skip
        fp = fingerprint("restore", rcfg.model_dump(mode="json", exclude={"out", "tuned", "eval"}),
                         rcfg.eval.model_dump(mode="json", exclude={"mastery"}), upstream,
                         probe.fingerprint)  # fmt: skip
        cell_eval = self.root / "eval" / name
        return Stage(f"params/{name}/{folder.name}", folder, fp,
                     lambda: run_sweep(rcfg, cell_eval))  # fmt: skip

    def _kl_stage(self, name: str, model_dir: Path, upstream: str) -> Stage:
        from sftscope.token_kl import run_kl

        cfg, probe = self.cfg, self.probes["eval"]
        kcfg = KLConfig(
            **cfg.kl.model_dump(exclude={"enabled"}), base=cfg.model, tuned=str(model_dir),
            data=cfg.data, data_dir=cfg.data_dir, split=cfg.eval.split,
            limit_per_relation=cfg.eval.limit_per_relation, probe=probe.output,
            templates_file=cfg.probe.templates_file, device=cfg.device,
            trust_remote_code=cfg.trust_remote_code, out=self.root / "kl" / f"{name}.json",
        )  # fmt: skip
        fp = fingerprint("kl", cfg.kl.model_dump(mode="json"), upstream, probe.fingerprint,
                         self.base_fp)  # fmt: skip
        out = Path(kcfg.out)
        return Stage(f"kl/{name}", out, fp, lambda: _kl_brief(run_kl(kcfg)),
                     marker_file=out.with_suffix(".stage.json"))  # fmt: skip

    def _draw(self, level, size, seed, out: Path) -> dict[str, Any]:
        if self._train_levels is None:
            self._train_levels = read_levels(self.probes["train"].output)
        sub = draw_subset(self.train_items, self._train_levels, level, size, seed, self.eval_items,
                          self.relations)  # fmt: skip
        atomic_write_jsonl(out, sub.rows())
        return sub.summary()  # kept in the marker subsets/<cell>.json

    # -- running --------------------------------------------------------------------------
    def plan(self) -> list[tuple[str, str]]:
        """(stage, status) for every stage, in run order; reads markers only."""
        rows = [(s.key, s.status()) for s in self.probes.values()]
        if self.cfg.eval.base:
            rows.append((self.base_eval.key, self.base_eval.status()))
        for cell in self.cells:
            rows += [(s.key, s.status()) for s in cell.stages.values()]
        return rows

    def run(self) -> dict[str, Any]:
        with RunLock(self.root):
            atomic_write_text(self.root / "config.yaml", dump_config(self.cfg))
            self._snapshot()
            for stage in self.probes.values():
                self._execute(stage)
            for cell in self.cells:  # all sets first: a level too small fails before training
                self._execute(cell.stages["subset"])
            if self.cfg.eval.base:
                self._execute(self.base_eval)
            bar = tqdm(self.cells, desc="grid", unit="cell")
            for cell in bar:
                bar.set_postfix_str(cell.name)
                self._run_cell(cell)
            bar.close()
            return self.write_manifest()

    def _run_cell(self, cell: Cell) -> None:
        sub, train = cell.stages["subset"], cell.stages["train"]
        analyses = [s for k, s in cell.stages.items() if k not in ("subset", "train")]
        if sub.done() and train.done() and all(s.done() for s in analyses):
            return
        self._execute(sub)
        weights = (train.output / "model.safetensors").exists() or any(
            train.output.glob("model-*.safetensors")
        )
        if not train.done() or (not all(s.done() for s in analyses) and not weights):
            if train.output.exists():
                shutil.rmtree(train.output)  # also: weights deleted but needed again
            self._execute(train)
        for stage in analyses:
            self._execute(stage)
        if not self.cfg.keep_models:
            for f in train.output.glob("*.safetensors"):
                f.unlink()
            shutil.rmtree(train.output / "adapter", ignore_errors=True)

    def _execute(self, stage: Stage) -> None:
        if not stage.done():
            log.info("running %s", stage.key)
            stage.execute()
            self.write_manifest()

    def _snapshot(self) -> None:
        atomic_write_jsonl(self.root / "data" / "items.jsonl", self._item_rows)

    def write_manifest(self) -> dict[str, Any]:
        stages = [*self.probes.values()] + ([self.base_eval] if self.cfg.eval.base else [])
        manifest = {
            "name": self.root.name,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": self._versions,
            "data_fingerprint": self.data_fp,
            "stages": {s.key: _stage_entry(s) for s in stages},
            "cells": {
                c.name: {
                    "level": c.level,
                    "size": c.size,
                    "seed": c.seed,
                    "status": "done" if all(s.done() for s in c.stages.values()) else "pending",
                    "stages": {k: _stage_entry(s) for k, s in c.stages.items()},
                }
                for c in self.cells
            },
        }
        atomic_write_json(self.root / "manifest.json", manifest)
        return manifest


def _stage_entry(stage: Stage) -> dict[str, Any]:
    m = stage.marker() or {}
    done = m.get("fingerprint") == stage.fingerprint
    return {
        "status": "done" if done else "pending",
        "fingerprint": stage.fingerprint,
        "seconds": m.get("seconds") if done else None,
        "result": m.get("result") if done else None,
    }


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("n_probed", "histogram", "facts_per_second", "thresholds")
    return {k: summary[k] for k in keep if k in summary}


def _eval_brief(summary: dict[str, Any]) -> dict[str, Any]:
    out = {k: summary[k]["containment"] for k in ("in_domain", "ood", "overall")}
    for key, block in summary.get("by_level", {}).items():
        out[f"{key}_per_level"] = [v["containment"] for v in block["per_level"]]
        out[f"{key}_mean_of_levels"] = block["mean_of_levels"]["containment"]
    return out


def _kl_brief(summary: dict[str, Any]) -> dict[str, Any]:
    p = summary["paper"]
    out = {"paper_mean": p["mean"], "paper_std": p["std"], "paper_n": p["n"]}
    if "full" in summary:
        out["full_per_level"] = [b["kl_mean"] for b in summary["full"]["per_level"]]
        out["dlogp_per_level"] = [b["dlogp_mean"] for b in summary["full"]["per_level"]]
    return out


def _train_brief(cfg: TrainConfig) -> dict[str, Any]:
    from sftscope.train import run_train

    return run_train(cfg)
