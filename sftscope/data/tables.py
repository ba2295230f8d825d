"""Datasets kept in one table: PopQA (``--data popqa``) and any QA file (``--data generic``).

A table is a JSONL, JSON (a list of objects), CSV, TSV or Parquet file, or a folder saved by
``datasets`` (``save_to_disk``), or a folder of such files named by split (``train.jsonl``,
``dev.csv``, ``test.parquet``; ``validation`` counts as dev). Each row becomes one raw item of
:mod:`sftscope.data.dataset`, so every stage reads these like the EntityQuestions layout.

* **PopQA** (Mallen et al., 2023): columns ``subj``, ``prop``, ``obj``, ``question``,
  ``possible_answers`` (a list, or a string holding one: JSON, or a Python literal as some
  exports write it) and ``s_pop`` (the subject's popularity).
  Its 16 relations are the values of ``prop``, with spaces as underscores (``place_of_birth``);
  their mapping templates are in ``templates.yaml`` under ``popqa``.
* **generic**: a question and its answers, and optionally ``relation`` (default ``qa``),
  ``subject``, ``split``, ``popularity`` and ``domain`` (``in-domain``, the default, or
  ``out-of-domain``), each in the column a mapping names (``--columns``) or one recognised by
  name, answers in any of their forms, and SFT rows too (prompt/completion, chat messages,
  Alpaca): :mod:`sftscope.data.columns`. The probe's templates come from a user file
  (``templates_file``, dataset key ``generic``) and need a ``subject`` per item.

Splits: a ``split`` column, else the file's split name, else a stable hash of the item (its
relation and question) puts 80 % in train, 10 % in dev and 10 % in test: PopQA ships a single
split, and a grid needs train and test facts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftscope.data.columns import Columns, answer_list, answers_of, optional, question_text
from sftscope.data.dataset import Dataset
from sftscope.data.schema import SPLITS, Domain, Relation
from sftscope.errors import SftscopeError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
SPLIT_NAMES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "test": "test"}
Row = dict[str, Any]

_IN, _OOD = Domain.IN_DOMAIN, Domain.OOD
POPQA_RELATIONS: tuple[Relation, ...] = tuple(
    Relation(id=prop.replace(" ", "_"), name=prop, question_template=question, domain=domain)
    for prop, question, domain in [
        # people and places: the training pool and the in-domain test set
        ("occupation", "What is {subject}'s occupation?", _IN),
        ("place of birth", "In what city was {subject} born?", _IN),
        ("father", "Who is the father of {subject}?", _IN),
        ("mother", "Who is the mother of {subject}?", _IN),
        ("religion", "What is the religion of {subject}?", _IN),
        ("sport", "What sport does {subject} play?", _IN),
        ("country", "In what country is {subject}?", _IN),
        ("capital of", "What is {subject} the capital of?", _IN),
        ("capital", "What is the capital of {subject}?", _IN),
        ("color", "What color is {subject}?", _IN),
        # creative works: out-of-domain test only
        ("genre", "What genre is {subject}?", _OOD),
        ("producer", "Who was the producer of {subject}?", _OOD),
        ("director", "Who was the director of {subject}?", _OOD),
        ("screenwriter", "Who was the screenwriter for {subject}?", _OOD),
        ("composer", "Who was the composer of {subject}?", _OOD),
        ("author", "Who is the author of {subject}?", _OOD),
    ]
)


@dataclass(frozen=True)
class TableSource:
    """Raw items grouped by (relation, split), read once from a table."""

    path: Path
    groups: dict[tuple[str, str], list[Row]]
    # the table's own rows behind each group's items, with their positions in the table
    originals: dict[tuple[str, str], list[tuple[int, Row]]] = field(default_factory=dict)

    def has(self, relation: str, split: str) -> bool:
        return (relation, split) in self.groups

    def rows(self, relation: str, split: str) -> list[Row]:
        return self.groups.get((relation, split), [])

    def where(self, relation: str, split: str) -> str:
        return f"{self.path} ({relation}, {split})"

    def original_rows(self, relation: str, split: str) -> list[tuple[int, Row]]:
        """(position in the table, the row as read) behind each of ``rows(relation, split)``:
        every column the user's file has, not only the ones an item is made of."""
        return self.originals.get((relation, split), [])


def read_table(path: Path) -> list[tuple[str, Row]]:
    """(where, row) for every row of the table at ``path``; ``where`` names file and row. A
    split-named file's rows carry that split unless they name their own."""
    if not path.exists():
        raise SftscopeError(f"{path}: file not found")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _saved_by_datasets(path)
        files = sorted(
            p for p in path.iterdir() if p.suffix in SUFFIXES and p.stem.lower() in SPLIT_NAMES
        )
        if not files:
            raise SftscopeError(
                f"{path}: no table files named train, dev or test ({', '.join(SUFFIXES)})"
            )
        out = []
        for f in files:
            split = SPLIT_NAMES[f.stem.lower()]
            out += [(w, {**r, "split": r.get("split") or split}) for w, r in read_table(f)]
        return out
    if path.suffix not in SUFFIXES:
        raise SftscopeError(f"{path}: unknown table format (expected {', '.join(SUFFIXES)})")
    rows = _read_rows(path)
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise SftscopeError(f"{path}: row {bad + 1}: expected an object of columns")
    return [(f"{path}: row {i + 1}", r) for i, r in enumerate(rows)]


def _read_rows(path: Path) -> list[Any]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".csv", ".tsv"):
            delimiter = "\t" if path.suffix == ".tsv" else ","
            return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))
        if path.suffix == ".json":
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise SftscopeError(f"{path}: expected a JSON list of rows")
            return rows
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SftscopeError(f"{path}: line {n}: malformed JSON ({e.msg})") from None
        return out
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        if isinstance(e, SftscopeError):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SftscopeError(f"{path}: unreadable table ({first})") from None


def _saved_by_datasets(path: Path) -> list[tuple[str, Row]]:
    """A folder written by ``Dataset.save_to_disk`` (or a ``DatasetDict``: its splits)."""
    from datasets import DatasetDict, load_from_disk

    saved = load_from_disk(str(path))
    parts = saved.items() if isinstance(saved, DatasetDict) else [(None, saved)]
    out = []
    for name, part in parts:
        split = SPLIT_NAMES.get(str(name).lower()) if name is not None else None
        if name is not None and split is None:
            raise SftscopeError(f"{path}: split {name!r} is not train, dev/validation or test")
        for i, row in enumerate(part.to_list()):
            where = f"{path}: {name or 'rows'} row {i + 1}"
            out.append((where, {**row, "split": row.get("split") or split} if split else row))
    return out


def _need(row: Row, where: str, columns: tuple[str, ...], reader_name: str) -> None:
    missing = [c for c in columns if row.get(c) in (None, "")]
    if missing:
        raise SftscopeError(
            f"{where}: no '{missing[0]}' ({reader_name} needs {', '.join(columns)})"
        )


def _split_of(row: Row, where: str, key: str, value: Any = None) -> str:
    """The split ``value`` names (default: the row's ``split``), else the hash split of ``key``."""
    value = row.get("split") if value is None else value
    if value in (None, ""):
        bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10
        return "train" if bucket < 8 else "dev" if bucket == 8 else "test"
    split = SPLIT_NAMES.get(str(value).lower())
    if split is None:
        raise SftscopeError(f"{where}: 'split' {value!r} is not one of {', '.join(SPLITS)}")
    return split


def _popularity(row: Row, where: str, column: str | None) -> float | None:
    value = row.get(column) if column is not None else None
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SftscopeError(f"{where}: '{column}' {value!r} is not a number") from None


def _dataset(
    name: str, path: Path, relations: list[Relation], rows: list[tuple[str, str, Row, Row]]
) -> Dataset:
    """``rows``: (relation, split, item, the table's row) in table order."""
    groups: dict[tuple[str, str], list[Row]] = {}
    originals: dict[tuple[str, str], list[tuple[int, Row]]] = {}
    for pos, (rel, split, item, raw) in enumerate(rows):
        groups.setdefault((rel, split), []).append(item)
        originals.setdefault((rel, split), []).append((pos, raw))
    source = TableSource(path, groups, originals)
    return Dataset(name, path, {r.id: r for r in relations}, source)


def read_popqa(path: Path) -> Dataset:
    by_prop = {r.name: r for r in POPQA_RELATIONS}
    rows = []
    for where, row in read_table(path):
        _need(row, where, ("subj", "prop", "obj", "question", "possible_answers"), "PopQA")
        rel = by_prop.get(str(row["prop"]))
        if rel is None:
            raise SftscopeError(
                f"{where}: 'prop' {row['prop']!r} is not one of PopQA's 16 relations"
            )
        answers = [
            str(row["obj"]),
            *answer_list(row["possible_answers"], where, "possible_answers", single=False),
        ]
        item = {
            "question": row["question"],
            "answers": list(dict.fromkeys(answers)),
            "subject": str(row["subj"]),
            "popularity": _popularity(row, where, "s_pop"),
        }
        rows.append((rel.id, _split_of(row, where, f"{rel.id}\n{row['question']}"), item, row))
    return _dataset("popqa", path, list(POPQA_RELATIONS), rows)


def read_generic(path: Path, columns: Mapping[str, str] | None = None) -> Dataset:
    """Any QA or SFT table; ``columns`` maps item fields to the table's columns (the others
    are recognised by name: :mod:`sftscope.data.columns`)."""
    relations: dict[str, Relation] = {}
    rows = []
    cols = Columns(columns)
    for where, row in read_table(path):
        question = question_text(row, where, cols)
        rid = str(optional(row, "relation", cols) or "qa")
        domain = _domain(optional(row, "domain", cols), where, cols(row)["domain"])
        rel = relations.get(rid)
        if rel is None:  # built once per relation, not per row
            rel = relations[rid] = Relation(id=rid, name=rid, question_template=None, domain=domain)
        if rel.domain != domain:
            raise SftscopeError(f"{where}: relation {rid!r} is both in-domain and out-of-domain")
        subject = optional(row, "subject", cols)
        item = {
            "question": question,
            "answers": answers_of(row, where, cols),
            "subject": str(subject) if subject is not None else None,
            "popularity": _popularity(row, where, cols(row)["popularity"]),
        }
        split = _split_of(row, where, f"{rid}\n{question}", optional(row, "split", cols))
        rows.append((rid, split, item, row))
    if not rows:
        raise SftscopeError(f"{path}: no rows")
    return _dataset("generic", path, list(relations.values()), rows)


DOMAINS = {"in-domain": _IN, "in_domain": _IN, "id": _IN, "out-of-domain": _OOD, "ood": _OOD}


def _domain(value: Any, where: str, name: str | None) -> Domain:
    value = str(value or "in-domain").lower()
    if value not in DOMAINS:
        raise SftscopeError(f"{where}: '{name}' {value!r} is not in-domain or out-of-domain")
    return DOMAINS[value]
