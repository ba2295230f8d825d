"""`sftscope eval` end to end on a tiny model, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.evaluate import level_breakdown, summarize

from helpers import EQ_FIXTURE

runner = CliRunner()


def _eval(tiny_model_dir: Path, out: Path, *extra: str):
    args = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        "entityquestions",
        "--data-dir",
        str(EQ_FIXTURE),
        "--out",
        str(out),
        *extra,
    ]
    return runner.invoke(app, args)


def test_eval_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    res = _eval(
        tiny_model_dir, out, "--relations", "P17,P26", "--limit-per-relation", "6", "batch_size=4"
    )
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 12
    assert {"id", "relation", "domain", "prompt", "prediction", "containment", "exact"} <= set(
        records[0]
    )
    assert records[0]["prompt"].count("Question:") == 5  # 4 exemplars + the question
    assert records[0]["prompt"].endswith(
        "Question: Which country is Darreh Sib located in?\nAnswer:"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_relation"]) == {"P17", "P26"}
    assert summary["in_domain"]["n"] == 6 and summary["ood"]["n"] == 6
    assert "containment" in res.output


def test_eval_sft_prompt_and_config_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        f"model: {tiny_model_dir}\ndata: entityquestions\ndata_dir: {EQ_FIXTURE}\n"
        f"relations: [P36]\nlimit_per_relation: 3\nout: {tmp_path / 'o'}\n"
    )
    res = runner.invoke(app, ["eval", "--config", str(cfg), "--prompt", "sft"])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "o" / "records.jsonl").read_text().splitlines()[0])
    assert rec["prompt"] == "<|question|> What is the capital of Marin County? <|answer|>"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--relations", "P999"], "unknown relation 'P999'"),
        (["--split", "validation"], "config field 'split'"),
        (["bogus_field=1"], "config field 'bogus_field'"),
        (["--data-dir", "/nonexistent/eq"], "data directory /nonexistent/eq does not exist"),
    ],
)
def test_eval_bad_input_one_line_exit_2(
    tiny_model_dir: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "never"
    res = _eval(tiny_model_dir, out, *extra)
    assert res.exit_code == 2
    assert message in res.output
    assert res.output.strip().count("\n") == 0
    assert not out.exists()


def test_eval_missing_model_path(tmp_path: Path) -> None:
    res = _eval(tmp_path / "no-model", tmp_path / "never", "--limit-per-relation", "1")
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "never").exists()


def test_summarize_macro_and_micro() -> None:
    rows = [
        {"relation": "A", "domain": "in-domain", "containment": True, "exact": True},
        {"relation": "A", "domain": "in-domain", "containment": True, "exact": False},
        {"relation": "A", "domain": "in-domain", "containment": False, "exact": False},
        {"relation": "B", "domain": "out-of-domain", "containment": False, "exact": False},
    ]
    s = summarize(rows)
    assert s["overall"] == {"n": 4, "containment": 0.5, "exact": 0.25}
    assert s["in_domain"]["containment"] == pytest.approx(2 / 3)
    assert s["macro_relations"]["containment"] == pytest.approx((2 / 3 + 0) / 2)


def test_level_breakdown_is_the_unweighted_mean_over_filled_levels() -> None:
    rows = [
        {"domain": "in-domain", "level": 0, "containment": False, "exact": False},
        {"domain": "in-domain", "level": 0, "containment": True, "exact": False},
        {"domain": "in-domain", "level": 4, "containment": True, "exact": True},
        {"domain": "out-of-domain", "level": 2, "containment": True, "exact": True},
        {"domain": "out-of-domain", "level": None, "containment": False, "exact": False},
    ]
    by = level_breakdown(rows)
    ind = by["in_domain"]
    assert [v["n"] for v in ind["per_level"]] == [2, 0, 0, 0, 1]
    assert ind["mean_of_levels"]["containment"] == pytest.approx((0.5 + 1.0) / 2)
    assert ind["mean_of_levels"]["exact"] == pytest.approx(0.5)
    assert ind["missing_levels"] == [1, 2, 3]
    assert by["ood"]["per_level"][2]["n"] == 1 and by["overall"]["per_level"][0]["n"] == 2


def test_eval_with_mastery_reports_levels(tiny_model_dir: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    rows = [{"id": f"P17/test/{i}", "level": i % 5} for i in range(5)]
    (probe / "mastery.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "e"
    res = _eval(
        tiny_model_dir,
        out,
        "--relations",
        "P17",
        "--limit-per-relation",
        "6",
        "--mastery",
        str(probe),
    )
    assert res.exit_code == 0, res.output
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert [r["level"] for r in records] == [0, 1, 2, 3, 4, None]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unprobed"] == 1
    assert [v["n"] for v in summary["by_level"]["in_domain"]["per_level"]] == [1] * 5
    assert "per mastery level" in " ".join(res.output.split())
    bad = _eval(tiny_model_dir, tmp_path / "x", "--mastery", str(tmp_path / "nope"))
    assert bad.exit_code == 2 and "mastery file not found" in bad.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_device_cuda_without_a_gpu_is_a_one_line_error(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    res = _eval(tiny_model_dir, tmp_path / "e", "--device", "cuda", "--batch-size", "auto")
    assert res.exit_code == 2
    assert res.output == "error: --device cuda: no CUDA device is available\n"
    assert not (tmp_path / "e").exists()


def test_batch_size_auto_on_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    res = _eval(
        tiny_model_dir,
        tmp_path / "e",
        "--relations",
        "P17",
        "--limit-per-relation",
        "3",
        "--batch-size",
        "auto",
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    bad = _eval(tiny_model_dir, tmp_path / "f", "--batch-size", "many")
    assert bad.exit_code == 2
    assert bad.output.startswith("error: config field 'batch_size': Value error, 'many' is not")
