"""The experiment grid (``sftscope run``): probe -> subsets -> train -> eval (-> kl, re-probe,
diff, restore) for every cell (level x size x seed), resumable at any point.

The grid *plans*: it turns a ``GridConfig`` into :class:`~sftscope.stages.Stage` specs (plain
data) whose fingerprints chain, so a changed learning rate redoes training and everything after
it, and nothing else, while a changed device or batch size redoes nothing. It groups them into
:class:`~sftscope.stages.Job` s run in three waves by an executor (:mod:`sftscope.executors`):

1. the probes of the train and evaluation splits, each split into shards of chunks;
2. (in the driver: cheap) the probes' merge and every cell's subset, so a level too small for a
   size fails before anything trains;
3. the base model's evaluation and one job per cell (train, eval, kl, re-probe, diff, restore).

``manifest.json`` is a report rebuilt from the stages' markers after every job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sftscope.claims import Claim
from sftscope.config import (
    DiffConfig,
    EvalConfig,
    GridConfig,
    KLConfig,
    ProbeConfig,
    RestoreConfig,
    RestoreEval,
    TrainConfig,
    dump_config,
    result_fields,
)
from sftscope.data.dataset import load_items, resolve_dataset
from sftscope.data.schema import Domain
from sftscope.data.subsets import SubsetConfig, subset_name
from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from sftscope.layout import RunLayout
from sftscope.models.factory import check_engine
from sftscope.stages import Job, Stage, fingerprint, model_identity, package_versions

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


def _spec(key: str, kind: str, cfg, fp: str, **kw) -> Stage:
    return Stage(key=key, kind=kind, config=cfg.model_dump(mode="json"), output=cfg.out,
                 fingerprint=fp, **kw)  # fmt: skip


class Grid:
    """The stages of one run folder, built from a ``GridConfig``; nothing runs until ``run()``."""

    def __init__(self, cfg: GridConfig):
        self.cfg = cfg
        self.layout = RunLayout(Path(cfg.out).resolve())  # workers may start elsewhere
        self.root = self.layout.root
        self.dataset = resolve_dataset(cfg.data, cfg.data_dir)
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
        chunks = {split: -(-sum(it.subject is not None or cfg.probe.method == "slick"
                                for it in items) // cfg.probe.chunk_size)
                  for split, items in (("train", train_items), ("eval", eval_items))}  # fmt: skip
        self.data_fp = fingerprint(self._item_rows)
        self._versions = package_versions()
        self.base_fp = fingerprint(model_identity(cfg.model))
        self.probes = {
            "train": self._probe_stage("train", self.relations, cfg.train_limit_per_relation),
            "eval": self._probe_stage(cfg.eval.split, None, cfg.eval.limit_per_relation),
        }
        self._probe_chunks = {self.probes[k].key: n for k, n in chunks.items()}
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
        from sftscope.probe import load_thresholds

        cfg = self.cfg
        key = key or f"probe/{split}"
        out = self.layout.probe_after(key.rsplit("/", 1)[1]) if model else self.layout.probe(split)
        pcfg = ProbeConfig(
            **cfg.probe.model_dump(), model=model or cfg.model, data=cfg.data,
            data_dir=cfg.data_dir, split=split, relations=relations, limit_per_relation=limit,
            device=cfg.device, engine=cfg.engine, vllm=cfg.vllm,
            trust_remote_code=cfg.trust_remote_code, out=out,
        )  # fmt: skip
        settings = result_fields(pcfg, exclude={"model"})
        if pcfg.calibration is not None:  # the thresholds in the file, not just its path
            settings["calibrated_thresholds"] = list(load_thresholds(pcfg))
        fp = fingerprint("probe", settings, upstream or self.base_fp)
        return _spec(key, "probe", pcfg, fp, keep_partial=True)

    def _eval_stage(self, name: str, model: str, prompt: str, upstream: str) -> Stage:
        cfg, ev = self.cfg, self.cfg.eval
        ecfg = EvalConfig(
            **ev.model_dump(exclude={"base"}), model=model, data=cfg.data, data_dir=cfg.data_dir,
            prompt=prompt, mastery=self.probes["eval"].output, device=cfg.device,
            engine=cfg.engine, vllm=cfg.vllm, trust_remote_code=cfg.trust_remote_code,
            out=self.layout.eval(name),
        )  # fmt: skip
        if prompt == "sft":
            ecfg = ecfg.model_copy(update={"n_shots": 0})
        fp = fingerprint("eval", result_fields(ecfg, exclude={"model", "mastery"}), upstream,
                         self.probes["eval"].fingerprint)  # fmt: skip
        return _spec(f"eval/{name}", "eval", ecfg, fp)

    def _cell(self, level, size, seed) -> Cell:
        cfg, cell = self.cfg, Cell(level, size, seed)
        name = cell.name
        sub_fp = fingerprint("subset", SUBSETS_VERSION, level, size, seed, self.relations,
                             self.data_fp, self.probes["train"].fingerprint)  # fmt: skip
        scfg = SubsetConfig(
            items=self.layout.items, mastery=self.probes["train"].output,
            relations=self.relations, eval_split=cfg.eval.split, level=level, size=size,
            seed=seed, out=self.layout.subset(name),
        )  # fmt: skip
        cell.stages["subset"] = _spec(f"subsets/{name}", "subset", scfg, sub_fp,
                                      marker_file=scfg.out.with_suffix(".json"))  # fmt: skip
        model_dir = self.layout.model(name)
        recipe = cfg.train
        if recipe.device == "auto":  # the grid's device, unless the recipe names one
            recipe = recipe.model_copy(update={"device": cfg.device})
        tcfg = TrainConfig(**recipe.model_dump(), model=cfg.model, train_file=scfg.out,
                           trust_remote_code=cfg.trust_remote_code, out=model_dir)  # fmt: skip
        train_fp = fingerprint("train", result_fields(cfg.train), self.base_fp, sub_fp)
        cell.stages["train"] = _spec(f"models/{name}", "train", tcfg, train_fp)
        cell.stages["eval"] = self._eval_stage(name, str(model_dir), "sft", train_fp)
        if cfg.transitions:  # the eval facts re-probed with the tuned model
            ev = cfg.eval
            cell.stages["reprobe"] = self._probe_stage(
                ev.split, None, ev.limit_per_relation, str(model_dir), train_fp,
                f"probe/after/{name}",
            )  # fmt: skip
        if cfg.kl.enabled:
            cell.stages["kl"] = self._kl_stage(name, model_dir, train_fp)
        params = cfg.params
        if name in params.cells or "all" in params.cells:
            if params.diff:
                cell.stages["diff"] = self._diff_stage(name, model_dir, train_fp)
            if params.restore:
                cell.stages["restore"] = self._restore_stage(name, model_dir, train_fp)
            if params.layers:
                cell.stages["blocks"] = self._restore_stage(name, model_dir, train_fp, True)
        return cell

    def _diff_stage(self, name: str, model_dir, upstream: str) -> Stage:
        params = self.cfg.params
        dcfg = DiffConfig(base=self.cfg.model, tuned=model_dir, region=params.region,
                          compute_device=params.compute_device,
                          out=self.layout.params(name, "diff"))  # fmt: skip
        fp = fingerprint("diff", params.region, upstream, self.base_fp)
        return _spec(f"params/{name}/diff", "diff", dcfg, fp)

    def _restore_stage(self, name: str, model_dir, upstream: str, blocks: bool = False
                       ) -> Stage:  # fmt: skip
        """The k sweep (``params/<cell>/restore``) or, with ``blocks``, the layer blocks of
        ``params.layers`` restored entirely (``params/<cell>/blocks``, PAPER.md Table 11); the
        unrestored model's score is the cell's own evaluation."""
        cfg, params, probe = self.cfg, self.cfg.params, self.probes["eval"]
        settings = params.model_dump(exclude={"cells", "diff", "restore", "pick_on", "layers"})
        folder = self.layout.params(name, "blocks" if blocks else "restore")
        rcfg = RestoreConfig(
            **settings, layers=params.layers if blocks else None, base=cfg.model, tuned=model_dir,
            device=cfg.device, engine=cfg.engine, vllm=cfg.vllm,
            trust_remote_code=cfg.trust_remote_code, out=folder,
            eval=RestoreEval(**cfg.eval.model_dump(exclude={"base"}), data=cfg.data,
                             data_dir=cfg.data_dir, mastery=probe.output, pick_on=params.pick_on,
                             keep_models=cfg.keep_models),
        )  # fmt: skip
        fp = fingerprint("restore", result_fields(rcfg, exclude={"tuned", "eval"}),
                         result_fields(rcfg.eval, exclude={"mastery"}), upstream,
                         probe.fingerprint)  # fmt: skip
        return _spec(f"params/{name}/{folder.name}", "restore", rcfg, fp,
                     inputs={"tuned_eval": self.layout.eval(name)})  # fmt: skip

    def _kl_stage(self, name: str, model_dir, upstream: str) -> Stage:
        cfg, probe = self.cfg, self.probes["eval"]
        kcfg = KLConfig(
            **cfg.kl.model_dump(exclude={"enabled"}), base=cfg.model, tuned=str(model_dir),
            data=cfg.data, data_dir=cfg.data_dir, split=cfg.eval.split,
            limit_per_relation=cfg.eval.limit_per_relation, probe=probe.output,
            templates_file=cfg.probe.templates_file, device=cfg.device, engine=cfg.engine,
            trust_remote_code=cfg.trust_remote_code, out=self.layout.kl(name),
        )  # fmt: skip
        fp = fingerprint("kl", result_fields(cfg.kl), upstream, probe.fingerprint, self.base_fp)
        return _spec(f"kl/{name}", "kl", kcfg, fp,
                     marker_file=kcfg.out.with_suffix(".stage.json"))  # fmt: skip

    # -- the plan -------------------------------------------------------------------------
    def probe_shards(self, workers: int) -> dict[str, int]:
        """Jobs per probe: the ``workers`` shared by the probes in proportion to their chunks
        (at least one each, at most one per chunk)."""
        total = sum(self._probe_chunks.values()) or 1
        return {key: max(1, min(n, round(workers * n / total)))
                for key, n in self._probe_chunks.items()}  # fmt: skip

    def probe_jobs(self, workers: int) -> list[Job]:
        """The probes not yet done, each split into shards over its chunks (see above)."""
        jobs, shards = [], self.probe_shards(workers)
        for stage in self.probes.values():
            n = shards[stage.key]
            if stage.done():
                continue
            if n == 1:
                jobs.append(Job(name=stage.key, stages=[stage]))
            else:  # a rerun submits only the shards with chunks left
                from sftscope.probe import finished_chunks

                left = set(range(self._probe_chunks[stage.key])) - finished_chunks(stage.output)
                jobs += [Job(name=f"{stage.key}#{i}of{n}", stages=[stage], shard=(i, n))
                         for i in range(n) if any(c % n == i for c in left)]  # fmt: skip
        return jobs

    def stage_jobs(self) -> list[Job]:
        """After the probes and subsets: the base evaluation, then one job per cell."""
        jobs = []
        if self.cfg.eval.base:
            jobs.append(Job(name=self.base_eval.key, stages=[self.base_eval]))
        for cell in self.cells:
            stages = [s for k, s in cell.stages.items() if k != "subset"]
            jobs.append(Job(name=f"cell/{cell.name}", stages=stages, cell=True,
                            keep_models=self.cfg.keep_models))  # fmt: skip
        return jobs

    @property
    def _gpus(self) -> bool:
        """Whether jobs want a GPU each (any device but cpu: auto finds none on a CPU box)."""
        return self.cfg.device != "cpu"

    def plan(self) -> list[tuple[str, str]]:
        """(stage, status) for every stage, in run order; reads markers only."""
        rows = [(s.key, s.status()) for s in self.probes.values()]
        if self.cfg.eval.base:
            rows.append((self.base_eval.key, self.base_eval.status()))
        for cell in self.cells:
            rows += [(s.key, s.status()) for s in cell.stages.values()]
        return rows

    def plan_jobs(self) -> list[tuple[str, str, str, str]]:
        """(wave, job, stage, status) rows: what ``run`` would hand its executor, job by job."""
        from sftscope.executors import probe_workers

        shards = self.probe_shards(probe_workers(self.cfg.executor, self._gpus))
        rows = []
        for stage in self.probes.values():
            n = shards[stage.key]
            job = f"{n} shards" if n > 1 and not stage.done() else stage.key
            rows.append(("1 probes", job, stage.key, stage.status()))
        for cell in self.cells:
            sub = cell.stages["subset"]
            rows.append(("2 subsets", "(driver)", sub.key, sub.status()))
        for job in self.stage_jobs():
            rows += [("3 cells", job.name, s.key, s.status()) for s in job.stages]
        return rows

    # -- running --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from sftscope.executors import make_executor, probe_workers

        ex = self.cfg.executor
        check_engine(self.cfg.engine)  # before anything is written
        with Claim(self.layout.lock, ex.claim_timeout_s, what="run folder (another sftscope "
                   "run drives it)"):  # fmt: skip
            atomic_write_text(self.layout.config, dump_config(self.cfg))
            atomic_write_jsonl(self.layout.items, self._item_rows)
            executor = make_executor(ex, self.layout, gpus=self._gpus)
            try:
                workers = probe_workers(ex, self._gpus)
                for stage in self.probes.values():
                    if not stage.done():
                        stage.clear()  # a probe made from other inputs goes before shards start
                self._wave(executor, self.probe_jobs(workers), "probes")
                for stage in self.probes.values():  # merge the shards' parts (no model loaded)
                    self._execute(stage)
                for cell in self.cells:  # all sets first: a level too small fails before training
                    self._execute(cell.stages["subset"])
                self._wave(executor, [j for j in self.stage_jobs() if not j.done()], "cells")
            finally:
                executor.close()
            return self.write_manifest()

    def _wave(self, executor, jobs: list[Job], what: str) -> None:
        if not jobs:
            return
        bar, finished = tqdm(total=len(jobs), desc=what, unit="job"), set()

        def done(job: Job) -> None:  # after every job (local: every stage)
            self.write_manifest()
            if job.name not in finished and (job.shard or all(s.done() for s in job.stages)):
                finished.add(job.name)
                bar.update(1)
                bar.set_postfix_str(job.name)

        failures = executor.run(jobs, done)
        bar.close()
        self.write_manifest()
        if failures:
            lines = "; ".join(f.line() for f in failures)
            raise SftscopeError(f"{len(failures)} of {len(jobs)} jobs ({what}) failed: {lines}")

    def _execute(self, stage: Stage) -> None:
        if not stage.done():
            log.info("running %s", stage.key)
            stage.execute()
            self.write_manifest()

    def write_manifest(self) -> dict[str, Any]:
        stages = [*self.probes.values()] + ([self.base_eval] if self.cfg.eval.base else [])
        manifest = {
            "name": self.root.name,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": self._versions,
            "executor": self.cfg.executor.kind,
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
        atomic_write_json(self.layout.manifest, manifest)
        return manifest


def _stage_entry(stage: Stage) -> dict[str, Any]:
    m = stage.marker() or {}
    done = m.get("fingerprint") == stage.fingerprint
    return {
        "status": "done" if done else "pending",
        "fingerprint": stage.fingerprint,
        "seconds": m.get("seconds") if done else None,
        "host": m.get("host") if done else None,
        "result": m.get("result") if done else None,
    }
