"""What the composite commands share (the grid, :mod:`.grid`, and the audit of a
base/tuned pair, :mod:`.audit`): building the typed stage specs, and running a plan of
them in waves with an executor (:mod:`.executors`).

The builders turn settings sections (``ProbeSettings``, ``EvalSettings``, ...) into
:class:`~.stage.Stage` s with chained fingerprints. Each takes the run's context first (a
``GridConfig`` or ``AuditConfig`` is a :class:`~sftscope.config.RunContext`: the data, where
and on what every stage runs) and its settings by keyword. A
:class:`Plan` runs its probes first (each split into shards of chunks over the workers), then
the stages the driver does itself (cheap: the grid's subsets), then its other jobs, rewriting
``manifest.json`` after each.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tqdm.auto import tqdm

from sftscope.config import (
    DataSource,
    DiffConfig,
    EvalConfig,
    EvalSettings,
    KLConfig,
    KLSettings,
    ProbeConfig,
    ProbeSettings,
    RepairConfig,
    RepairEval,
    RestoreConfig,
    RestoreEval,
    RestoreSettings,
    RunContext,
    result_fields,
)
from sftscope.data.schema import QAItem
from sftscope.errors import SftscopeError
from sftscope.layout import RunLayout
from sftscope.models.factory import check_engine
from sftscope.pipeline.claims import Claim, free_claims_of
from sftscope.pipeline.runners import execute
from sftscope.pipeline.stage import Job, Stage, fingerprint
from sftscope.registry import PROBE_METHODS

log = logging.getLogger(__name__)


def spec(key: str, kind: str, cfg: BaseModel, fp: str, **kw: Any) -> Stage:
    """The stage of ``cfg`` (a stage config, written to ``cfg.out``) with fingerprint ``fp``."""
    return Stage(
        key=key, kind=kind, config=cfg.model_dump(mode="json"), output=cfg.out, fingerprint=fp, **kw
    )


def _section(settings: BaseModel, cls: type[BaseModel]) -> dict[str, Any]:
    """The fields of ``cls`` in ``settings`` (an instance of a subclass with more fields)."""
    return settings.model_dump(include=set(cls.model_fields))


def probe_stage(
    ctx: RunContext,
    key: str,
    *,
    settings: ProbeSettings,
    model: str,
    split: str,
    relations: list[str] | None,
    limit: int | None,
    out: Path,
    upstream: str,
    base: str | None = None,
) -> Stage:
    """A probe of ``model`` on one split; its fingerprint chains ``upstream`` (the model's);
    ``base``: the base of ``model`` when that is a PEFT adapter folder."""
    from sftscope.probe import probe_fields

    pcfg = ProbeConfig(
        **settings.model_dump(),
        model=model,
        base=base,
        split=split,
        relations=relations,
        limit_per_relation=limit,
        out=out,
        **ctx.context(),
    )
    fields = probe_fields(pcfg, exclude=frozenset({"model"}))
    return spec(key, "probe", pcfg, fingerprint("probe", fields, upstream), keep_partial=True)


def eval_stage(
    ctx: RunContext,
    key: str,
    *,
    settings: EvalSettings,
    model: str,
    prompt: str,
    probe: Stage,
    out: Path,
    upstream: str,
    relations: list[str] | None = None,
    base: str | None = None,
) -> Stage:
    """CBQA of ``model`` on the probed split, per mastery level of ``probe`` (``base``: as in
    :func:`probe_stage`)."""
    ecfg = EvalConfig(
        **_section(settings, EvalSettings),
        model=model,
        base=base,
        relations=relations,
        prompt=prompt,
        mastery=probe.output,
        out=out,
        **ctx.context(),
    )
    if prompt in ("sft", "chat"):  # (no exemplars: n_shots would only split fingerprints)
        ecfg = ecfg.model_copy(update={"n_shots": 0})
    fp = fingerprint(
        "eval", result_fields(ecfg, exclude={"model", "mastery"}), upstream, probe.fingerprint
    )
    return spec(key, "eval", ecfg, fp)


def kl_stage(
    ctx: RunContext,
    key: str,
    *,
    settings: KLSettings,
    base: str,
    tuned: str,
    split: str,
    limit: int | None,
    probe: Stage,
    templates_file: Path | None,
    out: Path,
    upstream: str,
    base_fp: str,
    relations: list[str] | None = None,
) -> Stage:
    """The token-level KL of ``tuned`` from ``base`` on the facts ``probe`` leveled; the
    fingerprint hashes ``settings`` as given (a section with more fields: all of them)."""
    kcfg = KLConfig(
        **_section(settings, KLSettings),
        base=base,
        tuned=tuned,
        split=split,
        relations=relations,
        limit_per_relation=limit,
        probe=probe.output,
        templates_file=templates_file,
        out=out,
        **ctx.context(),
    )
    fp = fingerprint("kl", result_fields(settings), upstream, probe.fingerprint, base_fp)
    return spec(key, "kl", kcfg, fp, marker_file=kcfg.out.with_suffix(".stage.json"))


def diff_stage(
    key: str,
    *,
    base: str,
    tuned: Path,
    region: str,
    compute_device: str,
    out: Path,
    upstream: str,
    base_fp: str,
) -> Stage:
    """The relative change of ``tuned``'s weights from ``base``'s (no model runs: no context)."""
    dcfg = DiffConfig(base=base, tuned=tuned, region=region, compute_device=compute_device, out=out)
    return spec(key, "diff", dcfg, fingerprint("diff", region, upstream, base_fp))


def restore_stage(
    ctx: RunContext,
    key: str,
    *,
    params: RestoreSettings,
    base: str,
    tuned: Path,
    ev: EvalSettings,
    probe: Stage,
    out: Path,
    upstream: str,
    keep_models: bool,
    blocks: bool = False,
    relations: list[str] | None = None,
    inputs: dict[str, Path] | None = None,
    prompt: str = "sft",
) -> Stage:
    """The k sweep of ``params`` (or, with ``blocks``, its layer blocks restored entirely),
    every restored model evaluated like ``ev`` says (and picked on dev with ``params.pick_on``);
    ``inputs["tuned_eval"]``: the unrestored model's evaluation with those settings, reused;
    ``prompt``: the one every model of the sweep is evaluated with."""
    settings = params.model_dump(
        include=set(RestoreSettings.model_fields) | {"compute_device"}, exclude={"layers"}
    )
    fields = ctx.context()
    data = {k: fields.pop(k) for k in DataSource.model_fields}
    rcfg = RestoreConfig(
        **settings,
        layers=params.layers if blocks else None,
        base=base,
        tuned=tuned,
        out=out,
        eval=RestoreEval(
            **_section(ev, EvalSettings),
            **data,
            relations=relations,
            mastery=probe.output,
            pick_on=getattr(params, "pick_on", None),
            keep_models=keep_models,
            prompt=prompt,
        ),
        **fields,
    )
    fp = _evaluating_fingerprint("restore", rcfg, upstream, probe)
    return spec(key, "restore", rcfg, fp, inputs=inputs or {})


def _evaluating_fingerprint(kind: str, cfg: BaseModel, upstream: str, probe: Stage) -> str:
    """A stage that changes the tuned model and evaluates it: its settings but the tuned
    folder (``upstream`` stands for it), its evaluation's but the probe's folder (the probe's
    fingerprint stands for it)."""
    return fingerprint(
        kind,
        result_fields(cfg, exclude={"tuned", "eval"}),
        result_fields(cfg.eval, exclude={"mastery"}),  # type: ignore[attr-defined]
        upstream,
        probe.fingerprint,
    )


def repair_stage(
    ctx: RunContext,
    key: str,
    *,
    methods: list[str],
    region: str,
    base: str,
    tuned: Path,
    ev: EvalSettings,
    prompt: str,
    probe: Stage,
    out: Path,
    upstream: str,
    compute_device: str,
    relations: list[str] | None = None,
) -> Stage:
    """The repair methods' comparison on ``tuned`` (each point in place, picked on dev),
    evaluated like ``ev`` says with ``prompt``, per mastery level of ``probe``."""
    rcfg = RepairConfig(
        base=base,
        tuned=tuned,
        methods=methods,
        region=region,
        relations=relations,
        eval=RepairEval(**_section(ev, EvalSettings), prompt=prompt, mastery=probe.output),
        compute_device=compute_device,
        out=out,
        **ctx.context(),
    )
    return spec(key, "repair", rcfg, _evaluating_fingerprint("repair", rcfg, upstream, probe))


def probe_chunks(items: Sequence[QAItem], settings: ProbeSettings) -> int:
    """The chunks a probe of ``items`` makes (the facts it can probe: with a subject, or any for
    a method prompted with the question)."""
    question = PROBE_METHODS[settings.method].question
    probed = sum(it.subject is not None or question for it in items)
    return -(-probed // settings.chunk_size)


def stage_entry(stage: Stage) -> dict[str, Any]:
    """A stage as the manifest lists it: status, fingerprint, and its marker's brief result."""
    m = stage.marker() or {}
    done = m.get("fingerprint") == stage.fingerprint
    return {
        "status": "done" if done else "pending",
        "fingerprint": stage.fingerprint,
        "seconds": m.get("seconds") if done else None,
        "host": m.get("host") if done else None,
        "result": m.get("result") if done else None,
    }


class Plan:
    """Stages of one run folder in three waves: ``probes`` (sharded), ``driver_stages()``
    (run here), ``stage_jobs()`` (handed to the executor). Subclasses set ``cfg`` (with
    ``executor``, ``engine``, ``device``), ``layout``, ``probes`` and ``probe_chunks`` (chunks
    per probe key), and write their inputs and manifest."""

    WAVES = ("1 probes", "2 subsets", "3 cells")  # the plan table's wave names
    cfg: Any
    layout: RunLayout
    probes: dict[str, Stage]
    probe_chunks: dict[str, int]

    @property
    def root(self) -> Path:
        return self.layout.root

    def driver_stages(self) -> list[Stage]:
        return []

    def stage_jobs(self) -> list[Job]:
        raise NotImplementedError

    def write_inputs(self) -> None:
        """The run's config and data snapshot, once the run folder is claimed."""

    def after_waves(self) -> None:
        """What the driver writes from the finished stages (the audit's files and report)."""

    def write_manifest(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- the plan -------------------------------------------------------------------------
    def probe_shards(self, workers: int) -> dict[str, int]:
        """Jobs per probe: the ``workers`` shared by the probes in proportion to their chunks
        (at least one each, at most one per chunk)."""
        total = sum(self.probe_chunks.values()) or 1
        return {
            key: max(1, min(n, round(workers * n / total))) for key, n in self.probe_chunks.items()
        }

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

                left = set(range(self.probe_chunks[stage.key])) - finished_chunks(stage.output)
                jobs += [
                    Job(name=f"{stage.key}#{i}of{n}", stages=[stage], shard=(i, n))
                    for i in range(n)
                    if any(c % n == i for c in left)
                ]
        return jobs

    @property
    def _gpus(self) -> bool:
        """Whether jobs want a GPU each (any device but cpu: auto finds none on a CPU box)."""
        return self.cfg.device != "cpu"

    def plan_jobs(self) -> list[tuple[str, str, str, str]]:
        """(wave, job, stage, status) rows: what ``run`` would hand its executor, job by job."""
        from sftscope.pipeline.executors import probe_workers

        shards = self.probe_shards(probe_workers(self.cfg.executor, self._gpus))
        rows = []
        for stage in self.probes.values():
            n = shards[stage.key]
            job = f"{n} shards" if n > 1 and not stage.done() else stage.key
            rows.append((self.WAVES[0], job, stage.key, stage.status()))
        rows += [(self.WAVES[1], "(driver)", s.key, s.status()) for s in self.driver_stages()]
        for job in self.stage_jobs():
            rows += [(self.WAVES[2], job.name, s.key, s.status()) for s in job.stages]
        return rows

    # -- running --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from sftscope.pipeline.executors import make_executor, probe_workers

        ex = self.cfg.executor
        check_engine(self.cfg.engine)  # before anything is written
        with Claim(
            self.layout.lock, ex.claim_timeout_s, what="run folder (another sftscope run drives it)"
        ) as lock:
            if lock.taken_from:
                free_claims_of(self.layout.claims, lock.taken_from)
            for tmp in self.root.glob(".*.tmp"):  # a killed driver's half-written manifest
                tmp.unlink(missing_ok=True)
            self.write_inputs()
            executor = make_executor(ex, self.layout, gpus=self._gpus)
            try:
                workers = probe_workers(ex, self._gpus)
                for stage in self.probes.values():
                    if not stage.done():
                        stage.clear()  # a probe made from other inputs goes before shards start
                self._wave(executor, self.probe_jobs(workers), "probes")
                for stage in self.probes.values():  # merge the shards' parts (no model loaded)
                    self._execute(stage)
                for stage in self.driver_stages():  # the grid: every set before any training
                    self._execute(stage)
                jobs = [j for j in self.stage_jobs() if not j.done()]
                self._wave(executor, jobs, self.WAVES[2].split(" ", 1)[1])
            finally:
                executor.close()
            self.after_waves()
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
            from sftscope.pipeline.executors import failures_line

            lines = failures_line(failures)
            raise SftscopeError(f"{len(failures)} of {len(jobs)} jobs ({what}) failed: {lines}")

    def _execute(self, stage: Stage) -> None:
        if not stage.done():
            log.info("running %s", stage.key)
            execute(stage)
            self.write_manifest()
