"""The grid-level subcommands: ``run``, ``audit`` (a base / tuned pair), ``report``, ``demo``
(packaged presets) and the ``testbed`` group. Registered on the app in :mod:`sftscope.cli`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sftscope.cli.common import ConfigOpt, Overrides, _one_line_errors, console
from sftscope.cli.options import Options, with_config_options
from sftscope.cli.tables import grid_tables, pct, transition_line, transition_table
from sftscope.config import AuditConfig, GridConfig, load_config
from sftscope.errors import SftscopeError
from sftscope.layout import AUDIT
from sftscope.outputs import AuditSummary


def plan_table(grid) -> Table:
    """The plan as the executor gets it: waves, their jobs, each job's stages and status."""
    ex = grid.cfg.executor
    table = Table(title=f"plan for {grid.root} (executor {ex.kind})")
    for col in ("wave", "job", "stage", "status"):
        table.add_column(col)
    last_wave = last_job = None
    for wave, job, key, status in grid.plan_jobs():
        table.add_row(
            "" if wave == last_wave else wave, "" if job == last_job else job, key, status
        )
        last_wave, last_job = wave, job
    jobs = [j for j in grid.stage_jobs() if not j.done()]
    wave = grid.WAVES[2].split(" ", 1)[0]
    table.caption = f"{len(jobs)} of {len(grid.stage_jobs())} wave-{wave} jobs to run"
    return table


def run_and_show(plan, dry_run: bool) -> bool:
    """With ``dry_run`` the plan table, nothing run (False); else the plan run and its
    results' tables printed (True)."""
    if dry_run:
        console.print(plan_table(plan))
        return False
    plan.run()
    cfg = plan.cfg
    for item in grid_tables(plan.root, cfg.params.scope, cfg.params.strategy, cfg.eval.split):
        console.print(item)
    return True


# How the grid's jobs run: --executor (executor.kind), --workers, --slurm-partition, ...
EXECUTOR = {
    "exclude": ["executor.slurm.additional"],
    "flatten": ["executor"],
    "names": {"executor.kind": "executor"},
}


@_one_line_errors
@with_config_options(GridConfig, ["executor", "engine", "vllm"], **EXECUTOR)
def run_cmd(
    options: Options,
    config: Annotated[Path, typer.Argument(help="grid YAML (see configs/)")],
    overrides: Overrides = None,
    dry_run: Annotated[bool, typer.Option(help="list what would run, run nothing")] = False,
) -> None:
    """The experiment grid: probe, subsets, train, eval per level x size x seed (resumable)."""
    from sftscope.pipeline.grid import Grid

    cfg = load_config(GridConfig, config, options, overrides)
    if run_and_show(Grid(cfg), dry_run):
        console.print(f"manifest, subsets, models and evals in {cfg.out}")


AUDIT_NAMES = {
    "probe.seed": "probe-seed",
    "probe.batch_size": "probe-batch-size",
    "probe.max_new_tokens": "probe-max-new-tokens",
    "probe.prompt": "probe-prompt",
    "probe.chat_instruction": "probe-chat-instruction",
    "eval.seed": "eval-seed",
    "eval.batch_size": "eval-batch-size",
    "eval.max_new_tokens": "eval-max-new-tokens",
    "params.seed": "restore-seed",
    **EXECUTOR["names"],
}
AUDIT_HELP = {
    "eval.split": "split audited: its facts are probed with both models and evaluated "
    "(train | dev | test; default: test)",
    "kl.enabled": "the token-level KL of the tuned model from the base (default: --kl-enabled)",
}


@_one_line_errors
@with_config_options(
    AuditConfig,
    exclude=["probe.thresholds", *EXECUTOR["exclude"]],
    flatten=["probe", "eval", "params", "executor"],
    names=AUDIT_NAMES,
    help=AUDIT_HELP,
)
def audit_cmd(
    options: Options,
    overrides: Overrides = None,
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option(help="list what would run, run nothing")] = False,
) -> None:
    """Audit a fine-tuned model against its base (same architecture): the same probe of the
    --split facts with both (knowledge lost and gained per fact, by level and relation), CBQA
    accuracy of both (the tuned one with the base's few-shot prompt unless --tuned-prompt sft;
    --tuned-prompt/--base-prompt chat: an instruct model's chat template), token KL, where the
    weights changed, and a restore sweep with k picked on dev. Writes transitions.jsonl,
    audit.json and report/index.html in --out; resumable."""
    from sftscope.pipeline.audit import Audit

    cfg = load_config(AuditConfig, config, options, overrides)
    audit = Audit(cfg)
    if not run_and_show(audit, dry_run):
        return
    t = AuditSummary.read(audit.root / AUDIT).transitions
    title = f"knowledge transitions of the {cfg.eval.split} facts (same probe, base → tuned)"
    console.print(transition_table(t, title))
    console.print(
        transition_line("tuned", t) + f" ({t['n_lost']} lost, {t['n_gained']} gained "
        "in transitions.jsonl)"
    )
    console.print(f"audit.json, transitions.jsonl and report/index.html in {audit.root}")


testbed_app = typer.Typer(help="The synthetic controlled-knowledge testbed.", no_args_is_help=True)


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
    console.print(
        f"dataset in {out / 'data'}, model in {out / 'model'}, summary testbed.json "
        f"({s['seconds']} s, train loss {s['train_loss']:.3f})"
    )


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


@_one_line_errors
def report_cmd(
    run: Annotated[Path, typer.Argument(help="a run folder written by sftscope run")],
    out: Annotated[Path | None, typer.Option(help="report folder (default RUN/report)")] = None,
) -> None:
    """report.md and a self-contained index.html (PNG figures beside it) from a finished run."""
    from sftscope.report.render import write_report

    path = write_report(run, out)
    console.print(f"report in {path / 'index.html'} (and report.md)")


DEMO_PRESETS = ("demo", "study", "paper")


@_one_line_errors
@with_config_options(
    GridConfig,
    ["out", "executor", "engine", "vllm"],
    **EXECUTOR,
    help={"out": "run folder (default runs/<preset>)"},
)
def demo_cmd(
    options: Options,
    overrides: Overrides = None,
    preset: Annotated[
        str,
        typer.Option(
            help="demo (SmolLM2 + geography, ~20 min on a CPU) | study (the demo's recipe, "
            "sizes 60-960, levels 0-1: hours on a CPU) | paper (GPU)"
        ),
    ] = "demo",
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option(help="list what would run, run nothing")] = False,
) -> None:
    """A packaged grid end to end, then the report: `demo` is what `make demo` runs (the
    bundled SmolLM2 + geography); `study` is the demo's recipe on the paper's size range (hours
    on a CPU); `paper` is the paper's full grid on EntityQuestions, for a GPU
    (sftscope demo --preset paper model=PATH data_dir=DIR)."""
    from importlib.resources import files

    from sftscope.io import read_yaml
    from sftscope.pipeline.grid import Grid
    from sftscope.report.render import write_report

    if preset not in DEMO_PRESETS:
        raise SftscopeError(f"--preset {preset!r}: expected one of {', '.join(DEMO_PRESETS)}")
    presets = files("sftscope") / "presets"
    defaults = read_yaml(Path(str(presets / f"{preset}.yaml")), f"{preset} preset")
    calibration = (defaults.get("probe") or {}).get("calibration")
    if calibration:  # a preset names a calibration packaged beside it (the SmolLM2 fit)
        defaults["probe"]["calibration"] = str(presets / calibration)
    cfg = load_config(GridConfig, config, options, overrides, defaults)
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
