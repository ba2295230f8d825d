"""The command line: every command's help, the options generated from the configs
(sftscope.cli.options) and their precedence (defaults < YAML < options < key=value)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import sftscope.cli.commands
import sftscope.cli.composite
from sftscope.cli import app
from sftscope.config import (
    DiffConfig,
    EvalConfig,
    KLConfig,
    ProbeConfig,
    RestoreConfig,
    TrainConfig,
    load_config,
)
from sftscope.errors import SftscopeError

from helpers import EQ_FIXTURE

COMMANDS = [
    "eval",
    "probe",
    "train",
    "kl",
    "diff",
    "restore",
    "run",
    "demo",
    "report",
    "calibrate",
    "relevel",
    "data build-geo",
    "data stats",
    "testbed build",
    "testbed check",
]
# The options the README and the tests use: generation must keep every one of them.
KEPT = {
    "eval": "model data data-dir split relations limit-per-relation prompt mastery batch-size "
    "device out config",
    "probe": "model data data-dir split relations limit-per-relation method templates samples "
    "temperature calibration batch-size device out config",
    "train": "model train-file learning-rate batch-size epochs lora device out config",
    "kl": "base tuned data data-dir split limit-per-relation probe batch-size device out config",
    "diff": "base tuned out region compute-device config",
    "restore": "base tuned k scope strategy region layers seed eval data data-dir split "
    "limit-per-relation mastery pick-on device compute-device out config",
    "run": "dry-run executor workers",
    "demo": "preset out config dry-run executor workers",
}


def _command(path: str):
    cmd = typer.main.get_command(app)
    for name in path.split():
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("path", COMMANDS)
def test_help_lists_every_option_with_help(path: str) -> None:
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*path.split(), "--help"])
    assert res.exit_code == 0, res.output
    options = [p for p in _command(path).params if p.param_type_name == "option"]
    for p in options:
        assert (p.help or "").strip(), f"{path} {p.opts[0]}: no help"
        for flag in [*p.opts, *p.secondary_opts]:
            assert flag in res.output, f"{path}: {flag} not in --help"
    flags = {f for p in options for f in p.opts}
    assert {f"--{name}" for name in KEPT.get(path, "").split()} <= flags


@pytest.mark.parametrize(
    ("command", "cls", "excluded"),
    [
        ("eval", EvalConfig, set()),
        ("probe", ProbeConfig, {"thresholds"}),
        ("train", TrainConfig, set()),
        ("kl", KLConfig, set()),
        ("diff", DiffConfig, set()),
        ("restore", RestoreConfig, {"eval"}),
    ],
)
def test_every_config_field_is_an_option(command: str, cls, excluded: set[str]) -> None:
    opts = getattr(sftscope.cli.commands, f"{command}_cmd").config_options
    keys = {o.key for o in opts}
    top = {k.split(".")[0] for k in keys}  # a section (vllm.*) by its name
    assert top | excluded == set(cls.model_fields)
    if cls is RestoreConfig:  # the evaluation section, under its fields' own names (but one)
        from sftscope.config import RestoreEval

        assert {k for k in keys if k.startswith("eval.")} == {
            f"eval.{f}" for f in RestoreEval.model_fields
        }
        names = {o.key: o.name for o in opts}
        assert names["eval.data"] == "data" and names["eval.seed"] == "eval-seed"


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "--prompt", "dialogue", "--model", "m", "--out", "o"],
        ["restore", "--scope", "row", "--base", "b", "--tuned", "t", "--out", "o"],
        ["kl", "--tuned-prompt", "x", "--base", "b", "--tuned", "t", "--probe", "p", "--out", "o"],
        ["train", "--dtype", "int8", "--model", "m", "--train-file", "f", "--out", "o"],
    ],
)
def test_a_bad_choice_is_a_one_line_error(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert res.output.startswith("error: config field ") and len(res.output.splitlines()) == 1


def test_a_bad_executor_is_a_one_line_error(tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"model: m\nout: {tmp_path / 'run'}\n")
    res = CliRunner().invoke(app, ["run", str(grid), "--executor", "mpi"])
    assert res.exit_code == 2 and len(res.output.splitlines()) == 1
    assert "config field 'executor.kind'" in res.output and "'processes'" in res.output


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list:
    """The config a command builds; the command stops right there (exit code 2)."""
    seen: list = []

    def capture(*args, **kwargs):
        seen.append(load_config(*args, **kwargs))
        raise SftscopeError("stopped")

    monkeypatch.setattr(sftscope.cli.commands, "load_config", capture)
    monkeypatch.setattr(sftscope.cli.composite, "load_config", capture)
    return seen


def _config(loaded: list, args: list[str]):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "error: stopped" in res.output, res.output
    return loaded.pop()


@pytest.mark.parametrize(
    ("command", "options", "overrides"),
    [
        (
            "eval",
            [
                "--model",
                "m",
                "--out",
                "o",
                "--batch-size",
                "auto",
                "--fold-accents",
                "--relations",
                "P17,P36",
                "--split",
                "dev",
            ],
            [
                "model=m",
                "out=o",
                "batch_size=auto",
                "fold_accents=true",
                "relations=P17,P36",
                "split=dev",
            ],
        ),
        (
            "probe",
            [
                "--model",
                "m",
                "--out",
                "o",
                "--method",
                "likelihood",
                "--no-early-exit",
                "--temperature",
                "0.5",
                "--batch-size",
                "8",
            ],
            [
                "model=m",
                "out=o",
                "method=likelihood",
                "early_exit=false",
                "temperature=0.5",
                "batch_size=8",
            ],
        ),
        (
            "train",
            [
                "--model",
                "m",
                "--train-file",
                "f.jsonl",
                "--out",
                "o",
                "--learning-rate",
                "1e-4",
                "--lora",
                "--lora-r",
                "4",
                "--dtype",
                "bfloat16",
            ],
            [
                "model=m",
                "train_file=f.jsonl",
                "out=o",
                "learning_rate=1e-4",
                "lora=true",
                "lora_r=4",
                "dtype=bfloat16",
            ],
        ),
        (
            "kl",
            [
                "--base",
                "b",
                "--tuned",
                "t",
                "--probe",
                "p",
                "--out",
                "o.json",
                "--batch-size",
                "auto",
                "--no-full",
                "--tuned-prompt",
                "template",
                "--top-k",
                "5",
            ],
            [
                "base=b",
                "tuned=t",
                "probe=p",
                "out=o.json",
                "batch_size=auto",
                "full=false",
                "tuned_prompt=template",
                "top_k=5",
            ],
        ),
        (
            "diff",
            ["--base", "b", "--tuned", "t", "--out", "o", "--nonzero-base", "--region", "mlp"],
            ["base=b", "tuned=t", "out=o", "nonzero_base=true", "region=mlp"],
        ),
        (
            "restore",
            [
                "--base",
                "b",
                "--tuned",
                "t",
                "--out",
                "o",
                "--k",
                "1,5",
                "--layers",
                "0-1",
                "--data",
                "geo",
                "--split",
                "dev",
                "--eval-seed",
                "3",
                "--seed",
                "2",
                "--no-keep-models",
            ],
            [
                "base=b",
                "tuned=t",
                "out=o",
                "k=1,5",
                "layers=0-1",
                "eval.data=geo",
                "eval.split=dev",
                "eval.seed=3",
                "seed=2",
                "eval.keep_models=false",
            ],
        ),
    ],
)
def test_an_option_and_its_override_give_the_same_config(
    loaded: list, command: str, options: list[str], overrides: list[str]
) -> None:
    by_option = _config(loaded, [command, *options])
    assert by_option == _config(loaded, [command, *overrides])
    assert by_option.model_fields_set  # the options did arrive


@pytest.mark.parametrize("command", ["run", "demo"])
def test_executor_options_of_run_and_demo(loaded: list, tmp_path: Path, command: str) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"model: m\nout: {tmp_path / 'run'}\nexecutor: {{kind: slurm}}\n")
    head = ["run", str(grid)] if command == "run" else ["demo", "--config", str(grid)]
    cfg = _config(
        loaded,
        [
            *head,
            "--executor",
            "processes",
            "--workers",
            "3",
            "--slurm-partition",
            "gpu",
            "--ray-num-gpus",
            "1",
        ],
    )
    same = _config(
        loaded,
        [
            *head,
            "executor.kind=processes",
            "executor.workers=3",
            "executor.slurm.partition=gpu",
            "executor.ray.num_gpus=1",
        ],
    )
    assert cfg == same
    ex = cfg.executor
    assert (ex.kind, ex.workers, ex.slurm.partition, ex.ray.num_gpus) == ("processes", 3, "gpu", 1)
    assert _config(loaded, head).executor.kind == "slurm"  # nothing given: the YAML's


def test_yaml_below_options_below_overrides(loaded: list, tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("model: m\nout: o\nlimit_per_relation: 5\nsplit: dev\nbatch_size: 8\n")
    cfg = _config(loaded, ["eval", "--config", str(path), "--limit-per-relation", "2"])
    assert (cfg.limit_per_relation, cfg.split, cfg.batch_size) == (2, "dev", 8)
    cfg = _config(
        loaded, ["eval", "--config", str(path), "--limit-per-relation", "2", "limit_per_relation=3"]
    )
    assert cfg.limit_per_relation == 3
    path = tmp_path / "restore.yaml"  # a section's YAML value below its option
    path.write_text("base: b\ntuned: t\nout: o\neval: {split: dev, n_shots: 2}\n")
    cfg = _config(loaded, ["restore", "--config", str(path), "--split", "test"])
    assert (cfg.eval.split, cfg.eval.n_shots) == ("test", 2)


def test_kl_batch_size_auto_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sftscope.data.dataset import load_items, open_dataset
    from sftscope.models.batching import CPU_BATCH_SIZE
    from sftscope.models.loading import load_model
    from sftscope.token_kl import kl_batch_size

    model, _ = load_model(str(tiny_model_dir), "cpu")
    assert kl_batch_size("auto", model, [[1, 2, 3]], 2) == CPU_BATCH_SIZE
    assert kl_batch_size(5, model, [[1, 2, 3]], 2) == 5
    items = load_items(open_dataset(EQ_FIXTURE), ["test"], ["P17"], 3)
    probe = tmp_path / "probe"
    probe.mkdir()
    rows = [
        {"id": it.id, "relation": it.relation, "level": 4, "per_template": [1.0] + [0.0] * 20}
        for it in items
    ]
    (probe / "mastery.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "kl" / "cell.json"
    args = [
        "kl",
        "--base",
        str(tiny_model_dir),
        "--tuned",
        str(tiny_model_dir),
        "--data",
        "entityquestions",
        "--data-dir",
        str(EQ_FIXTURE),
        "--relations",
        "P17",
        "--limit-per-relation",
        "3",
        "--probe",
        str(probe),
        "--device",
        "cpu",
        "--batch-size",
        "auto",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())
    assert summary["full"]["overall"]["kl_mean"] == 0.0  # the same model on both sides
    assert [b["n"] for b in summary["full"]["per_level"]] == [0, 0, 0, 0, 3]
