"""The report on a tiny-model grid: every section, every figure file, markdown = HTML content."""

from __future__ import annotations

import re
from pathlib import Path

from test_experiment import _grid_yaml
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.report.collect import spread


def test_spread_over_seeds() -> None:
    assert spread([0.2, 0.4, None]) == {"mean": 0.30000000000000004, "sd": 0.1414213562373095,
                                        "n": 2}  # fmt: skip
    assert spread([0.5]) == {"mean": 0.5, "sd": None, "n": 1}
    assert spread([None]) == {"mean": None, "sd": None, "n": 0}


def test_report_of_a_grid_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    params = {"cells": ["1-4-0"], "k": [10, 50]}
    path = _grid_yaml(tmp_path, tiny_model_dir, sizes=[4, 8], levels=[1], seeds=[0, 1],
                      keep_models=False, params=params, transitions=True)  # fmt: skip
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    page = (run / "report" / "index.html").read_text()
    md = (run / "report" / "report.md").read_text()
    for section in (
        "Data and mastery levels",
        "Accuracy by training level and test level",
        "Token level",
        "Knowledge transitions",
        "Parameter level: 1-4-0",
    ):
        assert f"<h2>{section}" in page and f"## {section}" in md
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {Path(i).name for i in images} >= {"accuracy_vs_size.png", "restore_1-4-0.png"}
    for img in images:
        f = run / "report" / img
        assert f.exists() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in page.replace("http-equiv", "")  # opens from disk, nothing fetched
    assert re.search(r"\| 1 \| 4 \| .* \(2\) \|", md)  # mean ± sd over the 2 seeds
    assert not list(run.glob(".report.partial"))
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "nowhere" in res.output
