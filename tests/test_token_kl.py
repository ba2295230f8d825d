"""Token-level KL: exact zeros, the paper's top-k renormalisation by hand, chunking, the filter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.config import KLConfig
from sftscope.models.loading import load_model
from sftscope.token_kl import (
    answer_first,
    best_templates,
    full_kl_items,
    full_kl_rows,
    paper_kl_rows,
    run_kl,
    topk_kl,
)

from helpers import EQ_FIXTURE


def test_topk_kl_by_hand() -> None:
    tuned = torch.tensor([3.0, 1.0, 0.0, -1.0, 2.0])
    base = torch.tensor([0.0, 1.0, 5.0, 0.0, 0.0])
    # top-2 of tuned: ids 0 and 4; renormalise both models over exactly those two ids.
    p = [math.exp(3) / (math.exp(3) + math.exp(2)), math.exp(2) / (math.exp(3) + math.exp(2))]
    q = [0.5, 0.5]  # base logits 0 and 0 at ids 0 and 4 (its mass on id 2 is ignored)
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert topk_kl(tuned, base, k=2) == pytest.approx(expected, abs=1e-7)
    assert topk_kl(tuned, base + 7.0, k=2) == pytest.approx(expected, abs=1e-6)  # shift-invariant


def test_top10_kl_by_hand_on_a_12_token_vocabulary() -> None:
    tuned = [float(x) for x in (5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -9, -9)]
    base = [float(x) for x in (0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 8, 8)]  # mass on ids 10, 11 ignored
    top = range(10)  # the tuned model's 10 largest logits
    zt = sum(math.exp(tuned[i]) for i in top)
    zb = sum(math.exp(base[i]) for i in top)
    expected = sum(
        math.exp(tuned[i]) / zt * math.log((math.exp(tuned[i]) / zt) / (math.exp(base[i]) / zb))
        for i in top
    )
    got = topk_kl(torch.tensor(tuned), torch.tensor(base), k=10)
    assert got == pytest.approx(expected, abs=1e-6) and expected > 0


def test_kl_of_a_distribution_with_itself_is_exactly_zero() -> None:
    x = torch.randn(7, 50, generator=torch.Generator().manual_seed(0))
    assert topk_kl(x[0], x[0]) == 0.0
    assert torch.equal(full_kl_rows(x, x.clone()), torch.zeros(7))


def test_chunked_and_unchunked_full_kl_agree() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(37, 1000, generator=g) * 3, torch.randn(37, 1000, generator=g) * 3
    whole = full_kl_rows(a, b, chunk=None)
    for chunk in (1, 5, 16, 64):
        assert torch.allclose(full_kl_rows(a, b, chunk=chunk), whole, atol=1e-6, rtol=0)
    p, q = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
    assert torch.allclose(whole.double(), (p.exp() * (p - q)).sum(-1), atol=1e-5)
    assert bool((whole >= 0).all())


def test_model_against_itself_gives_zero_kl_and_zero_dlogp(tiny_model_dir: Path) -> None:
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    prompts = ["Question: Where is Lyon?\nAnswer:", "Paris is the capital of"]
    assert paper_kl_rows(model, model, tok, prompts, prompts, k=10, batch_size=1) == [0.0, 0.0]
    rows = full_kl_items(model, model, tok, prompts, ["France", "France"], 2, chunk=1)
    assert all(r["kl_mean"] == 0.0 and r["dlogp"] == 0.0 for r in rows)


def test_padding_does_not_change_the_logits(tiny_model_dir: Path) -> None:
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    short, long = "Lyon is in", "Question: Which country is Lyon located in? Answer: it is"
    alone = full_kl_items(model, model, tok, [short], ["France"], 1, None)
    model2, _ = load_model(str(tiny_model_dir), device="cpu")
    with torch.no_grad():  # a different second model, so logp differs from zero
        for p in model2.parameters():
            p.add_(0.01 * torch.randn_like(p, generator=None))
    a = full_kl_items(model2, model, tok, [short], ["France"], 1, None)[0]
    b = full_kl_items(model2, model, tok, [long, short], ["Peru", "France"], 2, None)[1]
    assert alone[0]["kl_mean"] == 0.0
    assert a["kl_mean"] == pytest.approx(b["kl_mean"], abs=1e-5)
    assert a["logp_base"] == pytest.approx(b["logp_base"], abs=1e-4)


class _Tok:
    """Whitespace 'tokenizer' so the answer-first rule is countable by eye."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": text.split()}


@pytest.mark.parametrize(
    ("completion", "within", "kept"),
    [
        (" France.", 2, True),
        (" the France", 2, True),
        (" in the France", 2, False),
        (" in the France", 3, True),
        (" Spain, not France", 2, False),
        (" french", 2, False),
        (" FRANCE!", 1, True),
    ],
)
def test_answer_first_rule(completion: str, within: int, kept: bool) -> None:
    assert answer_first(completion, ["France"], _Tok(), within) is kept


def test_best_template_from_probe_records() -> None:
    rows = [
        {"relation": "P17", "per_template": [0.1, 0.5, 0.5]},
        {"relation": "P17", "per_template": [0.3, 0.4, 0.2]},
        {"relation": "P36", "per_template": None},
    ]
    assert best_templates(rows, ["P17", "P36"]) == {"P17": 1, "P36": None}


class _FakeEngine:
    """The base model's completions are fixed, so the filter's choice is known."""

    def __init__(self, completions: dict[str, str]):
        self.completions = completions

    def generate(self, prompts, **kw):
        pick = [next((c for s, c in self.completions.items() if s in p), " none") for p in prompts]
        return [[c] for c in pick]


def test_run_kl_filters_level_and_answer_first(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sftscope.data.dataset import load_items, open_dataset

    items = load_items(open_dataset(EQ_FIXTURE), ["test"], ["P17"], 4)
    levels = [4, 4, 4, 1]
    probe = tmp_path / "probe"
    probe.mkdir()
    rows = [
        {"id": it.id, "relation": it.relation, "level": lv, "per_template": [0.0, 1.0] + [0.0] * 19}
        for it, lv in zip(items, levels, strict=True)
    ]
    (probe / "mastery.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Items 0 and 3 would pass the filter; 3 is level 1. Item 1 answers late, item 2 wrongly.
    completions = {
        items[0].subject: f" {items[0].target}.",
        items[1].subject: f" a place in the middle of {items[1].target}",
        items[3].subject: f" {items[3].target}",
    }
    cfg = KLConfig(
        base=str(tiny_model_dir),
        tuned=str(tiny_model_dir),
        data="entityquestions",
        data_dir=EQ_FIXTURE,
        relations=["P17"],
        limit_per_relation=4,
        probe=probe,
        tuned_prompt="template",
        device="cpu",
        out=tmp_path / "kl" / "cell.json",
    )
    s = run_kl(cfg, base_engine=_FakeEngine(completions))
    assert s.paper is not None and s.full is not None
    assert s.paper.candidates == 3 and s.paper.answer_first == 1
    assert s.paper.n == 1 and s.paper.mean == 0.0  # tuned == base, same prompt
    assert s.paper.templates["P17"].count("{subject}") == 1
    assert [b.n for b in s.full.per_level] == [0, 1, 0, 0, 3]
    assert s.full.overall.kl_mean == 0.0
    recs = (tmp_path / "kl" / "cell.records.jsonl").read_text().splitlines()
    assert len(recs) == 1 + 4


def test_kl_cli_bad_probe_is_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
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
        "--probe",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "k.json"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "probe not found" in res.output
    assert not (tmp_path / "k.json").exists()
