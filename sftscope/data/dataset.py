"""Read a QA dataset into typed records, whatever its format.

A reader (:mod:`sftscope.data.readers`; ``--data name``) turns a path into a :class:`Dataset`:
its relations and an item source, which yields raw items per (relation, split). Every item then
goes through one parser, so every format gets the same checks and the same stable ids.

* ``entityquestions`` (and ``testbed``): the EntityQuestions layout,
  ``ROOT/{split}/{relation}.{split}.json``, each a JSON list of objects with ``question`` and
  ``answers`` (and optionally ``subject`` and ``popularity``). An optional ``ROOT/dataset.json``
  names the relations, their question templates and domains; without it the folder is taken to
  be EntityQuestions. The built-in geography set (``geo``) is written in this layout.
* ``popqa`` and ``generic``: a table file (JSONL, JSON, CSV, TSV, Parquet, or a folder saved by
  ``datasets``), see :mod:`sftscope.data.tables`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from sftscope.data.aliases import AliasTable
from sftscope.data.entityquestions import EQ_RELATIONS
from sftscope.data.schema import SPLITS, Domain, QAItem, Relation, item_id
from sftscope.errors import SftscopeError
from sftscope.io import read_json

log = logging.getLogger(__name__)

DATASET_META = "dataset.json"


class ItemSource(Protocol):
    """Where a dataset's raw items come from, per relation and split."""

    def has(self, relation: str, split: str) -> bool: ...

    def rows(self, relation: str, split: str) -> list[Any]:
        """The raw items (``question``, ``answers``, optional ``subject``, ``popularity``), in a
        stable order: an item's index is part of its id."""
        ...

    def where(self, relation: str, split: str) -> str:
        """What to name in an error about these rows (a file)."""
        ...


@dataclass(frozen=True)
class LayoutSource:
    """The EntityQuestions layout: ``ROOT/{split}/{relation}.{split}.json``."""

    root: Path

    def path(self, relation: str, split: str) -> Path:
        return self.root / split / f"{relation}.{split}.json"

    def has(self, relation: str, split: str) -> bool:
        return self.path(relation, split).exists()

    def rows(self, relation: str, split: str) -> list[Any]:
        return _read_file(self.path(relation, split))

    def where(self, relation: str, split: str) -> str:
        return str(self.path(relation, split))


@dataclass(frozen=True)
class Dataset:
    """A dataset, its relations (in a stable order) and where its items come from."""

    name: str
    root: Path
    relations: dict[str, Relation]
    source: ItemSource

    def relation_ids(self, domain: Domain | None = None) -> list[str]:
        return [r.id for r in self.relations.values() if domain is None or r.domain == domain]

    def has(self, relation: str, split: str) -> bool:
        """Whether the dataset has items of ``relation`` in ``split``."""
        return self.source.has(relation, split)

    def select(self, relations: Sequence[str] | None) -> list[Relation]:
        """The named relations (all when None); an unknown id is an error naming it."""
        if not relations:
            return list(self.relations.values())
        unknown = [r for r in relations if r not in self.relations]
        if unknown:
            known = ",".join(self.relations)
            raise SftscopeError(
                f"{self.root}: unknown relation {unknown[0]!r} in {self.name} (known: {known})"
            )
        return [self.relations[r] for r in relations]


def open_dataset(root: str | Path) -> Dataset:
    """Open a dataset folder; fails with one line when it is missing or its metadata is bad."""
    root = Path(root)
    if not root.is_dir():
        raise SftscopeError(f"data directory {root} does not exist")
    meta_path = root / DATASET_META
    if not meta_path.exists():
        return Dataset("entityquestions", root, {r.id: r for r in EQ_RELATIONS}, LayoutSource(root))
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        relations = [Relation.model_validate(r) for r in meta["relations"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as e:
        first = str(e).splitlines()[0]
        raise SftscopeError(f"{meta_path}: invalid dataset metadata ({first})") from None
    return Dataset(
        str(meta.get("name", root.name)), root, {r.id: r for r in relations}, LayoutSource(root)
    )


@lru_cache(maxsize=256)
def _template_regex(template: str) -> re.Pattern[str]:
    before, after = template.split("{subject}", 1)
    return re.compile(rf"^\s*{re.escape(before)}(?P<subject>.+?){re.escape(after)}\s*$")


def recover_subject(template: str, question: str) -> str | None:
    """The subject filled into ``template`` to make ``question``, or None if it does not fit."""
    m = _template_regex(template).match(question)
    return m.group("subject").strip() if m else None


def _read_file(path: Path) -> list:
    rows = read_json(path)
    if not isinstance(rows, list):
        raise SftscopeError(f"{path}: expected a JSON list of items")
    return rows


def _parse_item(raw: object, source: str, index: int, rel: Relation, split: str) -> QAItem:
    where = f"{source}: item {index}"
    if not isinstance(raw, dict):
        raise SftscopeError(f"{where}: expected an object with 'question' and 'answers'")
    question = raw.get("question")
    answers = raw.get("answers")
    if not isinstance(question, str) or not question.strip():
        raise SftscopeError(f"{where}: missing or empty 'question'")
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise SftscopeError(f"{where}: 'answers' must be a list of strings")
    answers = [a.strip() for a in answers if a.strip()]
    if not answers:
        raise SftscopeError(f"{where}: item has no answers")
    subject = raw.get("subject") or (
        recover_subject(rel.question_template, question) if rel.question_template else None
    )
    popularity = raw.get("popularity")
    return QAItem(
        id=item_id(rel.id, split, index),
        relation=rel.id,
        subject=subject,
        question=question.strip(),
        answers=tuple(dict.fromkeys(answers)),
        split=split,  # type: ignore[arg-type]
        domain=rel.domain,
        popularity=float(popularity) if popularity is not None else None,
    )


def load_items(
    dataset: Dataset,
    splits: Iterable[str] = ("test",),
    relations: Sequence[str] | None = None,
    limit_per_relation: int | None = None,
    aliases: AliasTable | None = None,
    warn: bool = True,
) -> list[QAItem]:
    """Load items, relation by relation, in file order (so ids and ``limit`` are stable).

    Gold answers are extended with the alias table (the packaged default unless one is given).
    Items whose subject cannot be recovered from the question are kept with ``subject=None``
    and counted in a warning (unless ``warn`` is false): later stages decide what to do with
    them.
    """
    aliases = aliases if aliases is not None else AliasTable.default()
    items: list[QAItem] = []
    for split in splits:
        if split not in SPLITS:
            raise SftscopeError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        chosen = dataset.select(relations)
        if not relations:  # "all relations" = those the folder has for this split
            absent = [r.id for r in chosen if not dataset.has(r.id, split)]
            if len(absent) == len(chosen):
                raise SftscopeError(f"{dataset.root / split}: no relation files for split {split}")
            if absent:
                log.warning("%s: no %s items for %s", dataset.root, split, ",".join(absent))
            chosen = [r for r in chosen if r.id not in absent]
        for rel in chosen:
            rows = dataset.source.rows(rel.id, split)
            if limit_per_relation is not None:
                rows = rows[:limit_per_relation]
            where = dataset.source.where(rel.id, split)
            for i, raw in enumerate(rows):
                item = _parse_item(raw, where, i, rel, split)
                extra = aliases.aliases_for(item.answers)
                items.append(item.model_copy(update={"aliases": extra}) if extra else item)
    if warn:
        warn_no_subject(items)
    return items


def warn_no_subject(items: Iterable[QAItem]) -> None:
    """One warning counting the items without a subject, per relation (``warn=False`` of
    :func:`load_items` leaves it to the caller: a stage that needs no subjects, or one that
    loads several parts)."""
    missing = Counter(it.relation for it in items if it.subject is None)
    if missing:
        detail = ", ".join(f"{r}: {n}" for r, n in sorted(missing.items()))
        log.warning("subject not recovered for %d items (%s)", sum(missing.values()), detail)


@dataclass(frozen=True)
class StatsRow:
    relation: str
    domain: str
    counts: dict[str, int]
    no_subject: int


def dataset_stats(dataset: Dataset, splits: Sequence[str] = SPLITS) -> list[StatsRow]:
    """Per relation: items per split (files that are absent count 0) and unrecovered subjects."""
    none = AliasTable()
    rows = []
    for rel in dataset.relations.values():
        counts, no_subject = {}, 0
        for split in splits:
            if not dataset.has(rel.id, split):
                counts[split] = 0
                continue
            items = load_items(dataset, [split], [rel.id], aliases=none)
            counts[split] = len(items)
            no_subject += sum(it.subject is None for it in items)
        rows.append(StatsRow(rel.id, rel.domain.value, counts, no_subject))
    return rows
