"""Dataset readers for tables: PopQA and generic QA files, through probe, eval and the grid."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.config import EvalConfig, GridConfig, ProbeConfig, load_config
from sftscope.data.dataset import load_items
from sftscope.data.readers import resolve_dataset
from sftscope.data.schema import Domain
from sftscope.data.tables import POPQA_RELATIONS
from sftscope.errors import SftscopeError
from sftscope.evaluate import run_eval
from sftscope.pipeline.grid import Grid
from sftscope.probe import run_probe
from sftscope.registry import READERS

from helpers import CITIES, COUNTRIES, generic_rows, grid_yaml, popqa_rows, write_jsonl, write_tsv


def test_readers_are_registered() -> None:
    assert {"entityquestions", "testbed", "popqa", "generic"} <= set(READERS) | {"popqa"}
    resolve_dataset("geo")  # registers the table readers
    assert {"popqa", "generic"} <= set(READERS)
    with pytest.raises(SftscopeError, match=r"--data 'popq': no such dataset reader \(known: "):
        resolve_dataset("popq", "x")


def test_popqa_in_every_format_gives_the_same_items(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = popqa_rows()
    tsv = write_tsv(tmp_path / "popqa.tsv", rows)
    jsonl = write_jsonl(tmp_path / "popqa.jsonl", rows)
    parquet = tmp_path / "popqa.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    loaded = [
        load_items(resolve_dataset("popqa", p), ["train", "dev", "test"])
        for p in (tsv, jsonl, parquet)
    ]
    assert loaded[0] == loaded[1] == loaded[2] and len(loaded[0]) == 48
    first = next(it for it in loaded[0] if it.relation == "capital_of")
    assert first.subject.startswith(first.question.split(" the capital")[0][8:])
    assert first.answers[0] in COUNTRIES and first.answers[1] == first.answers[0].upper()
    assert first.popularity is not None and first.domain is Domain.IN_DOMAIN
    splits = {it.split for it in loaded[0]}
    assert splits == {"train", "dev", "test"}  # PopQA has one split: a stable hash makes three
    assert sum(it.split == "train" for it in loaded[0]) > 30
    assert len(POPQA_RELATIONS) == 16


def test_generic_jsonl_csv_folder_and_saved_by_datasets(tmp_path: Path) -> None:
    from datasets import Dataset as HFDataset
    from datasets import DatasetDict

    rows = generic_rows()
    base = load_items(
        resolve_dataset("generic", write_jsonl(tmp_path / "qa.jsonl", rows)),
        ["train", "dev", "test"],
    )
    assert len(base) == 48
    cap = next(it for it in base if it.relation == "cap")
    assert cap.domain is Domain.OOD and cap.subject == "France" and cap.id == "cap/test/0"
    # CSV: answers as a JSON string
    with (tmp_path / "qa.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) + ["domain"])
        w.writeheader()
        w.writerows({**r, "answers": json.dumps(r["answers"])} for r in rows)
    assert (
        load_items(resolve_dataset("generic", tmp_path / "qa.csv"), ["train", "dev", "test"])
        == base
    )
    # a folder of split-named files; a datasets save_to_disk folder (validation = dev)
    folder = tmp_path / "split"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        write_jsonl(
            folder / f"{split}.jsonl",
            [{k: v for k, v in r.items() if k != "split"} for r in rows if r["split"] == split],
        )
    assert load_items(resolve_dataset("generic", folder), ["train", "dev", "test"]) == base
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "dev", "test")}
    saved = DatasetDict(
        {
            ("validation" if s == "dev" else s): HFDataset.from_list(
                [{**r, "domain": r.get("domain", "in-domain")} for r in part]
            )
            for s, part in by_split.items()
        }
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    from_hf = load_items(resolve_dataset("generic", tmp_path / "saved"), ["train", "dev", "test"])
    assert [(it.id, it.answers, it.subject) for it in from_hf] == [
        (it.id, it.answers, it.subject) for it in base
    ]


@pytest.mark.parametrize(
    ("reader", "rows", "message"),
    [
        (
            "popqa",
            [{"subj": "A", "prop": "capital of", "obj": "B", "question": "Q?"}],
            r"row 1: no 'possible_answers' \(PopQA needs subj, prop, obj, question, "
            r"possible_answers\)",
        ),
        (
            "popqa",
            [
                {
                    "subj": "A",
                    "prop": "capital of",
                    "obj": "B",
                    "question": "Q?",
                    "possible_answers": "B, C",
                }
            ],
            r"row 1: 'possible_answers' 'B, C' is not a list",
        ),
        (
            "popqa",
            [
                {
                    "subj": "A",
                    "prop": "height",
                    "obj": "B",
                    "question": "Q?",
                    "possible_answers": "[]",
                }
            ],
            r"row 1: 'prop' 'height' is not one of PopQA's",
        ),
        (
            "generic",
            [{"question": "Q?", "answers": "[1, 2]"}],
            r"row 1: 'answers' is not a list of strings",
        ),
        ("generic", [{"question": "Q?"}], r"row 1: no 'answers'"),
        ("generic", [{"question": "Q?", "answers": ["a"], "split": "val2"}], r"'split' 'val2'"),
    ],
    ids=[
        "missing-column",
        "answers-not-json",
        "unknown-prop",
        "answers-not-strings",
        "no-answers",
        "bad-split",
    ],
)
def test_bad_tables_are_one_line_errors(
    tmp_path: Path, reader: str, rows: list, message: str
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SftscopeError, match=message) as exc:
        resolve_dataset(reader, path)
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["eval", "--model", "m", "--data", reader, "--data-dir", str(path), "--out", str(out)]
    )
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("error: ")
    assert not out.exists()


def user_templates(tmp_path: Path) -> Path:
    """Three mapping templates per relation: fewer than the paper's 21 is fine when asked for."""
    path = tmp_path / "templates.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "generic": {
                    "where": {
                        "question": "Which country is {subject} in?",
                        "mapping": [
                            "{subject} is in",
                            "{subject} lies in the country of",
                            "The country of {subject} is",
                        ],
                    },
                    "cap": {
                        "question": "What is the capital of {subject}?",
                        "mapping": [
                            "The capital of {subject} is",
                            "{subject}'s capital is",
                            "{subject} is governed from",
                        ],
                    },
                }
            }
        )
    )
    return path


def test_probe_eval_and_grid_on_popqa_and_generic_tables(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    generic = write_jsonl(tmp_path / "qa.jsonl", generic_rows())
    templates = user_templates(tmp_path)
    probe = run_probe(
        ProbeConfig(
            model=str(tiny_model_dir),
            data="generic",
            data_dir=generic,
            method="likelihood",
            templates=3,
            templates_file=templates,
            device="cpu",
            out=tmp_path / "probe",
        )
    )
    assert probe.n_probed == 24
    too_many = ProbeConfig(
        model=str(tiny_model_dir),
        data="generic",
        data_dir=generic,
        templates=4,
        templates_file=templates,
        out=tmp_path / "p4",
    )
    with pytest.raises(SftscopeError, match="'templates': 4 > the 3 mapping templates"):
        run_probe(too_many)
    ecfg = EvalConfig(
        model=str(tiny_model_dir),
        data="generic",
        data_dir=generic,
        max_new_tokens=4,
        device="cpu",
        out=tmp_path / "eval",
    )
    summary = run_eval(ecfg)
    assert summary.ood.n == 8 and summary.in_domain.n == 8

    popqa = write_tsv(tmp_path / "popqa.tsv", popqa_rows())
    for data, path, extra in (
        ("popqa", popqa, {}),
        ("generic", generic, {"templates_file": str(templates)}),
    ):
        (tmp_path / data).mkdir()
        cfg_path = grid_yaml(
            tmp_path / data,
            tiny_model_dir,
            data=data,
            data_dir=str(path),
            levels=["mixed"],
            sizes=[4],
            probe={"method": "likelihood", "templates": 3, "chunk_size": 8, **extra},
            kl={"enabled": False},
        )
        cfg = load_config(GridConfig, cfg_path)
        Grid(cfg).run()
        assert (Path(cfg.out) / "eval" / "mixed-4-0" / "summary.json").exists()


def test_popqa_templates_cover_its_relations() -> None:
    from sftscope.data.templates import MIN_TEMPLATES, load_templates

    table = load_templates("popqa")
    assert set(table) == {r.id for r in POPQA_RELATIONS}
    for rel in POPQA_RELATIONS:
        assert table[rel.id].question == rel.question_template
        assert len(table[rel.id].mapping) >= MIN_TEMPLATES


def test_the_question_probe_needs_no_templates_nor_subjects(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Relation-less QA (no subject, no templates): few-shot question prompts, same levels."""
    rows = [
        {
            "question": f"Which country is {c} {i} in?",
            "answers": [k],
            "split": "train" if i % 4 else "test",
        }
        for i, (c, k) in enumerate(zip(CITIES * 3, COUNTRIES * 3, strict=True))
    ]
    path = write_jsonl(tmp_path / "plain.jsonl", rows)
    cfg = ProbeConfig(
        model=str(tiny_model_dir),
        data="generic",
        data_dir=path,
        split="test",
        method="question",
        templates=3,
        samples=2,
        slick_shots=2,
        max_new_tokens=4,
        device="cpu",
        out=tmp_path / "q",
    )
    summary = run_probe(cfg)
    assert summary.n_probed == 6 and sum(summary.histogram["total"]) == 6
    records = [json.loads(line) for line in (tmp_path / "q" / "mastery.jsonl").open()]
    assert all(r["n_total"] == 6 and len(r["per_set"]) == 3 for r in records)
    assert "per_template" not in records[0]
    with pytest.raises(SftscopeError, match="no mapping templates for dataset generic .give "):
        run_probe(cfg.model_copy(update={"method": "sampling", "out": tmp_path / "s"}))
