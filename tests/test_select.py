"""``sftscope select``: an SFT file annotated with the base model's mastery and the subsets
the paper recommends, end to end on a tiny model; no fact is its own exemplar; bad input."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import sftscope.probe as probe_mod
from sftscope.cli import app
from sftscope.data.schema import Domain, QAItem
from sftscope.select_data import recommend

from helpers import CITIES, COUNTRIES, EQ_FIXTURE, popqa_rows, write_jsonl, write_tsv

runner = CliRunner()
FAST = [
    "--templates",
    "2",
    "--samples",
    "2",
    "--slick-shots",
    "2",
    "--max-new-tokens",
    "3",
    "--batch-size",
    "16",
    "--device",
    "cpu",
]
OUTPUTS = [
    "annotated.jsonl",
    "histogram.json",
    "recommended.jsonl",
    "recommended.train.jsonl",
    "select.json",
    *(f"level-{k}.jsonl" for k in range(5)),
]


def sft_rows() -> list[dict]:
    """A user's SFT file: two relations, one without a relation column (``qa``), extra
    columns to keep, a split column on some rows only, and one pair written twice."""
    rows = []
    for i in range(6):
        rows.append(
            {
                "question": f"Which country is {CITIES[i]} in?",
                "answers": [COUNTRIES[i]],
                "relation": "where",
                "source": f"crawl-{i}",
                "split": "test" if i else None,
            }
        )
    for i in range(4):
        rows.append(
            {
                "question": f"What is the capital of {COUNTRIES[i]}?",
                "answers": [CITIES[i]],
                "weight": i,
            }
        )
    rows.append(dict(rows[1]))  # the same pair again
    return rows


def select(tmp_path: Path, data: Path, out: str, *extra: str):
    return runner.invoke(
        app,
        [
            "select",
            "--model",
            str(tmp_path / "model"),
            "--data-dir",
            str(data),
            "--out",
            str(tmp_path / out),
            *FAST,
            *extra,
        ],
    )


@pytest.fixture
def model_link(tiny_model_dir: Path, tmp_path: Path) -> Path:
    (tmp_path / "model").symlink_to(tiny_model_dir)
    return tmp_path / "model"


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_select_end_to_end_deterministic_and_resumable(
    model_link: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = sft_rows()
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    res = select(tmp_path, data, "a", "--min-level", "0", "--size", "5")
    assert res.exit_code == 0, res.output
    out = tmp_path / "a"
    assert all((out / name).exists() for name in OUTPUTS)
    annotated = _read(out / "annotated.jsonl")
    assert [{k: r[k] for k in rows[0]} for r in annotated[:6]] == rows[:6]  # fields, order kept
    assert annotated[6]["weight"] == 0 and "relation" not in annotated[6]
    assert all(r["n_total"] == 4 and r["mastery_level"] in range(5) for r in annotated)
    assert all(r["n_correct"] == round(r["R"] * 4) for r in annotated)
    hist = json.loads((out / "histogram.json").read_text())
    assert hist["pairs"] == 11 and sum(hist["overall"]) == 11
    assert {k: sum(v) for k, v in hist["per_relation"].items()} == {"where": 7, "qa": 4}
    by_level = [_read(out / f"level-{k}.jsonl") for k in range(5)]
    assert sum(len(x) for x in by_level) == 11
    # min-level 0: all 10 distinct pairs qualify (the copy once); 5 drawn, balanced 3 + 2
    s = json.loads((out / "select.json").read_text())
    rec = s["recommended"]
    assert s["method"] == "question" and rec["eligible"] == 10 and rec["copies_skipped"] == 1
    assert rec["n"] == 5 and sorted(rec["composition"].values()) == [2, 3]
    picked = _read(out / "recommended.jsonl")
    assert len(picked) == 5 and all(p in rows for p in picked)
    train = _read(out / "recommended.train.jsonl")
    assert [t["question"] for t in train] == [p["question"] for p in picked]
    assert all(t["answer"] == p["answers"][0] for t, p in zip(train, picked, strict=True))
    assert "mastery levels of the SFT pairs" in res.output and "recommended" in res.output

    # the same settings from a YAML file, into another folder: the same files, byte for byte
    cfg = {
        "model": str(model_link),
        "data_dir": str(data),
        "out": str(tmp_path / "b"),
        "min_level": 0,
        "size": 5,
        "device": "cpu",
        "probe": {"templates": 2, "samples": 2, "slick_shots": 2, "max_new_tokens": 3},
    }
    (tmp_path / "select.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["select", "--config", str(tmp_path / "select.yaml")])
    assert res.exit_code == 0, res.output
    for name in OUTPUTS:
        assert (tmp_path / "b" / name).read_bytes() == (out / name).read_bytes(), name

    # a rerun reuses the probe: no model is loaded, another size or level is a new draw
    def no_model(*a, **k):
        raise AssertionError("the probe ran again")

    monkeypatch.setattr(probe_mod, "engine_for", no_model)
    res = select(tmp_path, data, "a", "--min-level", "0", "--size", "5")
    assert res.exit_code == 0, res.output
    res = select(tmp_path, data, "a", "--min-level", "0", "--size", "2")
    assert res.exit_code == 0, res.output
    assert len(_read(out / "recommended.jsonl")) == 2
    assert set(map(json.dumps, _read(out / "recommended.jsonl"))) <= set(map(json.dumps, picked))
    res = select(tmp_path, data, "a")  # defaults: levels 2-4, which the tiny model never reaches
    assert res.exit_code == 0, res.output
    levels = [r["mastery_level"] for r in annotated]
    n_high = sum(1 for lv in levels if lv >= 2)
    assert len(_read(out / "recommended.jsonl")) == min(n_high, 240)
    # a changed input file is refused rather than answered from the old probe
    write_jsonl(data, rows[:-1])
    res = select(tmp_path, data, "a")
    assert res.exit_code == 2 and "holds a probe of other items" in res.output


def test_no_pair_is_its_own_exemplar(model_link: Path, tmp_path: Path) -> None:
    """Every row is probed and every row is a candidate exemplar: a fact (and a copy of it)
    never stands among its own shots, and each prompt still gets its full shot count."""
    rows = [
        {"question": f"Which country is {c} in?", "answers": [k], "relation": "where"}
        for c, k in zip(CITIES[:4], COUNTRIES[:4], strict=True)
    ]
    rows.append(dict(rows[0]))  # a copy: not an exemplar for its twin either
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    res = select(tmp_path, data, "o", "--templates", "6")
    assert res.exit_code == 0, res.output
    gens = gzip.decompress((tmp_path / "o" / "probe" / "generations.jsonl.gz").read_bytes())
    records = [json.loads(x) for x in gens.decode().splitlines()]
    assert len(records) == 5
    seen_as_exemplar = set()
    questions = {r["question"] for r in rows}
    for rec in records:
        assert len(rec["prompts"]) == 6
        for prompt in rec["prompts"]:
            shots, final = prompt.rsplit("Question: ", 1)
            q = final.removesuffix("\nAnswer:")
            assert q in questions and final.endswith("\nAnswer:")
            assert f"Question: {q}\n" not in shots  # neither the pair nor its copy
            assert shots.count("Question: ") == 2
            seen_as_exemplar |= {line for line in shots.splitlines() if line.startswith("Q")}
    assert len(seen_as_exemplar) == 4  # each distinct fact served as someone's exemplar


def test_popqa_through_the_registry_with_the_paper_protocol(
    model_link: Path, tmp_path: Path
) -> None:
    """PopQA has mapping templates and subjects: auto picks the sampling protocol; the rows
    keep PopQA's columns."""
    data = write_tsv(tmp_path / "popqa.tsv", popqa_rows(8))
    res = select(tmp_path, data, "p", "--data", "popqa", "--samples", "1", "--min-level", "0")
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "p" / "select.json").read_text())
    assert s["method"] == "sampling" and s["histogram"]["pairs"] == 8
    annotated = _read(tmp_path / "p" / "annotated.jsonl")
    assert [r["subj"] for r in annotated] == [r["subj"] for r in popqa_rows(8)]
    assert all(r["n_total"] == 2 and "possible_answers" in r for r in annotated)
    assert set(s["recommended"]["composition"]) == {"capital_of", "place_of_birth"}


def test_a_layout_folder_is_one_pool_too(model_link: Path, tmp_path: Path) -> None:
    """The EntityQuestions layout: every split's items, rows named by relation and split."""
    res = select(
        tmp_path,
        EQ_FIXTURE,
        "eq",
        "--data",
        "entityquestions",
        "--relations",
        "P17,P36",
        "--limit-per-relation",
        "3",
        "--samples",
        "1",
    )
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "eq" / "select.json").read_text())
    assert s["method"] == "sampling" and s["histogram"]["pairs"] == 6
    annotated = _read(tmp_path / "eq" / "annotated.jsonl")
    assert {r["relation"] for r in annotated} == {"P17", "P36"}
    first = json.loads((EQ_FIXTURE / "train" / "P17.train.json").read_text())[0]
    assert {k: annotated[0][k] for k in first} == first and annotated[0]["split"] == "train"


def test_select_is_a_registered_stage(model_link: Path, tmp_path: Path) -> None:
    from sftscope.config import SelectConfig
    from sftscope.pipeline.runners import run_stage
    from sftscope.pipeline.stage import Stage

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows()[:4])
    cfg = SelectConfig(
        model=str(model_link),
        data_dir=data,
        out=tmp_path / "st",
        device="cpu",
        probe={"templates": 1, "samples": 1, "max_new_tokens": 2},
    )
    stage = Stage(
        key="select",
        kind="select",
        config=cfg.model_dump(mode="json"),
        output=tmp_path / "st",
        fingerprint="f",
    )
    brief = run_stage(stage)
    assert sum(brief["histogram"]) == 4 and brief["recommended"] >= 0
    assert (tmp_path / "st" / "select.json").exists()


def _item(rel: str, i: int, question: str | None = None) -> QAItem:
    return QAItem(
        id=f"{rel}/train/{i}",
        relation=rel,
        subject=None,
        answers=("x",),
        question=question or f"{rel} question {i}?",
        split="train",
        domain=Domain.IN_DOMAIN,
    )


def test_recommend_filters_levels_balances_relations_and_nests() -> None:
    items = [_item("a", i) for i in range(30)] + [_item("b", i) for i in range(6)]
    items.append(_item("b", 6, "b question 0?"))  # a copy of b/train/0
    levels = {it.id: k % 5 for k, it in enumerate(items)}
    levels["b/train/0"] = levels["b/train/6"] = 2  # the fact and its copy both qualify
    sub, info = recommend(items, levels, 8, 2, 4, seed=0)
    assert sub is not None and info["n"] == 8 and info["copies_skipped"] == 1
    assert all(2 <= levels[it.id] <= 4 for it in sub.items)
    assert info["composition"] == {"a": 4, "b": 4} and info["pools"] == {"a": 18, "b": 4}
    small, _ = recommend(items, levels, 4, 2, 4, seed=0)
    assert {it.id for it in small.items} <= {it.id for it in sub.items}  # 4 within 8, one seed
    again, _ = recommend(items, levels, 8, 2, 4, seed=0)
    other, _ = recommend(items, levels, 8, 2, 4, seed=1)
    assert again.items == sub.items and other.items != sub.items
    only2, info2 = recommend(items, levels, 240, 2, 2, seed=0)
    assert all(levels[it.id] == 2 for it in only2.items) and info2["n"] == info2["eligible"]
    none, info0 = recommend(items, dict.fromkeys(levels, 0), 8, 2, 4, seed=0)
    assert none is None and info0["n"] == 0


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        ([{"question": "Q?"}], [], r"row 1: no 'answers'"),
        (
            [{"question": "Q?", "answers": "[Paris, Rome]"}],
            [],
            r"row 1: 'answers' '\[Paris, Rome\]' is neither a JSON nor a Python list",
        ),
        (
            [{"question": "Q?", "answers": ["a"]}],
            ["--relations", "P17"],
            r"unknown relation 'P17' in generic \(known: qa\)",
        ),
        ([], [], r"no rows"),
        ([{"question": "Q?", "answers": ["a"]}], ["--size", "0"], r"config field 'size'"),
        ([{"question": "Q?", "answers": ["a"]}], ["--min-level", "5"], r"config field 'min_level'"),
        (
            [{"question": "Q?", "answers": ["a"]}],
            ["--min-level", "3", "--max-level", "2"],
            r"config field 'max_level': .*below min_level 3",
        ),
        (
            [{"question": "Q?", "answers": ["a"]}],
            ["--method", "sampling"],
            r"no mapping templates for dataset generic",
        ),
    ],
    ids=[
        "missing-column",
        "answers-not-a-list",
        "unknown-relation",
        "empty-file",
        "size-0",
        "min-level-5",
        "max-below-min",
        "no-templates",
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path: Path, rows: list, extra: list[str], message: str
) -> None:
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    res = select(tmp_path, data, "never", *extra)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    if rows and "config field" not in message and "templates" not in message:
        assert str(data) in lines[0]  # names the file
    assert not (tmp_path / "never").exists()


def test_missing_model_writes_nothing(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows())
    res = select(tmp_path, data, "never")
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "never").exists()


def test_help_lists_the_selection_options() -> None:
    res = runner.invoke(app, ["select", "--help"])
    assert res.exit_code == 0
    for flag in (
        "--size",
        "--min-level",
        "--max-level",
        "--seed",
        "--probe-seed",
        "--method",
        "--config",
    ):
        assert flag in res.output
