"""The stage runners: a stage's ``kind`` names, in the registry
(:data:`sftscope.registry.RUNNERS`), the config model its JSON is validated by and the function
below that runs it. A new kind of stage is one function (here or in a module of its own) and one
registry line; the grid plans it, every executor runs it. Each runner returns the brief result
kept in the stage's marker (and so in ``manifest.json``).

A stage whose entry says ``engine`` loads one model on its config's engine; on an engine that
holds one model per process (vLLM) it runs in a fresh process of its own, so a job (a cell:
eval, then the re-probe) or the local executor's driver can run one such stage after another.
:func:`execute` runs a stage unless its marker says it is done, then writes the marker."""

from __future__ import annotations

import socket
import time
from typing import Any

from sftscope.config import (
    DiffConfig,
    EvalConfig,
    KLConfig,
    ProbeConfig,
    RepairConfig,
    RestoreConfig,
    SelectConfig,
    TrainConfig,
)
from sftscope.io import atomic_write_json
from sftscope.models.factory import one_model_per_process
from sftscope.models.process import in_fresh_process
from sftscope.pipeline.stage import Stage
from sftscope.registry import RUNNERS, load_target
from sftscope.subsets import SubsetConfig, run_subset


def run_stage(stage: Stage, **kw: Any) -> dict[str, Any]:
    """Run one stage (``kw``: the probe's ``shard``): in this process, or in a fresh one when
    its engine holds one model per process."""
    entry = RUNNERS[stage.kind]
    cfg = load_target(entry.config).model_validate(stage.config)
    fn = entry.load()
    if entry.engine and one_model_per_process(getattr(cfg, "engine", "hf")):
        return in_fresh_process(fn, cfg, stage, **kw)
    return fn(cfg, stage, **kw)


def execute(stage: Stage) -> dict[str, Any]:
    """Run ``stage`` unless its marker says it is done: clear what an earlier attempt left,
    run it, then write the marker (last, so a killed run leaves no marker on a half output)."""
    if stage.done():
        return stage.marker() or {}
    stage.clear()
    started = time.perf_counter()
    result = run_stage(stage)
    marker = {
        "stage": stage.key,
        "fingerprint": stage.fingerprint,
        "seconds": round(time.perf_counter() - started, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": socket.gethostname(),
        "result": result,
    }
    atomic_write_json(stage.marker_path, marker)
    return marker


def probe(cfg: ProbeConfig, stage: Stage, shard: tuple[int, int] | None = None) -> dict:
    from sftscope.probe import run_probe, run_probe_shard

    if shard is not None:
        return run_probe_shard(cfg, shard).model_dump(include={"chunks"})
    keep = {"n_probed", "histogram", "facts_per_second", "thresholds"}
    return run_probe(cfg).model_dump(include=keep)


def select(cfg: SelectConfig, stage: Stage) -> dict:
    from sftscope.select_data import run_select

    s = run_select(cfg)
    return {"histogram": s["histogram"]["overall"], "recommended": s["recommended"]["n"]}


def subset(cfg: SubsetConfig, stage: Stage) -> dict:
    return run_subset(cfg)  # the composition, kept in the marker subsets/<cell>.json


def train(cfg: TrainConfig, stage: Stage) -> dict:
    from sftscope.train import run_train

    return run_train(cfg)


def evaluate(cfg: EvalConfig, stage: Stage) -> dict:
    from sftscope.evaluate import run_eval

    summary = run_eval(cfg)
    out = {k: summary.group(k).containment for k in ("in_domain", "ood", "overall")}
    for key, block in (summary.by_level or {}).items():
        out[f"{key}_per_level"] = [v.containment for v in block.per_level]
        out[f"{key}_mean_of_levels"] = block.mean_of_levels.containment
    return out


def kl(cfg: KLConfig, stage: Stage) -> dict:
    from sftscope.token_kl import run_kl

    summary, out = run_kl(cfg), {}
    if (p := summary.paper) is not None:
        out = {"paper_mean": p.mean, "paper_std": p.std, "paper_n": p.n}
    if (full := summary.full) is not None:
        out["full_per_level"] = [b.kl_mean for b in full.per_level]
        out["dlogp_per_level"] = [b.dlogp_mean for b in full.per_level]
    return out


def diff(cfg: DiffConfig, stage: Stage) -> dict:
    from sftscope.params.diff import run_diff

    s = run_diff(cfg)
    return {"concentration": {f"{r['k']:g}": r["share"] for r in s["concentration"]}}


def repair(cfg: RepairConfig, stage: Stage) -> dict:
    """Every repair method's sweep on dev and its pick on the evaluation split."""
    from sftscope.repair import run_repair

    return run_repair(cfg).model_dump(mode="json")


def restore(cfg: RestoreConfig, stage: Stage) -> dict:
    """The k sweep, or the layer blocks; the unrestored model's score is the cell's own eval
    (``inputs["tuned_eval"]``)."""
    from sftscope.restore_sweep import run_sweep

    return run_sweep(cfg, stage.inputs.get("tuned_eval")).model_dump(mode="json")
