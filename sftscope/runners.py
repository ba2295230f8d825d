"""The stage registry: a stage's ``kind`` names the config model its JSON is validated by and
the function that runs it. A new kind of stage is one function here and one ``@runner`` line;
the grid plans it, every executor runs it. Each runner returns the brief result kept in the
stage's marker (and so in ``manifest.json``).

A stage registered with ``engine=True`` loads one model on its config's engine; on an engine
that holds one model per process (vLLM) it runs in a fresh process of its own, so a job (a cell:
eval, then the re-probe) or the local executor's driver can run one such stage after another."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sftscope.config import (
    DiffConfig,
    EvalConfig,
    KLConfig,
    ProbeConfig,
    RestoreConfig,
    SelectConfig,
    TrainConfig,
)
from sftscope.data.subsets import SubsetConfig, run_subset
from sftscope.models.factory import in_fresh_process, one_model_per_process
from sftscope.stages import Stage

Runner = Callable[..., dict[str, Any]]
RUNNERS: dict[str, tuple[type[BaseModel], Runner]] = {}
ENGINE_STAGES: set[str] = set()  # kinds that load one model on their config's engine


def runner(kind: str, config: type[BaseModel], engine: bool = False
           ) -> Callable[[Runner], Runner]:  # fmt: skip
    def register(fn: Runner) -> Runner:
        RUNNERS[kind] = (config, fn)
        if engine:
            ENGINE_STAGES.add(kind)
        return fn

    return register


def run_stage(stage: Stage, **kw: Any) -> dict[str, Any]:
    """Run one stage (``kw``: the probe's ``shard``): in this process, or in a fresh one when
    its engine holds one model per process."""
    cls, fn = RUNNERS[stage.kind]
    cfg = cls.model_validate(stage.config)
    if stage.kind in ENGINE_STAGES and one_model_per_process(getattr(cfg, "engine", "hf")):
        return in_fresh_process(fn, cfg, stage, **kw)
    return fn(cfg, stage, **kw)


@runner("probe", ProbeConfig, engine=True)
def _probe(cfg: ProbeConfig, stage: Stage, shard: tuple[int, int] | None = None) -> dict:
    from sftscope.probe import run_probe

    summary = run_probe(cfg, shard=shard)
    keep = ("n_probed", "histogram", "facts_per_second", "thresholds", "chunks")
    return {k: summary[k] for k in keep if k in summary}


@runner("select", SelectConfig, engine=True)
def _select(cfg: SelectConfig, stage: Stage) -> dict:
    from sftscope.select_data import run_select

    s = run_select(cfg)
    return {"histogram": s["histogram"]["overall"], "recommended": s["recommended"]["n"]}


@runner("subset", SubsetConfig)
def _subset(cfg: SubsetConfig, stage: Stage) -> dict:
    return run_subset(cfg)  # the composition, kept in the marker subsets/<cell>.json


@runner("train", TrainConfig)
def _train(cfg: TrainConfig, stage: Stage) -> dict:
    from sftscope.train import run_train

    return run_train(cfg)


@runner("eval", EvalConfig, engine=True)
def _eval(cfg: EvalConfig, stage: Stage) -> dict:
    from sftscope.evaluate import run_eval

    summary = run_eval(cfg)
    out = {k: summary[k]["containment"] for k in ("in_domain", "ood", "overall")}
    for key, block in summary.get("by_level", {}).items():
        out[f"{key}_per_level"] = [v["containment"] for v in block["per_level"]]
        out[f"{key}_mean_of_levels"] = block["mean_of_levels"]["containment"]
    return out


@runner("kl", KLConfig)
def _kl(cfg: KLConfig, stage: Stage) -> dict:
    from sftscope.token_kl import run_kl

    summary, out = run_kl(cfg), {}
    if "paper" in summary:
        p = summary["paper"]
        out = {"paper_mean": p["mean"], "paper_std": p["std"], "paper_n": p["n"]}
    if "full" in summary:
        out["full_per_level"] = [b["kl_mean"] for b in summary["full"]["per_level"]]
        out["dlogp_per_level"] = [b["dlogp_mean"] for b in summary["full"]["per_level"]]
    return out


@runner("diff", DiffConfig)
def _diff(cfg: DiffConfig, stage: Stage) -> dict:
    from sftscope.models.loading import resolve_model
    from sftscope.params.diff import run_diff

    s = run_diff(Path(resolve_model(cfg.base)), cfg.tuned, cfg.out, cfg.region, cfg.nonzero_base,
                 compute_device=cfg.compute_device)  # fmt: skip
    return {"concentration": {f"{r['k']:g}": r["share"] for r in s["concentration"]}}


@runner("restore", RestoreConfig)
def _restore(cfg: RestoreConfig, stage: Stage) -> dict:
    """The k sweep, or the layer blocks; the unrestored model's score is the cell's own eval
    (``inputs["tuned_eval"]``)."""
    from sftscope.params.sweep import run_sweep

    return run_sweep(cfg, stage.inputs.get("tuned_eval"))
