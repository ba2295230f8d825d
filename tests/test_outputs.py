"""The stages' typed summaries: written as JSON, read back as the same model; files written by
earlier versions (fewer keys, or keys no model declares) still read; anything else is a
one-line error naming the file. And the report reads the run's config as a GridConfig."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sftscope.errors import SftscopeError
from sftscope.outputs import EvalSummary, KLSummary, ProbeSummary, SweepSummary
from sftscope.report.collect import read_run_config

SCORE = {"n": 4, "containment": 0.5, "exact": 0.25}
# An eval summary as sftscope wrote it before summaries were typed: no engine, no levels.
OLD_EVAL = {
    "model": "m",
    "data": "geo",
    "split": "test",
    "prompt": "sft",
    "overall": SCORE,
    "in_domain": SCORE,
    "ood": {"n": 0, "containment": None, "exact": None},
    "macro_relations": {"containment": 0.5, "exact": 0.25},
    "per_relation": {"P17": {"domain": "in-domain", **SCORE}},
}
LEVELS = {
    "per_level": [SCORE] * 5,
    "mean_of_levels": {"containment": 0.4, "exact": 0.2},
    "missing_levels": [],
}


def _write(path: Path, obj: dict) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_an_old_eval_summary_reads_and_its_headline_falls_back(tmp_path: Path) -> None:
    s = EvalSummary.read(_write(tmp_path / "summary.json", OLD_EVAL))
    assert s.by_level is None and s.engine == {}
    assert s.headline("in_domain") == 0.5  # no levels: plain containment
    assert s.headline("ood") is None  # no items
    leveled = EvalSummary.model_validate({**OLD_EVAL, "by_level": {"in_domain": LEVELS}})
    assert leveled.headline("in_domain") == 0.4  # the paper's headline, mean of levels


def test_a_summary_round_trips_and_keeps_keys_it_does_not_declare(tmp_path: Path) -> None:
    s = EvalSummary.model_validate({**OLD_EVAL, "from_the_future": [1, 2]})
    path = s.write(tmp_path / "summary.json")
    back = EvalSummary.read(path)
    assert back == s and back.model_extra == {"from_the_future": [1, 2]}
    assert json.loads(path.read_text())["per_relation"]["P17"]["exact"] == 0.25


def test_old_probe_kl_and_sweep_files_read(tmp_path: Path) -> None:
    probe = {
        "method": "sampling",
        "thresholds": [0, 0.25, 0.5, 0.75],
        "n_probed": 3,
        "histogram": {"P17": [1, 0, 0, 0, 2], "total": [1, 0, 0, 0, 2]},
    }
    assert ProbeSummary.read(_write(tmp_path / "p.json", probe)).calibration is None
    kl = {"base": "b", "tuned": "t", "split": "test"}  # paper=false and full=false: neither
    k = KLSummary.read(_write(tmp_path / "k.json", kl))
    assert k.paper is None and k.full is None
    sweep = {"split": "test", "rows": [{"label": "tuned", "k": 0, "in_domain": 0.5, "ood": None}]}
    s = SweepSummary.read(_write(tmp_path / "s.json", sweep))  # no engine, no pick
    assert s.engine == "hf" and s.pick is None and s.rows[0].dev_in_domain is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "expected EvalSummary JSON"),
        ('{"model": "m"}', "expected EvalSummary JSON"),
        (None, "found"),
    ],
)
def test_what_is_not_a_summary_is_one_line(tmp_path: Path, text: str | None, says: str) -> None:
    path = tmp_path / "summary.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SftscopeError, match=says) as e:
        EvalSummary.read(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_the_report_reads_the_run_config_as_a_grid_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "out": str(tmp_path)}))
    cfg = read_run_config(path)
    assert cfg.probe.templates == 21 and cfg.eval.split == "test"  # defaults, not restated
    path.write_text(yaml.safe_dump({"model": "m", "out": str(tmp_path), "levls": [1]}))
    with pytest.raises(SftscopeError, match="not a grid config .field 'levls'"):
        read_run_config(path)
