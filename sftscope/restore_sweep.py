"""``sftscope restore --eval``: evaluate every restored model, and pick k on dev.

Each output of :func:`sftscope.params.restore.run_restore` — and the unrestored fine-tuned
model, as k = 0 — is evaluated with the SFT prompt (or ``eval.prompt``) on the evaluation
split (``OUT/eval/<label>/``, the usual records and summary, resumable per model). With
``pick_on: dev`` every model is also evaluated on the dev split, the k with the best dev
in-domain accuracy is chosen (ties: the smaller k, i.e. the fewer restored weights), and the
test score at that k is reported: a "repair my fine-tuned model" procedure that never looks at
the test set to choose.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftscope.config import EvalConfig, RestoreConfig
from sftscope.errors import SftscopeError
from sftscope.evaluate import run_eval
from sftscope.io import replace_dir
from sftscope.layout import SUMMARY, SWEEP
from sftscope.models.factory import check_engine, in_place_engine, one_model_per_process
from sftscope.models.process import in_fresh_process, say_once
from sftscope.outputs import EvalSummary, SweepPick, SweepSummary
from sftscope.params.diff import region_names
from sftscope.params.lora import open_weights
from sftscope.params.restore import run_restore
from sftscope.params.structure import structure_of
from sftscope.params.tensors import has_weights

if TYPE_CHECKING:
    from sftscope.models.engines import Engine

TUNED = "tuned"  # label of the unrestored fine-tuned model (k = 0)


def _eval_dir(cfg: RestoreConfig, label: str, split: str) -> Path:
    assert cfg.eval is not None
    return Path(cfg.out) / "eval" / (label if split == cfg.eval.split else f"{label}.{split}")


def _evaluate(
    cfg: RestoreConfig,
    label: str,
    model: Path,
    split: str,
    done: Path | None = None,
    engine: Engine | None = None,
) -> EvalSummary:
    """One model's evaluation, resumed from ``OUT/eval/<label>``; ``done`` is an evaluation of
    the same model with the same settings made elsewhere (the grid's cell eval), copied in;
    ``engine``: the model already loaded (restored in place), else it is loaded from ``model``."""
    ev = cfg.eval
    assert ev is not None
    out = _eval_dir(cfg, label, split)
    if done is not None and (done / SUMMARY).exists() and not out.exists():
        staging = out.parent / f".{out.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(done, staging)
        replace_dir(staging, out)
    if (out / SUMMARY).exists():
        return EvalSummary.read(out / SUMMARY)
    if engine is None and not has_weights(model):
        raise SftscopeError(f"{model}: no weights to evaluate (deleted by keep_models: false?)")
    settings = ev.model_dump(exclude={"pick_on", "keep_models", "mastery", "split", "prompt"})
    ecfg = EvalConfig(
        **settings,
        model=str(model),
        prompt=ev.prompt,
        split=split,
        mastery=ev.mastery if split == ev.split else None,
        out=out,
        **cfg.runtime_fields(),
    )
    if engine is None and one_model_per_process(cfg.engine):
        return in_fresh_process(run_eval, ecfg)
    return run_eval(ecfg, engine)


def _row(cfg: RestoreConfig, label: str, k: float, scores: dict[str, dict]) -> dict[str, Any]:
    """A sweep row: in-domain and OOD headline per split evaluated (dev ones prefixed)."""
    assert cfg.eval is not None
    row: dict[str, Any] = {"label": label, "k": k}
    for split, s in scores.items():
        prefix = "" if split == cfg.eval.split else "dev_"
        row[f"{prefix}in_domain"] = s.headline("in_domain")
        row[f"{prefix}ood"] = s.headline("ood")
    return row


def _splits(cfg: RestoreConfig) -> list[str]:
    assert cfg.eval is not None
    return [cfg.eval.split] + (["dev"] if cfg.eval.pick_on else [])


def _written_rows(cfg: RestoreConfig, tuned_eval: Path | None) -> list[dict[str, Any]]:
    """Every output written as a checkpoint, then each loaded and evaluated: ``save: true``, or
    an engine that cannot be handed edited weights (vLLM: each model in its own process, its
    weights deleted once evaluated unless ``save``)."""
    ev = cfg.eval
    assert ev is not None
    keep = ev.keep_models and cfg.save
    selection = run_restore(cfg)
    out = Path(cfg.out)
    models = [(TUNED, 0.0, Path(cfg.tuned))]
    models += [(o["label"], o["k"], out / o["label"]) for o in selection["outputs"]]
    rows = []
    for label, k, folder in models:
        scores = {}
        for split in _splits(cfg):
            reuse = tuned_eval if label == TUNED and split == ev.split else None
            scores[split] = _evaluate(cfg, label, folder, split, reuse)
        rows.append(_row(cfg, label, k, scores))
        if not keep and label != TUNED:
            for f in folder.glob("*.safetensors"):
                f.unlink()
    return rows


def _in_place_rows(cfg: RestoreConfig, tuned_eval: Path | None) -> list[dict[str, Any]]:
    """``save: false``: the tuned model loaded once and each output restored in it, then
    evaluated (:mod:`sftscope.params.inplace`); the unrestored model goes first. The selection
    files are written as by ``run_restore``, without the checkpoints."""
    from sftscope.params.inplace import InPlace
    from sftscope.params.restore import Restorer, prepare_restore, write_selection

    ev = cfg.eval
    assert ev is not None
    base, tuned, device = prepare_restore(cfg)
    restorer = Restorer(cfg, base, tuned, device)
    restorer.select()
    inplace, engine = InPlace(restorer), None
    inplace.prepare()
    out, rows = Path(cfg.out), {}
    for label, k, output in [(TUNED, 0.0, None)] + [(o.label, o.k, o) for o in inplace.order]:
        splits = _splits(cfg)
        due = [
            sp
            for sp in splits
            if not (_eval_dir(cfg, label, sp) / SUMMARY).exists()
            and not (label == TUNED and sp == ev.split and tuned_eval is not None)
        ]
        if due and engine is None:
            engine = in_place_engine(cfg)
            inplace.attach(engine.model)
        if due and output is not None:
            inplace.apply(output)  # ascending k: each adds the weights its k restores
        scores = {}
        for split in splits:
            reuse = tuned_eval if label == TUNED and split == ev.split else None
            scores[split] = _evaluate(cfg, label, out / label, split, reuse, engine)
        rows[label] = _row(cfg, label, k, scores)
    write_selection(cfg, restorer, in_place=True)
    return [rows[TUNED]] + [rows[o.label] for o in restorer.outputs]


def run_sweep(cfg: RestoreConfig, tuned_eval: Path | None = None) -> SweepSummary:
    """Restore, then evaluate each model; returns (and writes ``OUT/sweep.json``) one row per
    model with in-domain / OOD scores, plus the dev pick when asked. ``tuned_eval``: an
    evaluation of the unrestored model on the evaluation split with the same settings, reused
    instead of evaluating it again. ``save: false`` restores in place instead of writing a
    checkpoint per output; the scores are the same."""
    ev = cfg.eval
    if ev is None:
        raise ValueError("run_sweep needs cfg.eval")
    check_engine(cfg.engine)
    written = cfg.save or one_model_per_process(cfg.engine)
    if written and not cfg.save:
        say_once(
            f"restore: {cfg.engine} cannot evaluate weights restored in place; each "
            "restored model is written, evaluated in its own process, then deleted"
        )
    elif not written and (renamed := _loaded_under_other_names(cfg)):
        written = True
        say_once(
            f"restore: the model holds {renamed[0]} (and {len(renamed) - 1} more) under another "
            "name than its checkpoint (fused weights), so it cannot be restored in place; each "
            "restored model is written, evaluated, then deleted"
        )
    rows = _written_rows(cfg, tuned_eval) if written else _in_place_rows(cfg, tuned_eval)
    result = SweepSummary(split=ev.split, engine=cfg.engine, rows=rows)
    scored = [r for r in result.rows if r.dev_in_domain is not None]
    if ev.pick_on and scored:
        best = max(scored, key=lambda r: (r.dev_in_domain, -(r.k or 0)))
        tuned = result.rows[0]
        result.pick = SweepPick(
            **best.model_dump(include={"label", "k", "dev_in_domain", "in_domain", "ood"}),
            gain_in_domain=_gain(best.in_domain, tuned.in_domain),
            gain_ood=_gain(best.ood, tuned.ood),
        )
    result.write(Path(cfg.out) / SWEEP)
    return result


def _loaded_under_other_names(cfg: RestoreConfig) -> list[str]:
    """The region's tensors the loaded model holds under other names (fused experts)."""
    tuned = open_weights(cfg.tuned, base=cfg.base)
    structure = structure_of(tuned.config_root, cfg.trust_remote_code)
    return structure.renamed(region_names(tuned, cfg.region, structure))


def _gain(restored: float | None, tuned: float | None) -> float | None:
    return None if restored is None or tuned is None else restored - tuned
