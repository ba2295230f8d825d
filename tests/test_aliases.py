"""Alias table: the paper's directional synonyms, symmetric variants, robust lookup."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from sftscope.data.aliases import AliasTable, _lookup_key
from sftscope.errors import SftscopeError


@pytest.fixture(scope="module")
def table() -> AliasTable:
    return AliasTable.default()


def test_default_is_cached_and_nonempty(table: AliasTable) -> None:
    assert AliasTable.default() is table
    assert len(table) > 300
    assert "Harvard Law School" in table
    assert "Harvard Law School" in list(table)


@pytest.mark.parametrize(
    ("gold", "accepted"),
    [
        ("Harvard Law School", "Harvard University"),
        ("New York City", "New York"),
        ("United States of America", "USA"),
        ("University of Cambridge", "Cambridge"),
        ("Rio de Janeiro", "Rio de"),
        ("People's Republic of China", "China"),
        ("United Arab Emirates", "The Emirates"),
        ("Bosnia and Herzegovina", "Bosna i Hercegovina"),
    ],
)
def test_paper_table_entries(table: AliasTable, gold: str, accepted: str) -> None:
    assert accepted in table.aliases_for([gold])


@pytest.mark.parametrize(
    ("gold", "not_accepted"),
    [
        ("Harvard University", "Harvard Law School"),
        ("New York", "New York City"),
        ("Cambridge", "University of Cambridge"),
        ("Macedonia", "North Macedonia"),
    ],
)
def test_directional_entries_do_not_reverse(
    table: AliasTable, gold: str, not_accepted: str
) -> None:
    assert not_accepted not in table.aliases_for([gold])


@pytest.mark.parametrize(
    "group",
    [
        ("Czech Republic", "Czechia"),
        ("Eswatini", "Swaziland"),
        ("Myanmar", "Burma"),
        ("Ivory Coast", "Côte d'Ivoire"),
        ("Netherlands", "Holland"),
        ("Vietnam", "Viet Nam"),
        ("East Timor", "Timor-Leste"),
        ("Democratic Republic of the Congo", "Congo-Kinshasa"),
        ("United Kingdom", "UK"),
        ("Tanzania", "United Republic of Tanzania"),
    ],
)
def test_symmetric_country_groups(table: AliasTable, group: tuple[str, str]) -> None:
    a, b = group
    assert b in table.aliases_for([a])
    assert a in table.aliases_for([b])


def test_no_alias_is_a_common_short_word(table: AliasTable) -> None:
    """Matching is whole-word containment: "US" would match the pronoun "us"."""
    banned = {"us", "u s", "congo", "america", "england", "dollar", "franc", "real", "sol"}
    for answer in table:
        for alias in table.aliases_for([answer]):
            assert _lookup_key(alias) not in banned, (answer, alias)


@pytest.mark.parametrize(
    "spelling",
    [
        "côte d’ivoire",  # curly apostrophe, lower case
        "COTE D'IVOIRE",  # no accent, upper case
        unicodedata.normalize("NFD", "Côte d'Ivoire"),  # decomposed accent
        "  Côte   d'Ivoire ",  # stray whitespace
        "Ｃôｔｅ d'Ivoire",  # full-width letters (NFKC)
    ],
)
def test_lookup_robust_to_case_punctuation_unicode(table: AliasTable, spelling: str) -> None:
    assert "Ivory Coast" in table.aliases_for([spelling])


def test_aliases_exclude_answers_deduplicate_and_keep_order(table: AliasTable) -> None:
    out = table.aliases_for(["United States", "USA", "United States of America"])
    assert "USA" not in out and "United States of America" not in out
    assert len(out) == len(set(out))
    assert out == table.aliases_for(["United States", "USA", "United States of America"])
    assert table.aliases_for(["no such entity"]) == ()


def test_user_file_and_merge(tmp_path: Path, table: AliasTable) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "- [Big Apple, New York City]\n"
        "- {answer: Gotham, accept: [New York City]}\n"
        "- same: [Foo, Bar]\n",
        encoding="utf-8",
    )
    mine = AliasTable.from_file(path)
    assert mine.aliases_for(["Big Apple"]) == ("New York City",)
    assert mine.aliases_for(["Gotham"]) == ("New York City",)
    assert "Gotham" not in mine.aliases_for(["New York City"])
    merged = table.merge(mine)
    assert merged.aliases_for(["New York City"]) == ("New York", "Big Apple")
    assert len(merged) == len(table) + 4  # Big Apple, Gotham, Foo, Bar (NYC already there)
    assert table.aliases_for(["Foo"]) == ()  # merge leaves the default untouched


def test_empty_file_is_an_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert len(AliasTable.from_file(path)) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- [a, b]\n- 42\n", "entry 2"),
        ("- [only]\n", "entry 1: 'same' needs at least two"),
        ("- {answer: x}\n", "entry 1: keys must be"),
        ("- {answer: x, accept: []}\n", "entry 1: 'accept' must be a non-empty list"),
        ("- {answer: '', accept: [y]}\n", "entry 1: 'answer' must be"),
        ("- [a, b]\n- {same: [a, 3]}\n", "entry 2: 'same' contains 3"),
        ("- {same: [a, b], answer: c}\n", "entry 1: keys must be"),
        ("answer: x\n", "expected a list"),
        ("- [a, b\n", "invalid YAML"),
    ],
)
def test_malformed_user_file_names_file_and_entry(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SftscopeError, match="bad.yaml") as err:
        AliasTable.from_file(path)
    assert message in str(err.value)


def test_missing_user_file(tmp_path: Path) -> None:
    with pytest.raises(SftscopeError, match="nope.yaml: alias file not found"):
        AliasTable.from_file(tmp_path / "nope.yaml")
