"""``sftscope audit``: a base / tuned pair end to end on a tiny model (EntityQuestions layout
and a generic QA file), transitions.jsonl against the two probes, resume, dry run, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.config import AuditConfig, TrainConfig, load_config
from sftscope.pipeline import runners, worker
from sftscope.pipeline.audit import Audit

from helpers import EQ_FIXTURE, fixture_questions, generic_rows, perturbed_copy, write_jsonl

runner = CliRunner()
TRAINED = ("P17", "P36")  # the tuned model's SFT data: these relations' first 4 test facts
# Thresholds that spread the tiny models' likelihoods (R-hat) over the five levels.
THRESHOLDS = [1.0e-30, 1.0e-19, 1.0e-17, 1.0e-9]
FAST = [
    "--device",
    "cpu",
    "--probe-batch-size",
    "16",
    "--eval-batch-size",
    "16",
    "--eval-max-new-tokens",
    "4",
]


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base fine-tuned (paper format, high learning rate) on 8 facts it is then audited
    on: their likelihood rises, the other relations' falls, so facts are gained and lost."""
    from sftscope.train import run_train

    root = tmp_path_factory.mktemp("sft")
    rows = [
        {"question": it["question"], "answer": it["answers"][0]}
        for rel in TRAINED
        for it in json.loads((EQ_FIXTURE / "test" / f"{rel}.test.json").read_text())[:4]
    ]
    write_jsonl(root / "sft.jsonl", rows)
    run_train(
        TrainConfig(
            model=str(tiny_model_dir),
            train_file=root / "sft.jsonl",
            out=root / "tuned",
            learning_rate=1e-2,
            epochs=8,
            batch_size=4,
            device="cpu",
        )
    )
    return root / "tuned"


@pytest.fixture(scope="module")
def noisy(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return perturbed_copy(tiny_model_dir, tmp_path_factory.mktemp("noisy") / "tuned")


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _markers(root: Path) -> dict[str, str]:
    paths = [*root.rglob("stage.json"), *root.glob("kl/*.stage.json")]
    return {str(p.relative_to(root)): p.read_text() for p in paths}


def check_transitions(out: Path) -> list[dict]:
    """transitions.jsonl is exactly the facts the two probes say were lost or gained, with
    both answers from the two evaluations; audit.json's matrix is the probes' too."""
    before = {r["id"]: r for r in _read(out / "probe" / "base" / "mastery.jsonl")}
    after = {r["id"]: r for r in _read(out / "probe" / "tuned" / "mastery.jsonl")}
    items = {r["id"]: r for r in _read(out / "data" / "items.jsonl")}
    answers = {
        m: {r["id"]: r["containment"] for r in _read(out / "eval" / m / "records.jsonl")}
        for m in ("base", "tuned")
    }
    expected, matrix = [], [[0] * 5 for _ in range(5)]
    for i, b in before.items():
        a = after[i]
        matrix[b["level"]][a["level"]] += 1
        change = (
            "lost"
            if b["level"] >= 3 and a["level"] <= 1
            else "gained"
            if b["level"] <= 1 and a["level"] >= 3
            else None
        )
        if change:
            expected.append(
                {
                    "id": i,
                    "relation": b["relation"],
                    "domain": items[i]["domain"],
                    "question": items[i]["question"],
                    "answers": items[i]["answers"],
                    "change": change,
                    "base_level": b["level"],
                    "base_R": b["R"],
                    "tuned_level": a["level"],
                    "tuned_R": a["R"],
                    "base_correct": answers["base"][i],
                    "tuned_correct": answers["tuned"][i],
                }
            )
    rows = _read(out / "transitions.jsonl")
    assert rows == expected
    t = json.loads((out / "audit.json").read_text())["transitions"]
    assert t["matrix"] == matrix and t["facts"] == len(before)
    assert t["n_lost"] == sum(r["change"] == "lost" for r in rows)
    assert t["n_gained"] == sum(r["change"] == "gained" for r in rows)
    assert sum(c["lost"] + c["gained"] for c in t["by_relation"].values()) == len(rows)
    assert [c["facts"] for c in t["by_level"]] == [sum(r) for r in matrix]
    return rows


def test_audit_end_to_end_resumes_and_replans(
    tiny_model_dir: Path, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "audit"
    cfg = {
        "base": str(tiny_model_dir),
        "tuned": str(trained),
        "data": "entityquestions",
        "data_dir": str(EQ_FIXTURE),
        "relations": ["P17", "P36", "P26", "P40"],
        "probe": {"method": "likelihood", "templates": 3, "thresholds": THRESHOLDS},
        "eval": {"limit_per_relation": 4, "tuned_prompt": "sft"},
        "params": {"k": [50]},
        "out": str(out),
    }
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["audit", "--config", str(path), *FAST])
    assert res.exit_code == 0, res.output
    assert "knowledge transitions" in res.output and "transitions.jsonl" in res.output

    rows = check_transitions(out)
    changes = {r["change"] for r in rows}
    assert changes == {"lost", "gained"}, rows  # the SFT facts gained, other relations lost
    assert all(r["relation"] in TRAINED for r in rows if r["change"] == "gained")
    s = json.loads((out / "audit.json").read_text())
    assert s["facts"] == 16 and s["probe"]["method"] == "likelihood" and s["notes"] == []
    assert {m: a["prompt"] for m, a in s["accuracy"].items()} == {"base": "fewshot", "tuned": "sft"}
    assert len(s["accuracy"]["tuned"]["in_domain"]["per_level"]) == 5
    assert s["kl"]["paper"]["prompts"]["tuned"] == "sft" and s["kl"]["full"]["overall"]["n"] == 16
    diff = s["params"]["diff"]
    assert [r["k"] for r in diff["concentration"]] == [1, 3, 5, 10, 20, 40, 60]
    assert (
        set(diff["mean_change_per_layer"]) >= {"0", "1"}
        and "q_proj" in diff["mean_change_per_module"]
    )
    sweep = s["params"]["restore"]
    assert [r["label"] for r in sweep["rows"]] == ["tuned", "global-top-50"]
    assert sweep["pick"]["k"] in (0, 50) and "gain_in_domain" in sweep["pick"]
    # the sweep's unrestored model is the audit's own evaluation (same prompt: sft), reused
    restore_eval = out / "params" / "tuned" / "restore" / "eval"
    assert (restore_eval / "tuned" / "records.jsonl").read_text() == (
        out / "eval" / "tuned" / "records.jsonl"
    ).read_text()
    assert (restore_eval / "tuned.dev" / "summary.json").exists()  # k picked on dev
    html = (out / "report" / "index.html").read_text()
    for fig in (
        "transitions",
        "accuracy_by_level",
        "restore_tuned",
        "change_per_layer",
        "change_per_module",
    ):
        assert (out / "report" / "figures" / f"{fig}.png").exists()
        assert f"figures/{fig}.png" in html
    assert "Knowledge transitions" in html and "Picked on dev" in html
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["stages"]) == {
        "probe/base",
        "probe/tuned",
        "eval/base",
        "eval/tuned",
        "kl/tuned",
        "params/tuned/diff",
        "params/tuned/restore",
    }
    assert all(e["status"] == "done" for e in manifest["stages"].values())

    # a rerun does no work: every runner fails if called, the files stay as they were
    def fail(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(runners, "run_stage", fail)
    monkeypatch.setattr(worker, "run_stage", fail)
    before = _markers(out), (out / "transitions.jsonl").read_text()
    res = runner.invoke(app, ["audit", "--config", str(path), *FAST])
    assert res.exit_code == 0, res.output
    assert (_markers(out), (out / "transitions.jsonl").read_text()) == before
    # a changed eval setting redoes the evaluations and the sweep, not the probes nor the diff
    plan = dict(Audit(load_config(AuditConfig, path, None, ["eval.max_new_tokens=5"])).plan())
    assert plan["probe/base"] == plan["probe/tuned"] == plan["params/tuned/diff"] == "done"
    assert plan["kl/tuned"] == "done"
    assert (
        plan["eval/base"]
        == plan["eval/tuned"]
        == plan["params/tuned/restore"]
        == ("redo (inputs changed)")
    )


def test_generic_data_question_probe_full_kl_and_dry_run(
    tiny_model_dir: Path, noisy: Path, tmp_path: Path
) -> None:
    """A QA file without mapping templates: the question probe, the full-vocabulary KL only
    (said in a note), the few-shot prompt for both models; --dry-run plans and writes nothing."""
    data = write_jsonl(tmp_path / "qa.jsonl", generic_rows())
    out = tmp_path / "audit"
    args = [
        "audit",
        "--base",
        str(tiny_model_dir),
        "--tuned",
        str(noisy),
        "--data",
        "generic",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--limit-per-relation",
        "3",
        "--templates",
        "2",
        "--samples",
        "2",
        "--slick-shots",
        "2",
        "--probe-max-new-tokens",
        "3",
        "--no-restore",
        *FAST,
    ]
    res = runner.invoke(app, [*args, "--dry-run"])
    assert res.exit_code == 0, res.output
    for key in (
        "probe/base",
        "probe/tuned",
        "eval/tuned",
        "eval/base",
        "kl/tuned",
        "params/tuned/diff",
    ):
        assert key in res.output
    assert "restore" not in res.output and not out.exists()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    check_transitions(out)
    s = json.loads((out / "audit.json").read_text())
    assert s["probe"]["method"] == "question" and s["facts"] == 6
    assert s["prompts"] == {"base": "fewshot", "tuned": "fewshot", "restore sweep": None}
    assert "paper" not in s["kl"] and s["kl"]["full"]["overall"]["n"] == 6
    assert any("only the full-vocabulary KL" in n for n in s["notes"])
    assert "restore" not in s["params"] and (out / "report" / "index.html").exists()


@pytest.fixture(scope="module")
def other_architecture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sftscope.models.tiny import save_tiny

    return save_tiny(fixture_questions(), tmp_path_factory.mktemp("wide") / "m", hidden_size=32)


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        (None, ["--tuned", "{tmp}/nope"], r"--tuned .*nope: no such model folder"),
        (None, ["--tuned", "{other}"], r"tensor \S+: shape \[\d+(, \d+)*\] in \S+ but \["),
        ([{"question": "Q?"}], [], r"row 1: no 'answers'"),
        (
            [{"question": "Q?", "answers": "[Paris, Rome]"}],
            [],
            r"row 1: 'answers' '\[Paris, Rome\]' is neither a JSON nor a Python list",
        ),
        (
            [{"question": "Q?", "answers": ["a"], "split": "test"}],
            ["--relations", "P17"],
            r"unknown relation 'P17' in generic \(known: qa\)",
        ),
        (
            [{"question": "Q?", "answers": ["a"], "subject": "Q", "split": "test"}],
            [
                "--method",
                "sampling",
                "--templates-file",
                "{tmp}/templates.yaml",
                "--templates",
                "1",
                "--no-restore",
            ],
            r"no mapping templates for relation qa of generic",
        ),
        ([{"question": "Q?", "answers": ["a"], "split": "test"}], [], r"no dev items to pick k on"),
        (
            [{"question": "Q?", "answers": ["a"], "split": "test"}],
            ["--k", "0"],
            r"config field 'params.k'",
        ),
    ],
    ids=[
        "missing-tuned",
        "mismatched-architecture",
        "missing-column",
        "answers-not-a-list",
        "unknown-relation",
        "no-templates-for-relation",
        "no-dev-split",
        "bad-k",
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tiny_model_dir: Path,
    noisy: Path,
    other_architecture: Path,
    tmp_path: Path,
    rows,
    extra: list[str],
    message: str,
) -> None:
    data = write_jsonl(tmp_path / "qa.jsonl", rows or generic_rows())
    (tmp_path / "templates.yaml").write_text(
        yaml.safe_dump(
            {
                "generic": {
                    "where": {"question": "Where is {subject}?", "mapping": ["{subject} is in"]}
                }
            }
        )
    )
    extra = [x.format(tmp=tmp_path, other=other_architecture) for x in extra]
    out = tmp_path / "never"
    res = runner.invoke(
        app,
        [
            "audit",
            "--base",
            str(tiny_model_dir),
            "--tuned",
            str(noisy),
            "--data",
            "generic",
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--device",
            "cpu",
            *extra,
        ],
    )
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert re.search(message, lines[0]), lines[0]
    if rows and "config field" not in message and "templates" not in message:
        assert str(data) in lines[0]  # names the file
    assert not out.exists()


def test_help_names_the_prompt_choice_and_the_sweep() -> None:
    res = runner.invoke(app, ["audit", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for flag in (
        "--base",
        "--tuned",
        "--tuned-prompt",
        "--k",
        "--pick-on",
        "--method",
        "--executor",
        "--dry-run",
        "--config",
        "--kl-paper",
    ):
        assert flag in res.output
    assert "few-shot prompt unless --tuned-prompt sft" in " ".join(res.output.split())
