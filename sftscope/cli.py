"""The ``sftscope`` command line: one Typer app, one subcommand per stage.

Every stage command takes ``--config FILE.yaml`` and trailing ``key=value`` overrides besides its
options; bad input ends with a one-line ``error:`` message and exit code 2.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sftscope.errors import SftscopeError
from sftscope.tables import (
    concentration_table,
    grid_tables,
    histogram_table,
    level_table,
    num,
    pct,
    selection_table,
    summary_table,
    sweep_tables,
    transition_line,
    transition_table,
)

app = typer.Typer(
    help="Measure and control what supervised fine-tuning does to a model's knowledge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build and inspect QA datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key=value config overrides")]
# Options several stages share; None = "not given", so YAML and defaults apply.
ModelOpt = Annotated[str | None, typer.Option(help="path, hub id, or 'smollm2'")]
DataOpt = Annotated[str | None, typer.Option(help="geo | entityquestions")]
DataDirOpt = Annotated[Path | None, typer.Option(help="dataset folder")]
SplitOpt = Annotated[str | None, typer.Option(help="train | dev | test")]
RelationsOpt = Annotated[str | None, typer.Option(help="comma-separated ids, e.g. P17,P36")]
LimitOpt = Annotated[int | None, typer.Option(help="first N items per relation")]
BatchOpt = Annotated[str | None, typer.Option(help="prompts per batch, or auto (GPU memory)")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto | cpu | cuda")]
ComputeDeviceOpt = Annotated[
    str | None, typer.Option(help="cpu | cuda | auto: device for the r arithmetic (default cpu)")
]
OutOpt = Annotated[Path | None, typer.Option(help="output folder")]


def _one_line_errors(fn):
    """Turn SftscopeError into ``error: …`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SftscopeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("sftscope").setLevel(logging.INFO)


@app.command("eval")
@_one_line_errors
def eval_cmd(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    split: SplitOpt = None,
    relations: RelationsOpt = None,
    limit_per_relation: LimitOpt = None,
    prompt: Annotated[str | None, typer.Option(help="fewshot | sft")] = None,
    mastery: Annotated[Path | None, typer.Option(help="probe folder: accuracy per level")] = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
) -> None:
    """Closed-book QA accuracy with per-item records (DIR/records.jsonl, DIR/summary.json)."""
    from sftscope.config import EvalConfig, load_config
    from sftscope.evaluate import run_eval

    options = dict(
        model=model, data=data, data_dir=data_dir, split=split, relations=relations,
        limit_per_relation=limit_per_relation, prompt=prompt, mastery=mastery,
        batch_size=batch_size, device=device, out=out,
    )  # fmt: skip
    cfg = load_config(EvalConfig, config, options, overrides)
    summary = run_eval(cfg)
    console.print(summary_table(summary, f"{cfg.model} on {cfg.data}/{cfg.split} ({cfg.prompt})"))
    if "by_level" in summary:
        console.print(level_table(summary["by_level"]))
    console.print(f"records and summary in {cfg.out}")


@app.command("probe")
@_one_line_errors
def probe_cmd(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    split: SplitOpt = None,
    relations: RelationsOpt = None,
    limit_per_relation: LimitOpt = None,
    method: Annotated[str | None, typer.Option(help="sampling | likelihood | slick")] = None,
    templates: Annotated[int | None, typer.Option(help="mapping templates per fact")] = None,
    samples: Annotated[int | None, typer.Option(help="samples per template")] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature")] = None,
    calibration: Annotated[Path | None, typer.Option(help="likelihood thresholds")] = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
) -> None:
    """Mastery level (0-4) of every fact for the base model: DIR/mastery.jsonl, summary.json."""
    from sftscope.config import ProbeConfig, load_config
    from sftscope.probe import run_probe

    options = dict(
        model=model, data=data, data_dir=data_dir, split=split, relations=relations,
        limit_per_relation=limit_per_relation, method=method, templates=templates,
        samples=samples, temperature=temperature, calibration=calibration,
        batch_size=batch_size, device=device, out=out,
    )  # fmt: skip
    cfg = load_config(ProbeConfig, config, options, overrides)
    summary = run_probe(cfg)
    console.print(histogram_table(summary))
    rate = summary["facts_per_second"]
    console.print(
        f"{summary['n_probed']} facts probed"
        + (f" at {rate} facts/s" if rate else "")
        + (f"; {summary['no_subject']} without a subject skipped" if summary["no_subject"] else "")
        + f"; results in {cfg.out}"
    )


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
def train_cmd(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    train_file: Annotated[Path | None, typer.Option(help="JSONL: question + answer")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="peak learning rate")] = None,
    batch_size: Annotated[int | None, typer.Option(help="global batch size")] = None,
    epochs: Annotated[float | None, typer.Option(help="passes over the data")] = None,
    lora: Annotated[bool | None, typer.Option(help="LoRA adapters instead of full FT")] = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
) -> None:
    """Fine-tune on question/answer pairs (paper's format, answer-only loss; accelerate-ready)."""
    from sftscope.config import TrainConfig, load_config
    from sftscope.train import run_train

    options = dict(
        model=model, train_file=train_file, learning_rate=learning_rate, batch_size=batch_size,
        epochs=epochs, lora=lora, device=device, out=out,
    )  # fmt: skip
    cfg = load_config(TrainConfig, config, options, overrides)
    s = run_train(cfg)
    console.print(
        f"{s['examples']} examples, {s['steps']} steps, train loss {s['train_loss']:.4f}, "
        f"{s['wall_seconds']} s on {s['processes']} process(es); model in {cfg.out}"
    )


def plan_table(grid) -> Table:
    table = Table(title=f"plan for {grid.root}")
    table.add_column("stage")
    table.add_column("status")
    for key, status in grid.plan():
        table.add_row(key, status)
    return table


@app.command("run")
@_one_line_errors
def run_cmd(
    config: Annotated[Path, typer.Argument(help="grid YAML (see configs/)")],
    overrides: Overrides = None,
    dry_run: Annotated[bool, typer.Option(help="list what would run, run nothing")] = False,
) -> None:
    """The experiment grid: probe, subsets, train, eval per level x size x seed (resumable)."""
    from sftscope.config import GridConfig, load_config
    from sftscope.experiment import Grid

    cfg = load_config(GridConfig, config, None, overrides)
    grid = Grid(cfg)
    if dry_run:
        console.print(plan_table(grid))
        return
    grid.run()
    for item in grid_tables(cfg.out, cfg.params.scope, cfg.params.strategy, cfg.eval.split):
        console.print(item)
    console.print(f"manifest, subsets, models and evals in {cfg.out}")


@app.command("kl")
@_one_line_errors
def kl_cmd(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    base: Annotated[str | None, typer.Option(help="base model: path, hub id, or 'smollm2'")] = None,
    tuned: Annotated[str | None, typer.Option(help="fine-tuned model folder")] = None,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    split: SplitOpt = None,
    limit_per_relation: LimitOpt = None,
    probe: Annotated[Path | None, typer.Option(help="base-model probe of the split")] = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = None,
    out: Annotated[Path | None, typer.Option(help="summary JSON to write")] = None,
) -> None:
    """Token-level drift of a fine-tuned model from its base: the paper's top-10 KL and the
    full-vocabulary KL per mastery level."""
    from sftscope.config import KLConfig, load_config
    from sftscope.token_kl import run_kl

    options = dict(
        base=base, tuned=tuned, data=data, data_dir=data_dir, split=split,
        limit_per_relation=limit_per_relation, probe=probe, batch_size=batch_size,
        device=device, out=out,
    )  # fmt: skip
    cfg = load_config(KLConfig, config, options, overrides)
    s = run_kl(cfg)
    p = s["paper"]
    console.print(
        f"paper KL (top-{p['top_k']}, level {p['level']}, {p['answer_first']} of "
        f"{p['candidates']} facts answer first): mean {num(p['mean'])} ± {num(p['std'])}"
    )
    if "full" in s:
        table = Table(title="full-vocabulary KL per answer token, by mastery level")
        for col in ("level", "facts", "KL mean", "KL std", "Δ log p(gold)", "gained %"):
            table.add_column(col, justify="right")
        for k, b in enumerate(s["full"]["per_level"]):
            table.add_row(str(k), str(b["n"]), num(b["kl_mean"]), num(b["kl_std"]),
                          num(b["dlogp_mean"]), pct(b["gained"]))  # fmt: skip
        console.print(table)
    console.print(f"summary in {cfg.out}")


@app.command("diff")
@_one_line_errors
def diff_cmd(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    base: Annotated[str | None, typer.Option(help="base model: path or 'smollm2'")] = None,
    tuned: Annotated[Path | None, typer.Option(help="fine-tuned model folder")] = None,
    out: OutOpt = None,
    region: Annotated[
        str | None, typer.Option(help="paper | attention | mlp | embedding | all | re:PATTERN")
    ] = None,  # fmt: skip
    compute_device: ComputeDeviceOpt = None,
) -> None:
    """Relative change of every weight, per tensor/layer/module, and its concentration."""
    from sftscope.config import DiffConfig, load_config
    from sftscope.models.loading import resolve_device, resolve_model
    from sftscope.params.diff import run_diff

    options = {"base": base, "tuned": tuned, "out": out, "region": region,
               "compute_device": compute_device}  # fmt: skip
    cfg = load_config(DiffConfig, config, options, overrides)
    resolve_device(cfg.compute_device, "--compute-device")  # before the base is resolved
    region, out = cfg.region, cfg.out
    s = run_diff(Path(resolve_model(cfg.base)), cfg.tuned, out, region, cfg.nonzero_base,
                 cfg.compute_device)  # fmt: skip
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


@app.command("restore")
@_one_line_errors
def restore_cmd(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    base: Annotated[str | None, typer.Option(help="base model: path or 'smollm2'")] = None,
    tuned: Annotated[Path | None, typer.Option(help="fine-tuned model folder")] = None,
    k: Annotated[str | None, typer.Option(help="percentages, e.g. 1,3,5,10,20,40,60")] = None,
    scope: Annotated[str | None, typer.Option(help="global | layer | tensor")] = None,
    strategy: Annotated[str | None, typer.Option(help="top | bottom | random")] = None,
    region: Annotated[
        str | None, typer.Option(help="paper | attention | mlp | embedding | all | re:PATTERN")
    ] = None,  # fmt: skip
    layers: Annotated[
        str | None, typer.Option(help="layer blocks restored entirely, e.g. 0-3,4-7 (not k)")
    ] = None,  # fmt: skip
    seed: Annotated[int | None, typer.Option(help="seed of the random strategy")] = None,
    evaluate: Annotated[bool, typer.Option("--eval", help="evaluate every restored model")] = False,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    split: SplitOpt = None,
    limit_per_relation: LimitOpt = None,
    mastery: Annotated[Path | None, typer.Option(help="probe of the split: per-level acc")] = None,
    pick_on: Annotated[str | None, typer.Option(help="dev: choose k on dev, report test")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda: for --eval")] = None,
    compute_device: ComputeDeviceOpt = None,
    out: OutOpt = None,
) -> None:
    """Restore the most-changed (or least, or random) fine-tuned weights to their pre-SFT
    values, every k in one streamed pass; with --eval, evaluate each restored model."""
    from sftscope.config import RestoreConfig, RestoreEval, load_config

    options = {
        "base": base, "tuned": tuned, "k": k, "scope": scope, "strategy": strategy,
        "region": region, "layers": layers, "seed": seed, "device": device, "out": out,
        "compute_device": compute_device,
        "eval.data": data, "eval.data_dir": data_dir, "eval.split": split,
        "eval.limit_per_relation": limit_per_relation, "eval.mastery": mastery,
        "eval.pick_on": pick_on,
    }  # fmt: skip
    cfg = load_config(RestoreConfig, config, options, overrides)
    if evaluate and cfg.eval is None:
        cfg = cfg.model_copy(update={"eval": RestoreEval()})
    if cfg.eval is None:
        from sftscope.params.restore import run_restore

        s = run_restore(cfg)
        console.print(
            selection_table(s, f"restored weights ({cfg.region}, {cfg.scope}, {cfg.strategy})")
        )
        console.print(f"checkpoints, selection.json and restore_stats.tsv in {cfg.out}")
        return
    from sftscope.params.sweep import run_sweep

    s = run_sweep(cfg)
    title = f"restore sweep: {cfg.eval.split} accuracy % (mean of levels if known)"
    for item in sweep_tables(s, title, cfg.eval.split):
        console.print(item)
    console.print(f"restored models, evals and sweep.json in {cfg.out}")


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
    data: Annotated[str, typer.Option(help="geo | entityquestions")] = "geo",
    data_dir: Annotated[Path | None, typer.Option(help="dataset folder")] = None,
) -> None:
    """Items per relation and split, and how many subjects could not be recovered."""
    from sftscope.data.dataset import dataset_stats, resolve_dataset

    ds = resolve_dataset(data, data_dir)
    rows = dataset_stats(ds)
    table = Table(title=f"{ds.name} ({ds.root})")
    for col in ("relation", "domain", "train", "dev", "test", "no subject"):
        table.add_column(col, justify="left" if col in ("relation", "domain") else "right")
    totals = {"train": 0, "dev": 0, "test": 0, "no subject": 0}
    for r in rows:
        table.add_row(
            r.relation, r.domain, *(str(r.counts[s]) for s in ("train", "dev", "test")),
            str(r.no_subject),
        )  # fmt: skip
        for s in ("train", "dev", "test"):
            totals[s] += r.counts[s]
        totals["no subject"] += r.no_subject
    table.add_section()
    table.add_row("total", "", *(str(v) for v in totals.values()))
    console.print(table)


testbed_app = typer.Typer(help="The synthetic controlled-knowledge testbed.", no_args_is_help=True)
app.add_typer(testbed_app, name="testbed")


@testbed_app.command("build")
@_one_line_errors
def testbed_build_cmd(
    out: Annotated[Path, typer.Option(help="output folder (data/, model/, testbed.json)")],
    overrides: Overrides = None,
    preset: Annotated[str, typer.Option(help="tiny (tests, <1 min) | standard")] = "tiny",
    config: ConfigOpt = None,
) -> None:
    """Generate a synthetic world, write it as a dataset, and pretrain a tiny LLaMA on a corpus
    where each fact appears as often as its exposure says."""
    from sftscope.config import load_config
    from sftscope.testbed.pretrain import PRESETS, TestbedConfig, build

    if preset not in PRESETS:
        raise SftscopeError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    cfg = load_config(TestbedConfig, config, None, overrides, PRESETS[preset].model_dump())
    s = build(cfg, out)
    table = Table(title=f"greedy recall by exposure (seen phrasing), {s['parameters']:,} params")
    for col in ("exposure", "facts", "recall %"):
        table.add_column(col, justify="right")
    for bucket, v in s["recall_by_exposure"].items():
        table.add_row(bucket, str(v["facts"]), pct(v["recall"]))
    console.print(table)
    console.print(f"dataset in {out / 'data'}, model in {out / 'model'}, summary testbed.json "
                  f"({s['seconds']} s, train loss {s['train_loss']:.3f})")  # fmt: skip


@testbed_app.command("check")
@_one_line_errors
def testbed_check_cmd(
    data: Annotated[Path, typer.Option(help="the testbed's dataset folder (OUT/data)")],
    probe: Annotated[Path, typer.Option(help="a probe of the pretrained model (any method)")],
    after: Annotated[
        Path | None, typer.Option(help="the same probe of a fine-tuned model: transitions")
    ] = None,
) -> None:
    """Probe estimates against ground truth: R and levels per exposure bucket, Spearman ρ of R
    vs exposure, and (with --after) the knowledge transitions per exposure bucket."""
    from sftscope.testbed.truth import probe_vs_exposure, transitions_by_exposure

    s = probe_vs_exposure(probe, data)
    table = Table(title=f"{probe}: {s['method']} probe by exposure (times stated in the corpus)")
    for col in ("exposure", "facts", "mean R", *(f"L{k}" for k in range(5))):
        table.add_column(col, justify="right")
    for bucket, b in s["buckets"].items():
        table.add_row(bucket, str(b["facts"]), f"{b['mean_R']:.3f}", *map(str, b["levels"]))
    console.print(table)
    console.print(f"Spearman ρ(R, exposure) = {s['spearman']:.3f} over {s['facts']} facts")
    if after is not None:
        t = transitions_by_exposure(probe, after, data)
        console.print(transition_table(t, f"{after}: knowledge transitions", "exposure"))
        console.print(transition_line(after.name, t))


@app.command("report")
@_one_line_errors
def report_cmd(
    run: Annotated[Path, typer.Argument(help="a run folder written by sftscope run")],
    out: Annotated[Path | None, typer.Option(help="report folder (default RUN/report)")] = None,
) -> None:
    """report.md and a self-contained index.html (PNG figures beside it) from a finished run."""
    from sftscope.report.render import write_report

    path = write_report(run, out)
    console.print(f"report in {path / 'index.html'} (and report.md)")


DEMO_PRESETS = ("demo", "paper")


@app.command("demo")
@_one_line_errors
def demo_cmd(
    overrides: Overrides = None,
    preset: Annotated[
        str, typer.Option(help="demo (SmolLM2 + geography, ~20 min on a CPU) | paper (GPU)")
    ] = "demo",
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<preset>)")] = None,
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option(help="list what would run, run nothing")] = False,
) -> None:
    """A packaged grid end to end, then the report: `demo` is what `make demo` runs (the
    bundled SmolLM2 + geography); `paper` is the paper's full grid on EntityQuestions, for a GPU
    (sftscope demo --preset paper model=PATH data_dir=DIR)."""
    from importlib.resources import files

    from sftscope.config import GridConfig, load_config
    from sftscope.experiment import Grid
    from sftscope.io import read_yaml
    from sftscope.report.render import write_report

    if preset not in DEMO_PRESETS:
        raise SftscopeError(f"--preset {preset!r}: expected one of {', '.join(DEMO_PRESETS)}")
    presets = files("sftscope") / "presets"
    defaults = read_yaml(Path(str(presets / f"{preset}.yaml")), f"{preset} preset")
    if preset == "demo":  # the likelihood probe's thresholds, fitted on SmolLM2 (see README)
        defaults["probe"]["calibration"] = str(presets / "smollm2-geo-calibration.json")
    cfg = load_config(GridConfig, config, {"out": out}, overrides, defaults)
    grid = Grid(cfg)
    if dry_run:
        console.print(plan_table(grid))
        return
    started = time.perf_counter()
    grid.run()
    report = write_report(cfg.out)
    for item in grid_tables(cfg.out, cfg.params.scope, cfg.params.strategy, cfg.eval.split):
        console.print(item)
    minutes = (time.perf_counter() - started) / 60
    console.print(f"{preset} finished in {minutes:.1f} min; report: {report / 'index.html'}")


if __name__ == "__main__":
    app()
