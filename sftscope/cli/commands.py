"""The ``sftscope`` command line: one Typer app, one subcommand per stage.

Every stage command takes ``--config FILE.yaml`` and trailing ``key=value`` overrides besides its
options; bad input ends with a one-line ``error:`` message and exit code 2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sftscope.cli.common import ConfigOpt, Overrides, _one_line_errors, console
from sftscope.cli.composite import audit_cmd, demo_cmd, report_cmd, run_cmd, testbed_app
from sftscope.cli.options import Options, with_config_options
from sftscope.cli.tables import (
    concentration_table,
    histogram_table,
    level_table,
    num,
    pct,
    repair_table,
    select_table,
    selection_table,
    summary_table,
    sweep_tables,
)
from sftscope.config import (
    DataSource,
    DiffConfig,
    EvalConfig,
    KLConfig,
    ProbeConfig,
    RepairConfig,
    RestoreConfig,
    RestoreEval,
    SelectConfig,
    TrainConfig,
    load_config,
)
from sftscope.errors import SftscopeError
from sftscope.registry import READERS

app = typer.Typer(
    help="Measure and control what supervised fine-tuning does to a model's knowledge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build and inspect QA datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("sftscope").setLevel(logging.INFO)


@app.command("eval")
@_one_line_errors
@with_config_options(EvalConfig)
def eval_cmd(options: Options, overrides: Overrides = None, config: ConfigOpt = None) -> None:
    """Closed-book QA accuracy with per-item records (DIR/records.jsonl, DIR/summary.json)."""
    from sftscope.evaluate import run_eval

    cfg = load_config(EvalConfig, config, options, overrides)
    summary = run_eval(cfg)
    console.print(summary_table(summary, f"{cfg.model} on {cfg.data}/{cfg.split} ({cfg.prompt})"))
    if summary.by_level is not None:
        console.print(level_table(summary.by_level))
    console.print(f"records and summary in {cfg.out}")


@app.command("probe")
@_one_line_errors
@with_config_options(ProbeConfig, exclude=["thresholds"])
def probe_cmd(options: Options, overrides: Overrides = None, config: ConfigOpt = None) -> None:
    """Mastery level (0-4) of every fact for the base model: DIR/mastery.jsonl, summary.json."""
    from sftscope.probe import run_probe

    cfg = load_config(ProbeConfig, config, options, overrides)
    summary = run_probe(cfg)
    console.print(histogram_table(summary))
    rate, skipped = summary.facts_per_second, summary.no_subject
    console.print(
        f"{summary.n_probed} facts probed"
        + (f" at {rate} facts/s" if rate else "")
        + (f"; {skipped} without a subject skipped" if skipped else "")
        + f"; results in {cfg.out}"
    )


@app.command("select")
@_one_line_errors
@with_config_options(
    SelectConfig,
    exclude=["probe.thresholds"],
    flatten=["probe"],
    names={"probe.seed": "probe-seed", "probe.prompt": "probe-prompt"},
)
def select_cmd(options: Options, overrides: Overrides = None, config: ConfigOpt = None) -> None:
    """Annotate an SFT file (any QA table) with the base model's mastery level of each pair and
    write the subsets the paper recommends: DIR/annotated.jsonl, histogram.json,
    recommended.jsonl (at most --size pairs of levels >= --min-level), level-<L>.jsonl."""
    from sftscope.select_data import run_select

    cfg = load_config(SelectConfig, config, options, overrides)
    s = run_select(cfg)
    console.print(select_table(s))
    rec, out = s["recommended"], cfg.out
    levels = f"levels {rec['min_level']}-{rec['max_level']}"
    if rec["n"] == 0:
        console.print(
            f"no pair is at {levels}: {out}/recommended.jsonl is empty (see "
            "level-<L>.jsonl, or lower --min-level)"
        )
    else:
        short = f" (only {rec['eligible']} qualify)" if rec["eligible"] < rec["size"] else ""
        console.print(
            f"{rec['n']} pairs of {levels}{short} in {out}/recommended.jsonl "
            "(recommended.train.jsonl: for sftscope train)"
        )
    if s["histogram"]["unprobed"]:
        console.print(
            f"{s['histogram']['unprobed']} pairs without a subject were not probed "
            f"({s['method']} needs one): mastery_level null"
        )
    console.print(f"annotated.jsonl, histogram.json, level-0..4.jsonl, select.json in {out}")


@app.command("calibrate")
@_one_line_errors
def calibrate_cmd(
    labels: Annotated[Path, typer.Option(help="sampling-probe folder (reference levels)")],
    scores: Annotated[Path, typer.Option(help="likelihood-probe folder (R-hat scores)")],
    out: Annotated[Path, typer.Option(help="calibration.json to write")],
) -> None:
    """Fit the likelihood estimator's four thresholds to the sampling protocol's levels."""
    from sftscope.calibration import calibrate

    result = calibrate(labels, scores, out)
    console.print(
        f"thresholds {', '.join(f'{t:.4g}' for t in result['thresholds'])}: "
        f"{100 * result['agreement']:.1f}% level agreement on {result['n']} facts; wrote {out}"
    )


@app.command("relevel")
@_one_line_errors
def relevel_cmd(
    probe_dir: Annotated[Path, typer.Argument(help="finished likelihood-probe folder")],
    calibration: Annotated[Path, typer.Option(help="calibration.json from sftscope calibrate")],
    out: Annotated[Path, typer.Option(help="folder for the relabelled mastery.jsonl")],
) -> None:
    """Relabel a likelihood probe's levels with calibrated thresholds (no model needed)."""
    from sftscope.calibration import relevel

    console.print(histogram_table(relevel(probe_dir, calibration, out)))


@app.command("train")
@_one_line_errors
@with_config_options(TrainConfig)
def train_cmd(options: Options, overrides: Overrides = None, config: ConfigOpt = None) -> None:
    """Fine-tune on question/answer pairs (paper's format, answer-only loss; accelerate-ready)."""
    from sftscope.train import run_train

    cfg = load_config(TrainConfig, config, options, overrides)
    s = run_train(cfg)
    console.print(
        f"{s['examples']} examples, {s['steps']} steps, train loss {s['train_loss']:.4f}, "
        f"{s['wall_seconds']} s on {s['processes']} process(es); model in {cfg.out}"
    )
    watch = s.get("watch")
    if watch:
        kept = watch.get("knowledge/known_kept")
        console.print(
            f"watched facts: known kept {pct(kept)}% at step {watch['step']} "
            f"(knowledge_log.jsonl in {cfg.out})"
            + (f"; {watch['stopped']}" if watch["stopped"] else "")
        )


@app.command("kl")
@_one_line_errors
@with_config_options(KLConfig)
def kl_cmd(options: Options, overrides: Overrides = None, config: ConfigOpt = None) -> None:
    """Token-level drift of a fine-tuned model from its base: the paper's top-10 KL and the
    full-vocabulary KL per mastery level."""
    from sftscope.token_kl import run_kl

    cfg = load_config(KLConfig, config, options, overrides)
    s = run_kl(cfg)
    if (p := s.paper) is not None:
        console.print(
            f"paper KL (top-{p.top_k}, level {p.level}, {p.answer_first} of "
            f"{p.candidates} facts answer first): mean {num(p.mean)} ± {num(p.std)}"
        )
    if s.full is not None:
        table = Table(title="full-vocabulary KL per answer token, by mastery level")
        for col in ("level", "facts", "KL mean", "KL std", "Δ log p(gold)", "gained %"):
            table.add_column(col, justify="right")
        for k, b in enumerate(s.full.per_level):
            table.add_row(
                str(k), str(b.n), num(b.kl_mean), num(b.kl_std), num(b.dlogp_mean), pct(b.gained)
            )
        console.print(table)
    console.print(f"summary in {cfg.out}")


@app.command("diff")
@_one_line_errors
@with_config_options(DiffConfig)
def diff_cmd(options: Options, overrides: Overrides = None, config: ConfigOpt = None) -> None:
    """Relative change of every weight, per tensor/layer/module, and its concentration."""
    from sftscope.params.diff import run_diff

    cfg = load_config(DiffConfig, config, options, overrides)
    region, out = cfg.region, cfg.out
    s = run_diff(cfg)
    console.print(concentration_table(s["concentration"], region))
    zero = s["zero_base"]
    if zero["share_of_r"] > 0.5 and not cfg.nonzero_base:
        console.print(
            f"note: {zero['weights']} weights ({pct(zero['weights'] / s['weights'])}%) are "
            f"exactly 0 in the base model and hold {pct(zero['share_of_r'])}% of Σr "
            "(r = |Δ| / 1e-8 there); the concentration mostly measures them "
            "(nonzero_base=true leaves them out of it)"
        )
    console.print(
        f"{s['tensors']} tensors; diff_summary.tsv, diff.json, concentration.json in {out}"
    )


@app.command("repair")
@_one_line_errors
@with_config_options(RepairConfig, flatten=["eval"], names={"eval.seed": "eval-seed"})
def repair_cmd(options: Options, overrides: Overrides = None, config: ConfigOpt = None) -> None:
    """Compare the ways to move a fine-tune back toward its base (the paper's restore,
    interpolation, DARE, magnitude trimming, spectral filtering, layer blocks, depth scaling):
    every strength applied in place and evaluated on dev, each method's best dev point reported
    on test."""
    from sftscope.repair import run_repair
    from sftscope.report.repair import write_repair_report

    cfg = load_config(RepairConfig, config, options, overrides)
    s = run_repair(cfg)
    console.print(repair_table(s))
    if s.saved:
        console.print(f"repaired checkpoint: {s.saved}")
    page = write_repair_report(cfg.out, s)
    console.print(f"repair.json, every evaluation and the report ({page}/index.html) in {cfg.out}")


@app.command("restore")
@_one_line_errors
@with_config_options(RestoreConfig, flatten=["eval"], names={"eval.seed": "eval-seed"})
def restore_cmd(
    options: Options,
    overrides: Overrides = None,
    config: ConfigOpt = None,
    evaluate: Annotated[bool, typer.Option("--eval", help="evaluate every restored model")] = False,
) -> None:
    """Restore the most-changed (or least, or random) fine-tuned weights to their pre-SFT
    values, every k in one streamed pass; with --eval, evaluate each restored model."""
    cfg = load_config(RestoreConfig, config, options, overrides)
    if evaluate and cfg.eval is None:
        cfg = cfg.model_copy(update={"eval": RestoreEval()})
    if cfg.eval is None and not cfg.save:
        raise SftscopeError("--no-save needs --eval: restored in place, nothing would be kept")
    if cfg.eval is None:
        from sftscope.params.restore import run_restore

        s = run_restore(cfg)
        console.print(
            selection_table(s, f"restored weights ({cfg.region}, {cfg.scope}, {cfg.strategy})")
        )
        console.print(f"checkpoints, selection.json and restore_stats.tsv in {cfg.out}")
        return
    from sftscope.restore_sweep import run_sweep

    s = run_sweep(cfg)
    title = f"restore sweep: {cfg.eval.split} accuracy % (mean of levels if known)"
    for item in sweep_tables(s, title, cfg.eval.split):
        console.print(item)
    kept = "restored models, evals" if cfg.save else "evals (restored in place, no checkpoints)"
    console.print(f"{kept} and sweep.json in {cfg.out}")


@data_app.command("build-geo")
@_one_line_errors
def build_geo_cmd(
    out: Annotated[Path, typer.Option(help="output folder (EntityQuestions layout)")],
    seed: Annotated[int, typer.Option(help="split seed")] = 0,
) -> None:
    """Build the offline geography QA set (GeoNames, CLDR, countryinfo facts)."""
    from sftscope.data.geography import build_geography

    counts = build_geography(out, seed=seed)
    table = Table(title=f"geography set in {out}")
    for col in ("relation", "train", "dev", "test"):
        table.add_column(col, justify="left" if col == "relation" else "right")
    for rel, c in counts.items():
        table.add_row(rel, *(str(c.get(s, 0)) for s in ("train", "dev", "test")))
    console.print(table)


@data_app.command("stats")
@_one_line_errors
def stats_cmd(
    data: Annotated[str, typer.Option(help=f"dataset reader: {' | '.join(READERS.names)}")] = "geo",
    data_dir: Annotated[Path | None, typer.Option(help="dataset folder")] = None,
    columns: Annotated[
        str | None,
        typer.Option(help="generic: the table's column of each field, e.g. answers=golden_answers"),
    ] = None,
) -> None:
    """Items per relation and split, and how many subjects could not be recovered."""
    from sftscope.data.dataset import dataset_stats
    from sftscope.data.readers import resolve_dataset

    src = load_config(DataSource, options={"data": data, "data_dir": data_dir, "columns": columns})
    ds = resolve_dataset(src.data, src.data_dir, src.columns)
    rows = dataset_stats(ds)
    table = Table(title=f"{ds.name} ({ds.root})")
    for col in ("relation", "domain", "train", "dev", "test", "no subject"):
        table.add_column(col, justify="left" if col in ("relation", "domain") else "right")
    totals = {"train": 0, "dev": 0, "test": 0, "no subject": 0}
    for r in rows:
        table.add_row(
            r.relation,
            r.domain,
            *(str(r.counts[s]) for s in ("train", "dev", "test")),
            str(r.no_subject),
        )
        for s in ("train", "dev", "test"):
            totals[s] += r.counts[s]
        totals["no subject"] += r.no_subject
    table.add_section()
    table.add_row("total", "", *(str(v) for v in totals.values()))
    console.print(table)


app.command("run")(run_cmd)
app.command("audit")(audit_cmd)
app.add_typer(testbed_app, name="testbed")
app.command("report")(report_cmd)
app.command("demo")(demo_cmd)
