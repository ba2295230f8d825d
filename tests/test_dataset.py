"""The EntityQuestions-layout loader: records, subjects, aliases, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftscope.data.dataset import dataset_stats, load_items, open_dataset, recover_subject
from sftscope.data.entityquestions import EQ_RELATIONS, IN_DOMAIN_IDS, OOD_IDS
from sftscope.data.readers import resolve_dataset
from sftscope.data.schema import Domain
from sftscope.errors import SftscopeError

from helpers import EQ_FIXTURE, SHARED_EQ, write_dataset


def test_paper_domain_split() -> None:
    assert len(EQ_RELATIONS) == 24
    assert set(IN_DOMAIN_IDS) == {
        "P17",
        "P19",
        "P20",
        "P36",
        "P69",
        "P131",
        "P159",
        "P276",
        "P495",
        "P740",
    }
    assert len(OOD_IDS) == 14 and not set(IN_DOMAIN_IDS) & set(OOD_IDS)


def test_loads_real_fixture_files() -> None:
    ds = open_dataset(EQ_FIXTURE)
    assert ds.name == "entityquestions"
    items = load_items(ds, ["test"], ["P17", "P26", "P40"])
    assert len(items) == 60
    first = items[0]
    assert first.id == "P17/test/0"
    assert first.question == "Which country is Darreh Sib located in?"
    assert first.subject == "Darreh Sib"
    assert first.answers == ("Iran",)
    assert first.domain is Domain.IN_DOMAIN and first.split == "test"
    spouse = next(it for it in items if it.relation == "P26")
    assert spouse.subject == "Carol II of Romania"
    assert spouse.answers == ("Zizi Lambrino", "Helen of Greece and Denmark")
    assert spouse.domain is Domain.OOD
    child = next(it for it in items if it.relation == "P40")
    assert child.subject == "Cedric Wyatt"  # "Who is {subject}'s child?"
    assert all(it.subject for it in items)


def test_ids_stable_under_limit_and_relation_order() -> None:
    ds = open_dataset(EQ_FIXTURE)
    all_items = {it.id: it for it in load_items(ds, ["train"])}
    some = load_items(ds, ["train"], ["P36", "P17"], limit_per_relation=5)
    assert [it.id for it in some][:5] == [f"P36/train/{i}" for i in range(5)]
    assert all(all_items[it.id] == it for it in some)


def test_alias_table_extends_gold_answers() -> None:
    items = load_items(open_dataset(EQ_FIXTURE), ["test"], ["P17"])
    usa = next(it for it in items if it.answers == ("United States of America",))
    assert "USA" in usa.accepted and "United States" in usa.accepted
    assert usa.target == "United States of America"


def test_recover_subject() -> None:
    assert recover_subject("Who is {subject}'s child?", "Who is James's child?") == "James"
    assert recover_subject("Where was {subject} born?", "Where did X die?") is None


def test_unrecoverable_subjects_are_kept_and_counted(tmp_path: Path) -> None:
    root = write_dataset(
        tmp_path / "ds",
        {
            "test": {
                "P19": [
                    {"question": "Where was Ada born?", "answers": ["London"]},
                    {"question": "Birthplace of Bob?", "answers": ["Paris"]},
                ]
            }
        },
    )
    items = load_items(open_dataset(root), ["test"], ["P19"])
    assert [it.subject for it in items] == ["Ada", None]
    row = next(r for r in dataset_stats(open_dataset(root), ["test"]) if r.relation == "P19")
    assert row.counts["test"] == 2 and row.no_subject == 1


def test_custom_relations_from_dataset_json(tmp_path: Path) -> None:
    meta = {
        "name": "toy",
        "relations": [
            {
                "id": "X1",
                "name": "colour",
                "domain": "out-of-domain",
                "question_template": "What colour is {subject}?",
            }
        ],
    }
    rows = [{"question": "What colour is grass?", "answers": ["green"], "popularity": 7}]
    root = write_dataset(tmp_path / "toy", {"dev": {"X1": rows}}, meta)
    (item,) = load_items(open_dataset(root), ["dev"])
    assert (item.subject, item.popularity, item.domain) == ("grass", 7.0, Domain.OOD)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"question": "Where was A born?", "answers": ["B"]},', "malformed JSON"),
        (
            json.dumps(
                [
                    {"question": "Where was A born?", "answers": ["B"]},
                    {"question": "Where was C born?", "answers": []},
                ]
            ),
            "item 1: item has no answers",
        ),
        (json.dumps([{"question": "Where was A born?"}]), "item 0: 'answers' must be"),
        (json.dumps({"question": "q"}), "expected a JSON list"),
    ],
)
def test_bad_files_name_file_and_item(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "test").mkdir()
    path = tmp_path / "test" / "P19.test.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SftscopeError, match=message) as err:
        load_items(open_dataset(tmp_path), ["test"], ["P19"])
    assert str(path) in str(err.value)


def test_missing_dir_unknown_relation_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SftscopeError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(SftscopeError, match="unknown relation 'P999'"):
        load_items(open_dataset(EQ_FIXTURE), ["test"], ["P999"])
    with pytest.raises(SftscopeError, match="P19.test.json: file not found"):
        load_items(open_dataset(EQ_FIXTURE), ["test"], ["P19"])
    with pytest.raises(SftscopeError, match="needs --data-dir"):
        resolve_dataset("entityquestions", None)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_EQ.is_dir(), reason="shared EntityQuestions copy not present")
def test_subject_recovery_rate_over_full_dataset() -> None:
    """Every one of the 220,703 questions fits its relation's template (measured: 100%)."""
    ds = open_dataset(SHARED_EQ)
    rows = dataset_stats(ds)
    total = sum(sum(r.counts.values()) for r in rows)
    missing = sum(r.no_subject for r in rows)
    print(f"subject recovery: {total - missing}/{total} = {(total - missing) / total:.4%}")
    assert total == 220_703
    assert missing / total < 0.001
