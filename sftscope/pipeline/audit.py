"""``sftscope audit``: what fine-tuning did to a model's knowledge, for any base / fine-tuned
pair of the same architecture (a public base model and a user's SFT of it).

The audit *plans* typed stages (:mod:`.plan`, the grid's machinery) and runs them with
an executor, resumable stage by stage:

1. probes: ``probe/base`` and ``probe/tuned``, the same probe (settings, items, seed) of the
   evaluation split's facts with each model, the clean measure of what SFT changed;
2. analyses, independent jobs: ``eval/base`` (few-shot prompt); ``eval/tuned`` (``eval.
   tuned_prompt``: the same few-shot prompt by default, since a user's SFT need not know the
   paper's ``<|question|>`` format; ``sft`` for one trained by ``sftscope train``) then the
   restore sweep ``params/tuned/restore`` (k picked on dev) and any layer blocks; ``kl/tuned``;
   ``params/tuned/diff``. Both evaluations and the KL read the base probe's levels.

Then, in the driver, from the finished stages: ``transitions.jsonl`` (every fact lost, known
-> unknown, or gained, unknown -> known, with both probes' levels and both models' answers),
``audit.json`` (the summary numbers) and ``report/index.html``.

Everything that can fail on bad input is checked when the audit is planned, before anything is
written: the pair (the tuned folder, the same tensors, shapes and dtypes), the data (the readers'
one-line errors), the probe (templates, relations). Data without mapping templates (a generic QA
file) gets the ``question`` probe and the full-vocabulary KL only (the paper KL needs templates).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sftscope.config import AuditConfig, ProbeConfig, ProbeSettings, dump_config
from sftscope.data.dataset import load_items
from sftscope.data.readers import resolve_dataset
from sftscope.errors import SftscopeError
from sftscope.io import (
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    read_jsonl,
)
from sftscope.layout import AUDIT, KNOWLEDGE_LOG, TRANSITIONS, RunLayout
from sftscope.models.adapters import find_adapter
from sftscope.outputs import AuditSummary
from sftscope.pipeline.plan import (
    Plan,
    diff_stage,
    eval_stage,
    kl_stage,
    probe_chunks,
    probe_stage,
    repair_stage,
    restore_stage,
    stage_entry,
)
from sftscope.pipeline.stage import Job, Stage, fingerprint, model_identity, package_versions
from sftscope.probe import plan_probe
from sftscope.report.results import accuracy, correct_by_id, kl_summary, params_summary
from sftscope.select_data import has_templates, pick_method
from sftscope.transitions import (
    answer_transitions,
    change_counts,
    fact_changes,
    read_answers,
    read_mastery,
    transitions,
)

log = logging.getLogger(__name__)
TUNED = "tuned"  # the tuned model's name in the layout: eval/tuned, kl/tuned.json, params/tuned


def check_pair(base: str, tuned: Path) -> tuple[str, Path]:
    """Both checkpoints as absolute local folders, with the same tensors (names, shapes,
    dtypes); a one-line error otherwise."""
    from sftscope.models.loading import SMOLLM2, resolve_model
    from sftscope.params.lora import open_weights
    from sftscope.params.tensors import check_compatible

    if not Path(tuned).is_dir():
        raise SftscopeError(f"--tuned {tuned}: no such model folder")
    location = resolve_model(base)
    if not Path(location).is_dir():
        raise SftscopeError(
            f"--base {base}: the audit compares weights, so it needs a local "
            "save_pretrained folder (or smollm2)"
        )
    base_dir, tuned_dir = Path(location).resolve(), Path(tuned).resolve()
    check_compatible(open_weights(base_dir), open_weights(tuned_dir, base=base_dir))
    return (base if base == SMOLLM2 else str(base_dir)), tuned_dir


class Audit(Plan):
    """The stages of one audit folder, built from an ``AuditConfig``; nothing runs (nor is
    written) until ``run()``."""

    WAVES = ("1 probes", "- driver", "2 analyses")

    def __init__(self, cfg: AuditConfig):
        self.cfg = cfg
        self.layout = RunLayout(Path(cfg.out).resolve())
        self.base, self.tuned = check_pair(cfg.base, cfg.tuned)
        self.dataset = resolve_dataset(cfg.data, cfg.data_dir, cfg.columns)
        ev, params = cfg.eval, cfg.params
        self.items = load_items(self.dataset, [ev.split], cfg.relations, ev.limit_per_relation)
        if not self.items:
            raise SftscopeError(f"{self.dataset.root}: no {ev.split} items to audit")
        relations = sorted({it.relation for it in self.items})
        dev = any(self.dataset.has(r, "dev") for r in relations)
        if params.restore and params.pick_on and not dev:
            raise SftscopeError(
                f"{self.dataset.root}: no dev items to pick k on (give a dev "
                "split, or params.pick_on=null)"
            )
        method = pick_method(cfg.probe, self.dataset, self.items)
        settings = ProbeSettings(**cfg.probe.model_dump(exclude={"method"}), method=method)
        self.base_fp = fingerprint(model_identity(self.base))
        self.tuned_fp = fingerprint(model_identity(str(self.tuned)))
        limit, layout = ev.limit_per_relation, self.layout
        models = {"base": (self.base, self.base_fp), TUNED: (str(self.tuned), self.tuned_fp)}
        # a tuned PEFT adapter applies to the audit's base
        bases = {"base": None, TUNED: self.base if find_adapter(self.tuned) else None}
        self.probes = {
            name: probe_stage(
                cfg,
                f"probe/{name}",
                settings=settings,
                model=model,
                split=ev.split,
                relations=cfg.relations,
                limit=limit,
                out=layout.probe(name),
                upstream=fp,
                base=bases[name],
            )
            for name, (model, fp) in models.items()
        }
        # templates and relations are checked here, before anything is written
        plan_probe(ProbeConfig.model_validate(self.probes["base"].config), self.dataset, self.items)
        n = probe_chunks(self.items, settings)
        self.probe_chunks = {s.key: n for s in self.probes.values()}
        probe = self.probes["base"]
        prompts = {"base": ev.base_prompt, TUNED: ev.tuned_prompt}
        self.evals = {
            name: eval_stage(
                cfg,
                f"eval/{name}",
                settings=ev,
                model=model,
                prompt=prompts[name],
                probe=probe,
                out=layout.eval(name),
                upstream=fp,
                relations=cfg.relations,
                base=bases[name],
            )
            for name, (model, fp) in models.items()
        }
        self.notes: list[str] = []  # what the audit adapted to the data, for the report
        self.kl = self._kl_stage(relations)
        self.params: dict[str, Stage] = {}
        if params.diff:
            self.params["diff"] = diff_stage(
                f"params/{TUNED}/diff",
                base=self.base,
                tuned=self.tuned,
                region=params.region,
                compute_device=params.compute_device,
                out=layout.params(TUNED, "diff"),
                upstream=self.tuned_fp,
                base_fp=self.base_fp,
            )
        if cfg.repair:
            if not dev:
                raise SftscopeError(f"{self.dataset.root}: no dev items to pick the repairs on")
            self.params["repair"] = repair_stage(
                cfg,
                f"params/{TUNED}/repair",
                methods=cfg.repair,
                region=params.region,
                base=self.base,
                tuned=self.tuned,
                ev=ev,
                prompt=ev.tuned_prompt,
                probe=probe,
                out=layout.params(TUNED, "repair"),
                upstream=self.tuned_fp,
                compute_device=params.compute_device,
                relations=cfg.relations,
            )
        reuse = {"tuned_eval": layout.eval(TUNED)}  # (the sweep uses the tuned prompt too)
        wanted = {"restore": params.restore, "blocks": bool(params.layers)}
        for part in (p for p, on in wanted.items() if on):
            self.params[part] = restore_stage(
                cfg,
                f"params/{TUNED}/{part}",
                params=params,
                base=self.base,
                tuned=self.tuned,
                ev=ev,
                probe=probe,
                out=layout.params(TUNED, part),
                upstream=self.tuned_fp,
                keep_models=cfg.keep_models,
                blocks=part == "blocks",
                relations=cfg.relations,
                inputs=reuse,
                prompt=ev.tuned_prompt,
            )
        self._versions = package_versions()

    def _kl_stage(self, relations: list[str]) -> Stage | None:
        """The KL stage; the paper KL only where every relation has mapping templates (else
        the full-vocabulary KL alone, said in a log line), none when nothing is left."""
        cfg, kl = self.cfg, self.cfg.kl
        if not kl.enabled:
            return None
        prompt = kl.tuned_prompt
        if prompt == "auto":
            prompt = "sft" if cfg.eval.tuned_prompt == "sft" else "template"
        paper = kl.paper and has_templates(self.dataset, relations, cfg.probe.templates_file)
        if kl.paper and not paper:
            if not kl.full:
                self._note(
                    f"kl: off (no mapping templates for {self.dataset.name}, which the "
                    "paper KL needs, and kl.full is false)"
                )
                return None
            self._note(
                f"kl: the paper KL needs mapping templates, which {self.dataset.name} "
                "lacks; only the full-vocabulary KL runs"
            )
        settings = kl.model_copy(update={"tuned_prompt": prompt, "paper": paper})
        ev = cfg.eval
        return kl_stage(
            cfg,
            f"kl/{TUNED}",
            settings=settings,
            base=self.base,
            tuned=str(self.tuned),
            split=ev.split,
            limit=ev.limit_per_relation,
            probe=self.probes["base"],
            templates_file=cfg.probe.templates_file,
            out=self.layout.kl(TUNED),
            upstream=self.tuned_fp,
            base_fp=self.base_fp,
            relations=cfg.relations,
        )

    def _note(self, text: str) -> None:
        log.info("audit: %s", text)
        self.notes.append(text)

    # -- the plan -------------------------------------------------------------------------
    @property
    def stages(self) -> list[Stage]:
        later = [self.evals[TUNED], *self.params.values(), self.evals["base"], self.kl]
        return [*self.probes.values(), *(s for s in later if s is not None)]

    def stage_jobs(self) -> list[Job]:
        """The tuned model's eval then its restore sweep (which reuses that eval), the base
        eval, the KL and the diff: independent jobs."""
        first = [self.evals[TUNED]] + [s for k, s in self.params.items() if k != "diff"]
        jobs = [Job(name=TUNED, stages=first), Job(name="eval/base", stages=[self.evals["base"]])]
        jobs += [Job(name=s.key, stages=[s]) for s in (self.kl, self.params.get("diff")) if s]
        return jobs

    def plan(self) -> list[tuple[str, str]]:
        return [(s.key, s.status()) for s in self.stages]

    # -- running --------------------------------------------------------------------------
    def write_inputs(self) -> None:
        atomic_write_text(self.layout.config, dump_config(self.cfg))
        atomic_write_jsonl(self.layout.items, [it.model_dump(mode="json") for it in self.items])

    def write_manifest(self) -> dict[str, Any]:
        manifest = {
            "name": self.root.name,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": self._versions,
            "executor": self.cfg.executor.kind,
            "base": self.base,
            "tuned": str(self.tuned),
            "stages": {s.key: stage_entry(s) for s in self.stages},
        }
        atomic_write_json(self.layout.manifest, manifest)
        return manifest

    def after_waves(self) -> None:
        """``transitions.jsonl``, ``audit.json`` (last but the report) and the report."""
        from sftscope.report.audit import write_audit_report

        rows, summary = self.summarize()
        atomic_write_jsonl(self.root / TRANSITIONS, rows)
        summary.write(self.root / AUDIT)
        write_audit_report(self.root, summary)

    # -- the results ----------------------------------------------------------------------
    def summarize(self) -> tuple[list[dict[str, Any]], AuditSummary]:
        """(transitions.jsonl rows, audit.json) from the finished stages."""
        before = read_mastery(self.probes["base"].output)
        after = read_mastery(self.probes[TUNED].output)
        correct = {name: correct_by_id(s.output) for name, s in self.evals.items()}
        rows = fact_changes(self.items, before, after, correct)
        ev = self.cfg.eval
        summary = AuditSummary(
            base=self.base,
            tuned=str(self.tuned),
            data=self.cfg.data,
            data_dir=str(self.cfg.data_dir or self.dataset.root),
            split=ev.split,
            facts=len(self.items),
            notes=self.notes,
            probe={
                k: self.probes["base"].config[k]
                for k in ("method", "templates", "samples", "temperature", "thresholds")
            },
            prompts={
                "base": ev.base_prompt,
                TUNED: ev.tuned_prompt,
                "restore sweep": ev.tuned_prompt if "restore" in self.params else None,
            },
            transitions={**transitions(before, after), **change_counts(rows, before, after)},
            accuracy={name: accuracy(s.output) for name, s in self.evals.items()},
            answers=answer_transitions(
                read_answers(self.evals["base"].output), read_answers(self.evals[TUNED].output)
            ),
            kl=kl_summary(self.kl.output) if self.kl else None,
            params=params_summary({k: s.output for k, s in self.params.items()}),
            training=self._training_log(),
        )
        return rows, summary

    def _training_log(self) -> list[dict[str, Any]]:
        """The curve the fine-tune recorded while sftscope trained it (``train --watch``)."""
        path = Path(self.tuned) / KNOWLEDGE_LOG
        return read_jsonl(path) if path.is_file() else []
