"""Mapping templates: full coverage of both datasets, well-formed, varied; loader errors."""

from __future__ import annotations

import difflib
import itertools
import re
import unicodedata
from pathlib import Path

import pytest
import yaml

from sftscope.data.entityquestions import EQ_RELATIONS
from sftscope.data.geography import GEO_RELATIONS
from sftscope.data.schema import Relation
from sftscope.data.templates import (
    MIN_TEMPLATES,
    PLACEHOLDER,
    RelationTemplates,
    fill,
    load_templates,
)
from sftscope.errors import SftscopeError
from sftscope.testbed.world import RELATIONS as TESTBED_RELATIONS

DATASETS: dict[str, tuple[Relation, ...]] = {
    "entityquestions": EQ_RELATIONS,
    "geo": GEO_RELATIONS,
    "testbed": TESTBED_RELATIONS,
}
CASES = [(ds, r) for ds, rels in DATASETS.items() for r in rels]
IDS = [f"{ds}-{r.id}" for ds, r in CASES]
_FILLER = {"a", "an", "the", "is", "was"}


def _key(template: str) -> str:
    """Lowercased words, placeholder, punctuation and filler words dropped."""
    words = re.findall(r"[\w'-]+", template.lower().replace(PLACEHOLDER, " "))
    return " ".join(w for w in words if w not in _FILLER)


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_relation_covered(dataset: str) -> None:
    table = load_templates(dataset)
    assert set(table) == {r.id for r in DATASETS[dataset]}
    assert all(isinstance(t, RelationTemplates) and t.relation == rid for rid, t in table.items())


@pytest.mark.parametrize(("dataset", "relation"), CASES, ids=IDS)
def test_relation_templates(dataset: str, relation: Relation) -> None:
    entry = load_templates(dataset)[relation.id]
    assert entry.question == relation.question_template
    mapping = entry.mapping
    # The paper's 21 plus at least one spare.
    assert len(mapping) >= MIN_TEMPLATES + 1
    assert len(set(mapping)) == len(mapping)
    for t in mapping:
        assert t.count(PLACEHOLDER) == 1, t
        assert t == t.strip() and "  " not in t, t
        # Ends where the object begins: no closing punctuation, no blank to fill in.
        assert not unicodedata.category(t[-1]).startswith(("P", "S")), t
        assert "_" not in t, t


@pytest.mark.parametrize(("dataset", "relation"), CASES, ids=IDS)
def test_no_near_duplicates(dataset: str, relation: Relation) -> None:
    mapping = load_templates(dataset)[relation.id].mapping
    keys = [_key(t) for t in mapping]
    dupes = [t for t, k in zip(mapping, keys, strict=True) if keys.count(k) > 1]
    assert not dupes
    for a, b in itertools.combinations(mapping, 2):
        ratio = difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()
        assert ratio < 0.9, (a, b, ratio)


def test_packaged_is_cached_and_copied() -> None:
    first = load_templates("geo")
    first.pop("P17")
    again = load_templates("geo")
    assert "P17" in again
    assert again["P36"] is load_templates("geo")["P36"]


def test_fill() -> None:
    assert fill("The capital of {subject} is", "France") == "The capital of France is"
    assert fill("{subject} was born in", "A {weird} name") == "A {weird} name was born in"
    with pytest.raises(SftscopeError, match="placeholder"):
        fill("no placeholder here", "France")


# -- user-supplied files ---------------------------------------------------------------------


def _good_mapping(n: int = MIN_TEMPLATES) -> list[str]:
    return [f"Template number {i} says {{subject}} is in" for i in range(n)]


def _write(tmp_path: Path, mapping: list, question: str = "Where is {subject}?") -> Path:
    path = tmp_path / "mine.yaml"
    data = {"custom": {"P1": {"question": question, "mapping": mapping}}}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_user_file(tmp_path: Path) -> None:
    path = _write(tmp_path, _good_mapping())
    table = load_templates("custom", path)
    assert table["P1"].mapping == tuple(_good_mapping())
    assert load_templates("custom", str(path))["P1"].question == "Where is {subject}?"


def test_a_user_file_may_hold_fewer_than_the_papers_21(tmp_path: Path) -> None:
    """The probe asks for as many as its `templates` setting (and says so when short)."""
    path = _write(tmp_path, _good_mapping(3))
    assert len(load_templates("custom", path)["P1"].mapping) == 3


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (_good_mapping()[:-1] + ["no placeholder"], r"custom/P1: mapping\[20\].*\{subject\}"),
        (_good_mapping()[:-1] + ["{subject} and {subject}"], r"mapping\[20\].*exactly once"),
        ([], r"custom/P1: 0 mapping templates, at least 1"),
        (
            _good_mapping() + [_good_mapping()[3].replace("Template", "TEMPLATE")],
            r"mapping\[21\].*duplicates mapping\[3\]",
        ),
        (_good_mapping()[:-1] + ["{subject} is in "], r"mapping\[20\].*trailing whitespace"),
        (_good_mapping()[:-1] + [7], r"mapping\[20\]: expected a string"),
        ("not a list", r"'mapping' must be a list"),
    ],
    ids=["placeholder", "two-placeholders", "too-few", "duplicate", "whitespace", "type", "list"],
)
def test_bad_user_file(tmp_path: Path, mapping: object, message: str) -> None:
    path = _write(tmp_path, mapping)  # type: ignore[arg-type]
    with pytest.raises(SftscopeError, match=message) as exc:
        load_templates("custom", path)
    assert str(exc.value).startswith(f"{path}: ")
    assert "\n" not in str(exc.value)


def test_bad_question(tmp_path: Path) -> None:
    path = _write(tmp_path, _good_mapping(), question="Where is it?")
    with pytest.raises(SftscopeError, match=r"mine\.yaml: custom/P1: 'question'"):
        load_templates("custom", path)


def test_unknown_dataset_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(SftscopeError, match=r"templates\.yaml: unknown dataset 'nope'.*geo"):
        load_templates("nope")
    path = _write(tmp_path, _good_mapping())
    with pytest.raises(SftscopeError, match=r"mine\.yaml: unknown dataset 'geo' \(known: custom"):
        load_templates("geo", path)
    with pytest.raises(SftscopeError, match="template file not found"):
        load_templates("geo", tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("geo: [unclosed\n", encoding="utf-8")
    with pytest.raises(SftscopeError, match=r"broken\.yaml: invalid YAML") as exc:
        load_templates("geo", broken)
    assert "\n" not in str(exc.value)
    broken.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(SftscopeError, match="expected a mapping of dataset names"):
        load_templates("geo", broken)
