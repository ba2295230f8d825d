"""The experiment grid (``sftscope run``): probe -> subsets -> train -> eval (-> kl, re-probe,
diff, restore) for every cell (level x size x seed), resumable at any point.

The grid *plans*: it turns a ``GridConfig`` into :class:`~.stage.Stage` specs (plain
data) whose fingerprints chain, so a changed learning rate redoes training and everything after
it, and nothing else, while a changed device or batch size redoes nothing. It groups them into
:class:`~.stage.Job` s run in three waves by an executor (:mod:`.executors`):

1. the probes of the train and evaluation splits, each split into shards of chunks;
2. (in the driver: cheap) the probes' merge and every cell's subset, so a level too small for a
   size fails before anything trains;
3. the base model's evaluation and one job per cell (train, eval, kl, re-probe, diff, restore).

The stage builders and the waves are :mod:`.plan`'s, shared with ``sftscope audit``.
``manifest.json`` is a report rebuilt from the stages' markers after every job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftscope.config import GridConfig, TrainConfig, dump_config, result_fields
from sftscope.data.dataset import load_items
from sftscope.data.readers import resolve_dataset
from sftscope.data.schema import Domain
from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from sftscope.layout import RunLayout
from sftscope.pipeline.plan import (
    Plan,
    diff_stage,
    eval_stage,
    kl_stage,
    probe_chunks,
    probe_stage,
    restore_stage,
    spec,
    stage_entry,
)
from sftscope.pipeline.stage import Job, Stage, fingerprint, model_identity, package_versions
from sftscope.subsets import SubsetConfig, subset_name

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


class Grid(Plan):
    """The stages of one run folder, built from a ``GridConfig``; nothing runs until ``run()``."""

    def __init__(self, cfg: GridConfig):
        self.cfg = cfg
        self.layout = RunLayout(Path(cfg.out).resolve())  # workers may start elsewhere
        self.dataset = resolve_dataset(cfg.data, cfg.data_dir, cfg.columns)
        in_domain = self.dataset.relation_ids(Domain.IN_DOMAIN)
        present = [r for r in in_domain if self.dataset.has(r, "train")]
        self.relations = cfg.relations or present
        self.dataset.select(self.relations)  # unknown ids fail here
        ood = [r for r in self.relations if r not in in_domain]
        if ood:
            raise SftscopeError(f"config field 'relations': {ood[0]} is not an in-domain relation")
        train_items = load_items(
            self.dataset, ["train"], self.relations, cfg.train_limit_per_relation
        )
        eval_items = load_items(self.dataset, [cfg.eval.split], None, cfg.eval.limit_per_relation)
        if not train_items or not eval_items:
            raise SftscopeError(f"{self.dataset.root}: no train or {cfg.eval.split} items")
        # Serialised once: the fingerprint and the data/items.jsonl snapshot use the same rows.
        self._item_rows = [it.model_dump(mode="json") for it in (*train_items, *eval_items)]
        chunks = {
            "train": probe_chunks(train_items, cfg.probe),
            "eval": probe_chunks(eval_items, cfg.probe),
        }
        self.data_fp = fingerprint(self._item_rows)
        self._versions = package_versions()
        self.base_fp = fingerprint(model_identity(cfg.model))
        self.probes = {
            "train": self._probe_stage("train", self.relations, cfg.train_limit_per_relation),
            "eval": self._probe_stage(cfg.eval.split, None, cfg.eval.limit_per_relation),
        }
        self.probe_chunks = {self.probes[k].key: n for k, n in chunks.items()}
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
            raise SftscopeError(
                f"config field 'params.cells': {unknown[0]} is not a cell of this "
                f"grid ({', '.join(sorted(names - {'all'}))})"
            )

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
        cfg = self.cfg
        key = key or f"probe/{split}"
        out = self.layout.probe_after(key.rsplit("/", 1)[1]) if model else self.layout.probe(split)
        return probe_stage(
            cfg,
            key,
            settings=cfg.probe,
            model=model or cfg.model,
            split=split,
            relations=relations,
            limit=limit,
            out=out,
            upstream=upstream or self.base_fp,
        )

    def _eval_stage(self, name: str, model: str, prompt: str, upstream: str) -> Stage:
        return eval_stage(
            self.cfg,
            f"eval/{name}",
            settings=self.cfg.eval,
            model=model,
            prompt=prompt,
            probe=self.probes["eval"],
            out=self.layout.eval(name),
            upstream=upstream,
        )

    def _cell(self, level, size, seed) -> Cell:
        cfg, cell = self.cfg, Cell(level, size, seed)
        name = cell.name
        sub_fp = fingerprint(
            "subset",
            SUBSETS_VERSION,
            level,
            size,
            seed,
            self.relations,
            self.data_fp,
            self.probes["train"].fingerprint,
        )
        scfg = SubsetConfig(
            items=self.layout.items,
            mastery=self.probes["train"].output,
            relations=self.relations,
            eval_split=cfg.eval.split,
            level=level,
            size=size,
            seed=seed,
            out=self.layout.subset(name),
        )
        cell.stages["subset"] = spec(
            f"subsets/{name}", "subset", scfg, sub_fp, marker_file=scfg.out.with_suffix(".json")
        )
        model_dir = self.layout.model(name)
        recipe = cfg.train
        if recipe.device == "auto":  # the grid's device, unless the recipe names one
            recipe = recipe.model_copy(update={"device": cfg.device})
        tcfg = TrainConfig(
            **recipe.model_dump(),
            model=cfg.model,
            train_file=scfg.out,
            trust_remote_code=cfg.trust_remote_code,
            watch=self.probes["eval"].output if cfg.watch else None,
            out=model_dir,
        )
        train_fp = fingerprint("train", result_fields(cfg.train), self.base_fp, sub_fp)
        cell.stages["train"] = spec(f"models/{name}", "train", tcfg, train_fp)
        cell.stages["eval"] = self._eval_stage(name, str(model_dir), "sft", train_fp)
        ev, probe = cfg.eval, self.probes["eval"]
        if cfg.transitions:  # the eval facts re-probed with the tuned model
            cell.stages["reprobe"] = self._probe_stage(
                ev.split,
                None,
                ev.limit_per_relation,
                str(model_dir),
                train_fp,
                f"probe/after/{name}",
            )
        if cfg.kl.enabled:
            cell.stages["kl"] = kl_stage(
                cfg,
                f"kl/{name}",
                settings=cfg.kl,
                base=cfg.model,
                tuned=str(model_dir),
                split=ev.split,
                limit=ev.limit_per_relation,
                probe=probe,
                templates_file=cfg.probe.templates_file,
                out=self.layout.kl(name),
                upstream=train_fp,
                base_fp=self.base_fp,
            )
        params = cfg.params
        if name in params.cells or "all" in params.cells:
            if params.diff:
                cell.stages["diff"] = diff_stage(
                    f"params/{name}/diff",
                    base=cfg.model,
                    tuned=model_dir,
                    region=params.region,
                    compute_device=params.compute_device,
                    out=self.layout.params(name, "diff"),
                    upstream=train_fp,
                    base_fp=self.base_fp,
                )
            wanted = {"restore": params.restore, "blocks": bool(params.layers)}
            for part in (p for p, on in wanted.items() if on):  # the k sweep, the layer blocks
                cell.stages[part] = restore_stage(
                    cfg,
                    f"params/{name}/{part}",
                    params=params,
                    base=cfg.model,
                    tuned=model_dir,
                    ev=ev,
                    probe=probe,
                    out=self.layout.params(name, part),
                    upstream=train_fp,
                    keep_models=cfg.keep_models,
                    blocks=part == "blocks",
                    inputs={"tuned_eval": self.layout.eval(name)},
                )
        return cell

    # -- the plan -------------------------------------------------------------------------
    def stage_jobs(self) -> list[Job]:
        """After the probes and subsets: the base evaluation, then one job per cell."""
        jobs = []
        if self.cfg.eval.base:
            jobs.append(Job(name=self.base_eval.key, stages=[self.base_eval]))
        for cell in self.cells:
            stages = [s for k, s in cell.stages.items() if k != "subset"]
            jobs.append(
                Job(
                    name=f"cell/{cell.name}",
                    stages=stages,
                    cell=True,
                    keep_models=self.cfg.keep_models,
                )
            )
        return jobs

    def driver_stages(self) -> list[Stage]:
        """Every cell's subset: all sets are drawn first, so a level too small for a size
        fails before anything trains."""
        return [cell.stages["subset"] for cell in self.cells]

    def plan(self) -> list[tuple[str, str]]:
        """(stage, status) for every stage, in run order; reads markers only."""
        rows = [(s.key, s.status()) for s in self.probes.values()]
        if self.cfg.eval.base:
            rows.append((self.base_eval.key, self.base_eval.status()))
        for cell in self.cells:
            rows += [(s.key, s.status()) for s in cell.stages.values()]
        return rows

    # -- running --------------------------------------------------------------------------
    def write_inputs(self) -> None:
        atomic_write_text(self.layout.config, dump_config(self.cfg))
        atomic_write_jsonl(self.layout.items, self._item_rows)

    def write_manifest(self) -> dict[str, Any]:
        stages = [*self.probes.values()] + ([self.base_eval] if self.cfg.eval.base else [])
        manifest = {
            "name": self.root.name,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": self._versions,
            "executor": self.cfg.executor.kind,
            "data_fingerprint": self.data_fp,
            "stages": {s.key: stage_entry(s) for s in stages},
            "cells": {
                c.name: {
                    "level": c.level,
                    "size": c.size,
                    "seed": c.seed,
                    "status": "done" if all(s.done() for s in c.stages.values()) else "pending",
                    "stages": {k: stage_entry(s) for k, s in c.stages.items()},
                }
                for c in self.cells
            },
        }
        atomic_write_json(self.layout.manifest, manifest)
        return manifest
