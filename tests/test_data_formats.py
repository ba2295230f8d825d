"""Data as it comes: QA and SFT files in the forms their makers keep them (NQ-open, FlashRAG,
PopQA exports, Alpaca, TRL chat rows, prompt/completion, any CSV with a column mapping) read by
the generic reader, ``sftscope train`` and ``sftscope select`` without rewriting; a bad row is
one error line naming file, row and field, with nothing written."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.config import EvalConfig, load_config, result_fields
from sftscope.data.columns import CANDIDATES
from sftscope.data.dataset import load_items
from sftscope.data.readers import resolve_dataset
from sftscope.errors import SftscopeError
from sftscope.prompts import sft_completion, sft_prompt
from sftscope.train import build_trainer, read_examples

from helpers import CITIES, COUNTRIES, popqa_rows, write_jsonl, write_tsv

runner = CliRunner()
SPLITS = ["train", "dev", "test"]
# The facts every format below holds: a question, its answers (the first is the target).
FACTS = [
    (f"Which country is {c} in?", [k, k.upper()]) for c, k in zip(CITIES, COUNTRIES, strict=True)
]


def _chat(q: str, a: str) -> list[dict]:
    return [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": q},
        {"role": "assistant", "content": a},
    ]


def nq_open(d: Path) -> Path:  # NQ-open's JSONL: "answer" is a list
    return write_jsonl(d / "nq.jsonl", [{"question": q, "answer": a} for q, a in FACTS])


def flashrag(d: Path) -> Path:  # FlashRAG's exports: golden_answers, an id and metadata
    rows = [
        {"id": f"test_{i}", "question": q, "golden_answers": a, "metadata": {}}
        for i, (q, a) in enumerate(FACTS)
    ]
    return write_jsonl(d / "flashrag.jsonl", rows)


def popqa_export(d: Path) -> Path:  # a PopQA export: possible_answers a Python-literal list
    rows = [
        {
            "subj": q[17:-4],
            "prop": "country",
            "obj": a[0],
            "question": q,
            "possible_answers": str(a),
        }
        for q, a in FACTS
    ]
    return write_tsv(d / "popqa.tsv", rows, ["subj", "prop", "obj", "question", "possible_answers"])


def alpaca(d: Path) -> Path:  # Alpaca's JSON: instruction (+ input), output
    rows = [{"instruction": q, "input": "", "output": a[0]} for q, a in FACTS]
    path = d / "alpaca.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def messages(d: Path) -> Path:  # TRL's conversational language-modeling rows
    return write_jsonl(d / "chat.jsonl", [{"messages": _chat(q, a[0])} for q, a in FACTS])


def chat_prompt_completion(d: Path) -> Path:  # TRL's conversational prompt/completion rows
    rows = [{"prompt": _chat(q, a[0])[:2], "completion": _chat(q, a[0])[2:]} for q, a in FACTS]
    return write_jsonl(d / "chat_pc.jsonl", rows)


def prompt_completion(d: Path) -> Path:  # ready-made pairs in sftscope's own SFT format
    rows = [{"prompt": sft_prompt(q), "completion": sft_completion(a[0], "</s>")} for q, a in FACTS]
    return write_jsonl(d / "pc.jsonl", rows)


def mapped_csv(d: Path) -> Path:  # any CSV: its own column names, answers a JSON list
    path = d / "mine.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Q", "gold", "note"])
        w.writerows([q, json.dumps(a), "multi-line\nnote"] for q, a in FACTS)
    return path


# format -> (writer, --columns, targets only: the format keeps one answer per fact)
FORMATS: dict[str, tuple[Callable[[Path], Path], str | None, bool]] = {
    "nq-open": (nq_open, None, False),
    "flashrag": (flashrag, None, False),
    "popqa-literal": (popqa_export, None, False),
    "alpaca": (alpaca, None, True),
    "messages": (messages, None, True),
    "chat-prompt-completion": (chat_prompt_completion, None, True),
    "prompt-completion": (prompt_completion, None, True),
    "csv-mapped": (mapped_csv, "question=Q,answers=gold", False),
}


def _items(ds) -> list:
    """Every item of every split the hash put facts in (few facts: a split may be empty)."""
    splits = [s for s in SPLITS if any(ds.has(r, s) for r in ds.relations)]
    return load_items(ds, splits, warn=False)


def _columns(spec: str | None) -> dict | None:
    return EvalConfig(model="m", out="o", columns=spec).columns


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_as_the_same_facts(tmp_path: Path, fmt: str) -> None:
    write, columns, targets_only = FORMATS[fmt]
    ds = resolve_dataset("generic", write(tmp_path), _columns(columns))
    items = _items(ds)
    got = {it.question: list(it.answers) for it in items}
    want = {q: a[:1] if targets_only else a for q, a in FACTS}
    assert got == want
    # ids are stable: the same file reads the same ids, in the same order
    again = _items(resolve_dataset("generic", ds.root, _columns(columns)))
    assert [it.id for it in again] == [it.id for it in items]


def test_popqa_reader_takes_python_literal_lists(tmp_path: Path) -> None:
    rows = [{**r, "possible_answers": str(json.loads(r["possible_answers"]))} for r in popqa_rows()]
    literal = load_items(resolve_dataset("popqa", write_tsv(tmp_path / "l.tsv", rows)), SPLITS)
    plain = load_items(
        resolve_dataset("popqa", write_tsv(tmp_path / "j.tsv", popqa_rows())), SPLITS
    )
    assert literal == plain and len(plain) == 48


def test_alpaca_input_follows_the_instruction_and_answer_forms(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Name the country.", "input": "Lyon", "output": "France"},
        {"question": "Capital of Peru?", "answer": "Lima </s>"},  # one string, EOS dropped
        {"question": "Q3?", "answer": {"value": "Ra", "aliases": ["Re", "Ra"]}},  # TriviaQA
        {"question": "Q4?", "answers": {"text": ["x", "y"], "answer_start": [0, 5]}},  # SQuAD
        {"query": "Q5?", "target": "['a', \"b's\"]"},
    ]
    items = _items(resolve_dataset("generic", write_jsonl(tmp_path / "m.jsonl", rows)))
    got = {it.question: it.answers for it in items}
    assert got == {
        "Name the country.\nLyon": ("France",),
        "Capital of Peru?": ("Lima",),
        "Q3?": ("Ra", "Re"),
        "Q4?": ("x", "y"),
        "Q5?": ("a", "b's"),
    }


def test_candidates_cover_the_mappable_fields() -> None:
    from sftscope.config import COLUMN_FIELDS

    assert set(CANDIDATES) == set(COLUMN_FIELDS)
    assert CANDIDATES["answers"][:4] == ("answers", "answer", "golden_answers", "possible_answers")


@pytest.mark.parametrize("fmt", [f for f, (_, columns, _) in FORMATS.items() if not columns])
def test_train_reads_every_sft_shape(tmp_path: Path, fmt: str) -> None:
    """The files as they are: Alpaca's JSON list, a PopQA TSV, the JSONL ones."""
    examples = read_examples(FORMATS[fmt][0](tmp_path), "</s>")
    first_q, first_a = FACTS[0][0], FACTS[0][1][0]
    if fmt in ("messages", "chat-prompt-completion"):  # chat turns, for the chat template
        assert examples[0]["prompt"] == _chat(first_q, first_a)[:2]
        assert examples[0]["completion"] == [{"role": "assistant", "content": first_a}]
    else:  # the paper's format (prompt-completion: as given, in that format already)
        assert examples[0]["prompt"] == sft_prompt(first_q)
        assert examples[0]["completion"] == sft_completion(first_a, "</s>")
    assert len(examples) == len(FACTS)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template."""
    out = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def _train_cfg(model: Path, train_file: Path, out: Path):
    from sftscope.config import TrainConfig

    return TrainConfig(model=str(model), train_file=train_file, out=out, device="cpu", batch_size=4)


def test_chat_rows_train_on_the_assistant_turn_only(chat_model_dir: Path, tmp_path: Path) -> None:
    trainer, examples = build_trainer(
        _train_cfg(chat_model_dir, messages(tmp_path), tmp_path / "o"), tmp_path
    )
    tok = trainer.processing_class
    assert len(trainer.train_dataset) == len(examples) == len(FACTS)
    for row, (q, a) in zip(trainer.train_dataset, FACTS, strict=True):
        labelled = [t for t in row["labels"] if t != -100]
        assert tok.decode(labelled).strip() == f"{a[0]}</s>"  # the answer and its end only
        assert q in tok.decode(row["input_ids"])  # the user turn is context, not target


def test_chat_rows_need_a_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = messages(tmp_path)
    res = runner.invoke(
        app,
        ["train", "--model", str(tiny_model_dir), "--train-file", str(path)]
        + ["--device", "cpu", "--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {path}: chat rows need a chat template"), line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"messages": _chat("q", "a")}, {"question": "q", "answer": "a"}],
            r"row 2: a plain row after chat ones",
        ),
        ([{"messages": _chat("q", "a")[:2]}], r"row 1: 'messages' has no assistant turn"),
        ([{"prompt": "p", "completion": ""}], r"row 1: 'prompt' and 'completion' must be"),
        ([{"instruction": "q"}], r"row 1: expected fields 'question' and 'answer'"),
    ],
    ids=["mixed", "no-assistant", "empty-completion", "no-output"],
)
def test_bad_training_rows(tmp_path: Path, rows: list, message: str) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(SftscopeError, match=message) as exc:
        read_examples(path, "</s>")
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)


def test_select_reads_an_sft_chat_file_and_keeps_its_rows(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = messages(tmp_path)
    res = runner.invoke(
        app,
        ["select", "--model", str(tiny_model_dir), "--data-dir", str(path)]
        + ["--templates", "2", "--samples", "2", "--slick-shots", "2", "--max-new-tokens", "3"]
        + ["--device", "cpu", "--out", str(tmp_path / "sel")],
    )
    assert res.exit_code == 0, res.output
    annotated = [json.loads(x) for x in (tmp_path / "sel" / "annotated.jsonl").open()]
    assert [r["messages"] for r in annotated] == [json.loads(x)["messages"] for x in path.open()]
    assert all(r["mastery_level"] in range(5) for r in annotated)
    train_rows = [json.loads(x) for x in (tmp_path / "sel" / "recommended.train.jsonl").open()]
    assert {(r["question"], r["answer"]) for r in train_rows} <= {(q, a[0]) for q, a in FACTS}


@pytest.mark.parametrize(
    ("text", "columns", "message"),
    [
        (
            '{"Q": "q", "gold": ["a"]}\n{"Q": "q2"}\n',
            "question=Q,answers=gold",
            r"row 2: no 'gold' \(--columns answers=gold\)",
        ),
        ('{"question": "q", "answers": "[\'a\', b]"}\n', None, r"row 1: 'answers' .* neither"),
        ('{"question": "q", "golden_answers": 5}\n', None, r"row 1: 'golden_answers' is not a"),
        ('{"question": "q", "answer": {"x": 1}}\n', None, r"row 1: 'answer' is an object"),
        ('{"messages": [{"role": "user", "content": "q"}]}\n', None, r"'messages' has no assi"),
        (
            '{"query": "q"}\n',
            None,
            r"row 1: no 'answers' \(looked for 'answers', 'answer', 'golden_answers'",
        ),
        ('Q,gold\n"multi\nline",a\n,b\n', "question=Q,answers=gold", r"row 2: no 'Q'"),
    ],
    ids=[
        "mapped-missing",
        "bad-literal",
        "not-a-list",
        "bad-object",
        "no-assistant",
        "none",
        "csv",
    ],
)
def test_a_bad_row_is_one_line_naming_file_row_and_field(
    tmp_path: Path, text: str, columns: str | None, message: str
) -> None:
    path = tmp_path / ("bad.csv" if text.startswith("Q,") else "bad.jsonl")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SftscopeError, match=message) as exc:
        resolve_dataset("generic", path, _columns(columns))
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)
    out = tmp_path / "out"
    mapping = ["--columns", columns] if columns else []
    res = runner.invoke(
        app,
        ["eval", "--model", "m", "--data", "generic", "--data-dir", str(path), *mapping]
        + ["--out", str(out)],
    )
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and re.search(message, lines[0]), res.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--columns", "answer=gold"], r"config field 'columns': .*unknown field 'answer'"),
        (["--columns", "answers"], r"config field 'columns': .*'answers' is not FIELD=COLUMN"),
        (["--data", "popqa", "--columns", "answers=x"], r"--columns: --data popqa reads fixed"),
    ],
    ids=["unknown-field", "no-column", "fixed-reader"],
)
def test_bad_mappings(tmp_path: Path, args: list[str], message: str) -> None:
    path = nq_open(tmp_path)
    res = runner.invoke(
        app,
        ["eval", "--model", "m", "--data-dir", str(path), "--data", "generic", *args]
        + ["--out", str(tmp_path / "o")],
    )
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and re.search(message, lines[0]), res.output


def test_the_mapping_is_one_config_field_counted_only_when_set(tmp_path: Path) -> None:
    yaml_file = tmp_path / "eval.yaml"
    yaml_file.write_text("model: m\nout: o\ncolumns: {question: Q, answers: gold}\n")
    from_yaml = load_config(EvalConfig, yaml_file)
    from_option = load_config(
        EvalConfig, None, {"model": "m", "out": "o"}, ["columns=question=Q,answers=gold"]
    )
    assert from_yaml.columns == from_option.columns == {"question": "Q", "answers": "gold"}
    assert result_fields(from_yaml)["columns"] == {"question": "Q", "answers": "gold"}
    unset = EvalConfig(model="m", out="o")
    assert "columns" not in result_fields(unset) and "columns" not in unset.model_dump()
    assert EvalConfig(model="m", out="o", columns="").columns is None
    help_text = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).output
    assert "--columns" in help_text and "comma-separated key=value" in help_text


def test_data_stats_takes_the_mapping(tmp_path: Path) -> None:
    path = mapped_csv(tmp_path)
    args = ["data", "stats", "--data", "generic", "--data-dir", str(path)]
    res = runner.invoke(
        app, [*args, "--columns", "question=Q,answers=gold"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0 and "total" in res.output, res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "row 1: no 'question'" in res.output
