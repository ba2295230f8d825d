"""The probe stage on a tiny model: determinism, resume, the estimator's arithmetic, CLI."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.config import ProbeConfig
from sftscope.data.dataset import load_items, open_dataset
from sftscope.data.templates import fill, load_templates
from sftscope.mastery import decided, prefix_free
from sftscope.models.engines import HFEngine
from sftscope.probe import run_probe
from sftscope.probe_methods import sampling
from sftscope.probe_methods.likelihood import likelihood_scores

from helpers import EQ_FIXTURE


def _cfg(tmp_path: Path, name: str, model: Path, **kw) -> ProbeConfig:
    base = dict(
        model=str(model),
        data="entityquestions",
        data_dir=EQ_FIXTURE,
        split="train",
        relations=["P17", "P36"],
        limit_per_relation=4,
        templates=3,
        samples=2,
        max_new_tokens=6,
        chunk_size=3,
        batch_size=8,
        out=tmp_path / name,
        device="cpu",
    )
    return ProbeConfig(**{**base, **kw})


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_sampling_same_seed_same_levels(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = run_probe(_cfg(tmp_path, "a", tiny_model_dir))
    b = run_probe(_cfg(tmp_path, "b", tiny_model_dir))
    c = run_probe(_cfg(tmp_path, "c", tiny_model_dir, seed=1))
    ma, mb = _lines(tmp_path / "a" / "mastery.jsonl"), _lines(tmp_path / "b" / "mastery.jsonl")
    assert ma == mb and a.histogram == b.histogram
    assert len(ma) == 8 and all(r["n_total"] == 6 for r in ma)
    assert {r["method"] for r in ma} == {"sampling"}
    ga = gzip.decompress((tmp_path / "a" / "generations.jsonl.gz").read_bytes()).decode()
    gc = gzip.decompress((tmp_path / "c" / "generations.jsonl.gz").read_bytes()).decode()
    gens = [json.loads(x) for x in ga.splitlines()]
    assert [g["id"] for g in gens] == [r["id"] for r in ma]
    assert all(len(g["samples"]) == 3 and all(len(s) == 2 for s in g["samples"]) for g in gens)
    assert ga != gc and c.n_probed == 8
    assert not (tmp_path / "a" / "parts").exists()


def _die_after_first_chunk(monkeypatch: pytest.MonkeyPatch):
    """The sampling method killed (KeyboardInterrupt) after its first chunk; the real ``run``."""
    real, calls = sampling.METHOD.run, []

    def dies_after_first_chunk(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling.METHOD, "run", dies_after_first_chunk)
    return real


def test_killed_probe_resumes_to_the_same_result(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_probe(_cfg(tmp_path, "whole", tiny_model_dir))
    real = _die_after_first_chunk(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_probe(_cfg(tmp_path, "killed", tiny_model_dir))
    assert len(list((tmp_path / "killed" / "parts").glob("*.jsonl"))) == 1
    assert not (tmp_path / "killed" / "mastery.jsonl").exists()
    monkeypatch.setattr(sampling.METHOD, "run", real)
    run_probe(_cfg(tmp_path, "killed", tiny_model_dir))
    assert _lines(tmp_path / "killed" / "mastery.jsonl") == _lines(
        tmp_path / "whole" / "mastery.jsonl"
    )


def test_other_settings_in_same_folder_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sftscope.errors import SftscopeError

    run_probe(_cfg(tmp_path, "p", tiny_model_dir))
    with pytest.raises(SftscopeError, match="other settings"):
        run_probe(_cfg(tmp_path, "p", tiny_model_dir, samples=3))


def test_likelihood_matches_hand_computation(tiny_engine: HFEngine) -> None:
    """R-hat for one fact = mean over templates of sum over aliases of prod softmax(z/T)."""
    items = load_items(open_dataset(EQ_FIXTURE), ["train"], ["P17"], limit_per_relation=2)
    templates = {"P17": load_templates("entityquestions")["P17"].mapping[:2]}
    temperature = 0.7
    got = likelihood_scores(tiny_engine, items, templates, temperature)
    tok, model = tiny_engine.tokenizer, tiny_engine.model
    for item, per_template in zip(items, got, strict=True):
        for t, value in zip(templates["P17"], per_template, strict=True):
            total = 0.0
            for alias in prefix_free(item.accepted):
                p = tok(fill(t, item.subject))["input_ids"]
                c = tok(" " + alias, add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    z = model(torch.tensor([p + c])).logits[0].double()
                probs = torch.softmax(z / temperature, dim=-1)
                total += math.prod(probs[len(p) - 1 + k, c[k]].item() for k in range(len(c)))
            assert value == pytest.approx(min(1.0, total), rel=1e-4, abs=1e-12)


class FixedEngine:
    """An engine whose scores are fixed: log p = log(0.1) per token."""

    tokens_forwarded = 0

    def score(self, prompts, continuations, desc="score", temperature=1.0):
        return [[math.log(0.1)] * len(c.split()) for c in continuations]


def test_likelihood_aggregation_with_fixed_scores() -> None:
    items = load_items(open_dataset(EQ_FIXTURE), ["train"], ["P17"], limit_per_relation=40)
    usa = next(it for it in items if it.target == "United States of America")
    templates = {"P17": ["{subject} is in", "{subject} lies in"]}
    (probs,) = likelihood_scores(FixedEngine(), [usa], templates, 1.0)
    # prefix-free aliases: one-word ones score 0.1, two-word 0.01, ...
    expected = sum(0.1 ** len(a.split()) for a in prefix_free(usa.accepted))
    assert probs == pytest.approx([expected, expected])


def test_likelihood_and_slick_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    lik = run_probe(_cfg(tmp_path, "lik", tiny_model_dir, method="likelihood"))
    assert lik.n_probed == 8 and lik.forward_tokens > 0
    rows = _lines(tmp_path / "lik" / "mastery.jsonl")
    assert all(0.0 <= r["R"] <= 1.0 and r["n_total"] == 3 for r in rows)
    slick = run_probe(
        _cfg(tmp_path, "slick", tiny_model_dir, method="slick", slick_sets=2, slick_samples=2)
    )
    rows = _lines(tmp_path / "slick" / "mastery.jsonl")
    assert sum(slick.histogram["total"]) == 8
    assert all(r["n_total"] == 2 * 3 and r["category"] for r in rows)


def test_early_exit_never_changes_outcomes(tiny_engine: HFEngine) -> None:
    """Rows stopped early keep a prefix of their full sample, and the same verdict."""
    prompts = ["Question: Which country", "Where was", "Who is"]
    # common words of the tiny tokenizer's corpus: they appear now and then in random text
    answers = ["the", "of", "is", "in", "was", "Who", "Which", "Answer", "located"]

    def check(text: str) -> bool:
        return decided(text, answers)

    full = tiny_engine.generate(prompts, max_new_tokens=12, temperature=1.5, n=6, seed=5)
    early = tiny_engine.generate(
        prompts, max_new_tokens=12, temperature=1.5, n=6, seed=5, done_if=[check] * 3
    )
    from sftscope.data.matching import contains_answer

    stopped = 0
    for f_row, e_row in zip(full, early, strict=True):
        for f, e in zip(f_row, e_row, strict=True):
            assert f.startswith(e)
            assert contains_answer(f, answers) == contains_answer(e, answers)
            stopped += f != e
    assert stopped > 0  # the early exit did fire


def test_probe_cli_prints_histogram_and_rejects_bad_input(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    args = [
        "probe",
        "--model",
        str(tiny_model_dir),
        "--data",
        "entityquestions",
        "--data-dir",
        str(EQ_FIXTURE),
        "--relations",
        "P36",
        "--limit-per-relation",
        "3",
        "--method",
        "likelihood",
        "--templates",
        "2",
    ]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "level 4" in res.output and "P36" in res.output
    res = runner.invoke(app, [*args[:-1], "99", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "config field 'templates'" in res.output
    assert not (tmp_path / "bad").exists()


def test_calibrate_then_relevel_without_the_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sftscope.calibration import calibrate
    from sftscope.mastery import level_of

    run_probe(_cfg(tmp_path, "s", tiny_model_dir))
    run_probe(_cfg(tmp_path, "l", tiny_model_dir, method="likelihood"))
    cal = calibrate(tmp_path / "s", tmp_path / "l", tmp_path / "cal.json")
    assert cal["n"] == 8 and 0 <= cal["agreement"] <= 1
    args = [
        "relevel",
        str(tmp_path / "l"),
        "--calibration",
        str(tmp_path / "cal.json"),
        "--out",
        str(tmp_path / "r"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = _lines(tmp_path / "r" / "mastery.jsonl")
    assert [r["level"] for r in rows] == [level_of(r["R"], cal["thresholds"]) for r in rows]
    with pytest.raises(Exception, match="expected a likelihood probe"):
        from sftscope.calibration import relevel

        relevel(tmp_path / "s", tmp_path / "cal.json", tmp_path / "bad")


def test_a_probe_folder_whose_calibration_file_is_gone_holds_another_probe(tmp_path) -> None:
    """A partial probe made with a calibration file since removed is not resumed (its levels
    cannot be checked), and saying so is not an error."""
    import json

    from sftscope.config import ProbeConfig, dump_config
    from sftscope.probe import holds_other_probe

    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps({"thresholds": [0.001, 0.1, 0.2, 0.3]}))
    cfg = ProbeConfig(model="m", method="likelihood", calibration=gone, out=tmp_path / "p")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "probe.yaml").write_text(dump_config(cfg.model_copy(update={"out": "."})))
    assert not holds_other_probe(cfg)
    kept = tmp_path / "kept.json"
    kept.write_text(gone.read_text())
    gone.unlink()
    assert holds_other_probe(cfg.model_copy(update={"calibration": kept}))


def test_resume_refuses_another_decode(
    tiny_model_dir: Path, tiny_engine: HFEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe whose finished chunks were sampled with one decode is not finished with another
    (their float order differs, so a few samples would): one error line, nothing written; the
    same decode finishes it as if never stopped."""
    from sftscope.errors import SftscopeError

    model, tok, model_dir = tiny_engine.model, tiny_engine.tokenizer, tiny_model_dir
    plain = HFEngine(model, tok, batch_size=8, progress=False, shared_prefix=False)
    run_probe(_cfg(tmp_path, "whole", model_dir), engine=plain)
    real = _die_after_first_chunk(monkeypatch)
    cfg = _cfg(tmp_path, "p", model_dir)
    with pytest.raises(KeyboardInterrupt):
        run_probe(cfg, engine=plain)
    monkeypatch.setattr(sampling.METHOD, "run", real)
    parts = tmp_path / "p" / "parts"
    old = {"engine": "hf", "version": "x"}  # as written before the decode was recorded
    (parts / "engine.json").write_text(json.dumps(old))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "p").rglob("*")}
    shared = HFEngine(model, tok, batch_size=8, progress=False, shared_prefix=True)
    with pytest.raises(SftscopeError, match="decode 'dynamic-cache'.*--hf-decode dynamic-cache"):
        run_probe(cfg, engine=shared)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "p").rglob("*")} == before
    run_probe(cfg, engine=plain)
    assert _lines(tmp_path / "p" / "mastery.jsonl") == _lines(tmp_path / "whole" / "mastery.jsonl")


def test_the_hf_decode_setting(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``hf.decode`` (``--hf-decode``) picks the engine's decode: the shared-prefix one by
    default, transformers' cache when asked (to finish a probe begun under it)."""
    from sftscope.models.factory import engine_for

    for setting, recorded in (("shared-prefix", "shared-prefix-1"), ("dynamic-cache", None)):
        cfg = _cfg(tmp_path, "p", tiny_model_dir, hf={"decode": setting})
        assert engine_for(cfg, progress=False).info["decode"] == (recorded or setting)
    assert _cfg(tmp_path, "p", tiny_model_dir).hf.decode == "shared-prefix"
