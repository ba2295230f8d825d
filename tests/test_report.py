"""The report on a tiny-model grid: every section, every figure file, markdown = HTML content."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.report.collect import spread

from helpers import EQ_FIXTURE, grid_yaml


def test_spread_over_seeds() -> None:
    assert spread([0.2, 0.4, None]) == {
        "mean": 0.30000000000000004,
        "sd": 0.1414213562373095,
        "n": 2,
    }
    assert spread([0.5]) == {"mean": 0.5, "sd": None, "n": 1}
    assert spread([None]) == {"mean": None, "sd": None, "n": 0}


def test_report_of_a_grid_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    params = {"cells": ["1-4-0"], "k": [10, 50], "layers": ["0-0", "1-1"], "compute_device": "auto"}
    path = grid_yaml(
        tmp_path,
        tiny_model_dir,
        sizes=[4, 8],
        levels=[1],
        seeds=[0, 1],
        keep_models=False,
        params=params,
        transitions=True,
        note="a tiny model learns fast",
    )
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    page = (run / "report" / "index.html").read_text()
    md = (run / "report" / "report.md").read_text()
    for section in (
        "Findings",
        "Data and mastery levels",
        "Accuracy by training level and test level",
        "Token level",
        "Answer transitions",
        "Knowledge transitions",
        "Parameter level: 1-4-0",
    ):
        assert f"<h2>{section}" in page and f"## {section}" in md
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {Path(i).name for i in images} >= {
        "accuracy_vs_size.png",
        "restore_1-4-0.png",
        "layers_1-4-0.png",
    }
    for head in (">module</th>", ">layer</th>", ">top 10 %</th>", ">Δ ID</th>"):
        assert head in page  # Tables 9-10 (where the top-k % sit) and Table 11 (layer blocks)
    assert "| layers-0-0 |" in md and "| down_proj |" in md
    # the header names the recipe, each departure from the paper's, and the run's note
    assert (
        "SFT: full fine-tuning, learning rate 0.001, batch 4, 1 epoch, adamw_torch, cosine "
        "schedule. Departs from the paper's recipe (docs/method.md §3.2): learning rate 0.001 "
        "(paper 1e-05); batch size 4 (paper 8)."
    ) in md
    assert "Note: a tiny model learns fast" in md and "Note: a tiny model learns fast" in page
    assert "Dotted: the base model." in md  # the base model's level on the accuracy figures
    # the unrestored model's score is the cell's own evaluation, copied, not re-run
    cell_eval = (run / "eval" / "1-4-0" / "records.jsonl").read_text()
    for folder in ("restore", "blocks"):
        assert (
            run / "params" / "1-4-0" / folder / "eval" / "tuned" / "records.jsonl"
        ).read_text() == cell_eval
    for img in images:
        f = run / "report" / img
        assert f.exists() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in page.replace("http-equiv", "")  # opens from disk, nothing fetched
    assert re.search(r"\| 1 \| 4 \| 2 \| .* ± ", md)  # mean ± sd over the 2 seeds
    assert not list(run.glob(".report.partial"))
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "nowhere" in res.output


def _g(level: str, size: str, mean: float, sd: float | None, n: int) -> dict:
    return {"level": level, "size": size, "in_domain_mean": {"mean": mean, "sd": sd, "n": n}}


def test_findings_verdicts_follow_the_intervals() -> None:
    from sftscope.report.findings import (
        heavy_restoration_collapses,
        level_moves_accuracy,
        lowest_layers_critical,
        peak_at_small_size,
        restoration_helps,
        top1_holds_most,
    )

    # peak at 240, clearly above 1920 (diff 0.10; Welch df 4: 2.776*sqrt(2*0.01^2/3) = 0.023)
    peak = [
        _g("2", "60", 0.50, 0.01, 3),
        _g("2", "240", 0.60, 0.01, 3),
        _g("2", "1920", 0.50, 0.01, 3),
    ]
    assert peak_at_small_size(peak)["verdict"] == "reproduced"
    rising = [_g("2", "60", 0.40, 0.01, 3), _g("2", "240", 0.60, 0.01, 3)]
    assert peak_at_small_size(rising)["verdict"] == "not reproduced"
    one_seed = [_g("2", "60", 0.60, None, 1), _g("2", "240", 0.40, None, 1)]
    assert peak_at_small_size(one_seed)["verdict"] == "inconclusive"
    levels = [_g("0", "60", 0.30, 0.02, 3), _g("4", "60", 0.50, 0.02, 3)]
    f = level_moves_accuracy(levels)
    assert f["verdict"] == "reproduced" and "+20.0 ± 4.5 points" in f["evidence"][0]
    assert level_moves_accuracy(levels[:1])["verdict"] == "inconclusive"
    close = [_g("0", "60", 0.30, 0.02, 3), _g("4", "60", 0.33, 0.02, 3)]  # 3 ± 4.5 points
    assert level_moves_accuracy(close)["verdict"] == "inconclusive"
    params = {
        "c": {
            "concentration": [{"k": 1, "share": 0.7}],
            "sweep": {
                "rows": [
                    {"label": "tuned", "k": 0, "in_domain": 0.50},
                    {"label": "global-top-5", "k": 5, "in_domain": 0.53},
                    {"label": "global-top-60", "k": 60, "in_domain": 0.20},
                    {"label": "layers-0-3", "k": 0, "in_domain": 0.9},
                ]
            },
        }
    }
    assert top1_holds_most(params)["verdict"] == "reproduced"
    # exact zeros in the base hold most of Σr: the non-zero-base ranking decides
    zeros = {
        "c": {
            "concentration": [{"k": 1, "share": 0.999}],
            "concentration_nonzero": [{"k": 1, "share": 0.40}],
            "zero_base": {"weights": 3, "share_of_r": 0.99},
        }
    }
    f = top1_holds_most(zeros)
    assert f["verdict"] == "not reproduced" and "non-zero base value" in f["evidence"][0]
    assert restoration_helps(params)["verdict"] == "reproduced"
    assert heavy_restoration_collapses(params)["verdict"] == "reproduced"
    params["c"]["sweep"]["rows"][1]["in_domain"] = 0.49
    assert restoration_helps(params)["verdict"] == "not reproduced"
    assert lowest_layers_critical(params)["verdict"] == "inconclusive"  # no layer blocks
    blocks = [
        {"label": "tuned", "k": 0, "in_domain": 0.50},
        {"label": "layers-0-3", "k": None, "in_domain": 0.10},
        {"label": "layers-4-7", "k": None, "in_domain": 0.49},
    ]
    params["c"]["blocks"] = {"rows": blocks}
    f = lowest_layers_critical(params)
    assert f["verdict"] == "reproduced" and "layers 0-3 -40.0 points" in f["evidence"][0]
    blocks[2]["in_domain"] = 0.05  # another block hurts more
    assert lowest_layers_critical(params)["verdict"] == "not reproduced"
    blocks[2]["in_domain"], blocks[1]["in_domain"] = 0.50, 0.48  # lowest worst, but small
    assert lowest_layers_critical(params)["verdict"] == "inconclusive"


def test_each_verdict_says_what_it_rests_on() -> None:
    """Seeds, items and the smallest detectable difference beside each finding (issue 20)."""
    from sftscope.report.findings import basis_text, binomial_mde, findings

    groups = [
        _g("2", "60", 0.50, 0.02, 3),
        _g("2", "240", 0.60, 0.01, 3),
        _g("4", "60", 0.55, None, 1),
    ]
    params = {
        "c": {
            "concentration": [{"k": 1, "share": 0.7}],
            "sweep": {
                "rows": [
                    {"label": "tuned", "k": 0, "in_domain": 0.5},
                    {"label": "global-top-5", "k": 5, "in_domain": 0.52},
                ]
            },
        }
    }
    data = {"groups": groups, "params": params, "base": {"in_domain_n": 100}}
    peak, level, top1, helps, *_ = findings(data)
    # Welch df 2.94 -> the df-2 quantile 4.303: 4.303 * sqrt(0.02^2/3 + 0.01^2/3) = 0.0556
    assert peak["basis"]["seeds"] == 3 and peak["basis"]["items"] == 100
    assert peak["basis"]["detectable"] == pytest.approx(0.0556, abs=5e-4)
    assert basis_text(peak["basis"]).startswith("3 seeds × 100 test items; detectable ≥ 5.6 points")
    assert level["basis"]["seeds"] == 1 and level["basis"]["detectable"] is None  # one-seed side
    assert "no interval" in basis_text(level["basis"])
    assert top1["basis"]["detectable"] is None and "exact" in basis_text(top1["basis"])
    # one model per k: 1.96 * sqrt(2 * 0.25 / 100) = 0.139
    assert helps["basis"]["detectable"] == pytest.approx(0.1386, abs=1e-3)
    assert binomial_mde(0.5, 100) == pytest.approx(0.1386, abs=1e-3)
    assert binomial_mde(None, 100) is None and binomial_mde(0.5, 0) is None
    empty = findings({"groups": [], "params": {}, "base": None})
    assert all(basis_text(f["basis"]) for f in empty)


def test_demo_runs_the_grid_then_the_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`sftscope demo` = the preset grid + the report; a config file replaces the preset's
    sections (here: a tiny model instead of SmolLM2)."""
    path = grid_yaml(
        tmp_path, tiny_model_dir, sizes=[4], levels=[1], kl={"full": False}, params={"cells": []}
    )  # the preset analyses 1-60-0, not in this grid
    res = CliRunner().invoke(app, ["demo", "--config", str(path), "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert "demo finished in" in res.output and "report:" in res.output
    assert (tmp_path / "d" / "report" / "index.html").exists()  # paper KL only: no full KL
    assert (tmp_path / "d" / "manifest.json").exists() and not (tmp_path / "run").exists()


def test_study_preset_plans_the_size_axis(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`sftscope demo --preset study`: levels 0 and 1 x sizes 60-960 x 3 seeds with the demo's
    recipe, the parameter level on the 960-fact cells; planned, nothing written."""
    run = tmp_path / "study"
    args = ["demo", "--preset", "study", "--dry-run", "--out", str(run), f"model={tiny_model_dir}"]
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, args)
    assert res.exit_code == 0, res.output
    cells = set(re.findall(r"models/(\d-\d+-\d)", res.output))
    assert cells == {
        f"{lv}-{n}-{s}" for lv in (0, 1) for n in (60, 120, 240, 480, 960) for s in (0, 1, 2)
    }
    for stage in (
        "probe/train",
        "probe/test",
        "eval/base",
        "kl/0-60-0",
        "params/0-960-0/diff",
        "params/1-960-0/restore",
        "params/1-960-0/blocks",
    ):
        assert stage in res.output
    assert "params/0-480-0" not in res.output and "params/1-960-1" not in res.output
    assert not run.exists()
    presets = Path(__file__).parents[1] / "sftscope" / "presets"
    demo, study = (yaml.safe_load((presets / f"{p}.yaml").read_text()) for p in ("demo", "study"))
    assert study["train"] == demo["train"] and study["probe"] == demo["probe"]  # one recipe
    assert demo["note"] and study["note"]  # each report says why it is not the paper's recipe


def test_paper_preset_plans_the_full_grid(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`sftscope demo --preset paper`: 5 levels + Mixed x 5 sizes x 3 seeds, the k sweep and
    layer blocks on the 240 / 1920 cells; planned (not run) on the EntityQuestions fixture."""
    run = tmp_path / "paper"
    args = [
        "demo",
        "--preset",
        "paper",
        "--dry-run",
        "--out",
        str(run),
        f"model={tiny_model_dir}",
        f"data_dir={EQ_FIXTURE}",
    ]
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, args)
    assert res.exit_code == 0, res.output
    for stage in (
        "probe/train",
        "models/mixed-all-2",
        "kl/0-60-0",
        "params/4-1920-0/restore",
        "params/0-240-0/blocks",
        "params/0-240-0/diff",
    ):
        assert stage in res.output
    assert "params/0-60-0" not in res.output and not run.exists()  # planned, nothing written
    res = CliRunner().invoke(app, ["demo", "--preset", "paper", "--out", str(run)])
    assert res.exit_code == 2 and "--data-dir" in res.output  # the dataset folder is required
    res = CliRunner().invoke(app, ["demo", "--preset", "nope"])
    assert res.exit_code == 2 and "demo, study, paper" in res.output
