"""Tests for answer matching: normalisation, word-boundary containment and exact match."""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Callable

import pytest

from sftscope.data.matching import MatchResult, contains_answer, exact_match, match, normalize


def nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def nfd(s: str) -> str:
    return unicodedata.normalize("NFD", s)


ACCENTED = ["Zürich", "Besançon", "São Paulo", "Saint-Étienne", "Hồ Chí Minh"]


# --------------------------------------------------------------------------- normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("U.S.A.", "usa"),
        ("USA", "usa"),
        ("St. Petersburg", "st petersburg"),
        ("People's Republic of China", "people s republic of china"),
        ("People\u2019s Republic", "people s republic"),  # right single quotation mark
        ("\u2018Paris\u2019", "paris"),  # curly single quotes are deleted
        ("People\u02bcs", "people s"),  # modifier letter apostrophe
        ("Saint-Étienne", "saint étienne"),
        ("Tanzania, United Republic of", "tanzania united republic of"),
        ('"Paris" (France)', "paris france"),
        ("AC/DC", "ac dc"),
        ("Rock & Roll", "rock roll"),  # symbols (S*) become spaces too
        ("Paris — France", "paris france"),  # em dash
        ("  lots   of\t\nspace  ", "lots of space"),
        ("ＵＳＡ", "usa"),  # full-width letters, NFKC
        ("Ｕ．Ｓ．Ａ．", "usa"),  # full-width full stops become '.': initials, joined
        # runs of initials are one word, spaced or not; any other period is a break
        ("J.K. Rowling", "jk rowling"),
        ("J. K. Rowling", "jk rowling"),
        ("J.K.Rowling", "jk rowling"),
        ("George R. R. Martin", "george rr martin"),
        ("U.S. Army", "us army"),
        ("Washington, D.C.", "washington dc"),
        ("Paris.It was", "paris it was"),
        ("Dr.No", "dr no"),
        ("3.5", "3 5"),
        ("Plan B.", "plan b"),
        ("Ж. Б. Петров", "жб петров"),  # initials in any script
        ("Straße", "strasse"),  # casefold, not lower
        ("ΣΊΣΥΦΟΣ", "σίσυφοσ"),  # casefold maps final sigma to sigma
        ("soft\u00adhyphen", "softhyphen"),
        ("zero\u200bwidth", "zero width"),
        ("", ""),
        (" .,;!? ", ""),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize("word", ACCENTED)
def test_normalize_composed_and_decomposed_agree(word: str) -> None:
    assert nfc(word) != nfd(word)  # the fixture really differs at code-point level
    assert normalize(nfc(word)) == normalize(nfd(word))
    assert normalize(nfd(word)) == unicodedata.normalize("NFC", normalize(nfd(word)))


def test_normalize_composes_combining_sequence() -> None:
    assert normalize("e\u0301") == "é"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("São Paulo", "sao paulo"),
        ("Zürich", "zurich"),
        ("Besançon", "besancon"),
        (nfd("Saint-Étienne"), "saint etienne"),
        ("Łódź", "łodz"),  # ł has no decomposition, so it is kept
        ("USA", "usa"),
    ],
)
def test_normalize_fold_accents(raw: str, expected: str) -> None:
    assert normalize(raw, fold_accents=True) == expected


def test_normalize_keeps_accents_by_default() -> None:
    assert normalize("São Paulo") == "são paulo"


@pytest.mark.parametrize("ch", [chr(i) for i in range(128)])
def test_ascii_fast_path_agrees_with_unicode_path(ch: str) -> None:
    # A non-ASCII prefix forces the general (NFKC + str.translate) path.
    text = f"A{ch}b.C'd {ch} e"
    expected = " ".join(filter(None, ["é", normalize(text)]))
    assert normalize("é " + text) == expected


@pytest.mark.parametrize("raw", ["U.S.A.", "São Paulo", "ＵＳＡ", nfd("Zürich"), "A -- b"])
def test_normalize_is_idempotent(raw: str) -> None:
    once = normalize(raw)
    assert normalize(once) == once
    folded = normalize(raw, fold_accents=True)
    assert normalize(folded, fold_accents=True) == folded


# --------------------------------------------------------------------------- contains_answer


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        # word boundaries
        ("Indiana", ["India"], False),
        ("The answer is Indiana.", ["India"], False),
        ("India", ["Indiana"], False),
        ("It is in India.", ["India"], True),
        ("Paris", ["Paris"], True),
        ("in Paris, France.", ["Paris"], True),
        ("Parisian cafés", ["Paris"], False),
        ("a Paris-based firm", ["Paris"], True),
        # multi-word alias at start / middle / end
        ("New York City", ["New York"], True),
        ("He was born in New York City in 1950.", ["New York"], True),
        ("Born in New York", ["New York"], True),
        ("New Yorker magazine", ["New York"], False),
        ("York, New", ["New York"], False),
        # case
        ("PARIS", ["paris"], True),
        ("paris", ["PARIS"], True),
        # punctuation
        ("The U.S.A. of course", ["USA"], True),
        ("the USA", ["U.S.A."], True),
        ("St Petersburg", ["St. Petersburg"], True),
        ("St. Petersburg, Russia", ["St Petersburg"], True),
        ("Saint Étienne", ["Saint-Étienne"], True),
        ("Saint-Étienne", ["Saint Étienne"], True),
        ("Peoples Republic of China", ["People's Republic of China"], False),
        ("People\u2019s Republic of China", ["People's Republic of China"], True),
        ("People's Republic of China", ["People\u2019s Republic of China"], True),
        ("tanzania united republic of", ["Tanzania, United Republic of"], True),
        ("It's the United Republic of Tanzania", ["Tanzania, United Republic of"], False),
        ("Answer: (Paris)", ["Paris"], True),
        ('"Paris"', ["Paris"], True),
        # initials (EntityQuestions authors, spouses, performers) and glued sentences
        ("The author is J. K. Rowling.", ["J.K. Rowling"], True),
        ("J.K. Rowling wrote it", ["J. K. Rowling"], True),
        ("by J.K.Rowling", ["J. K. Rowling"], True),
        ("by J. Rowling", ["J.K. Rowling"], False),
        ("Paris.It was founded", ["Paris"], True),
        ("It is Paris.The city", ["Paris"], True),
        ("in Washington, D.C.", ["Washington DC"], True),
        ("a Parisian.", ["Paris"], False),
        # possessive: the apostrophe is spaced, so "India's" still contains "India"
        ("India's capital", ["India"], True),
        ("Indiana's capital", ["India"], False),
        # numbers
        ("in 1984", ["1984"], True),
        ("in 19845", ["1984"], False),
        ("1984", ["in 1984"], False),
        # full-width (NFKC)
        ("ＵＳＡ", ["USA"], True),
        ("It is the USA", ["ＵＳＡ"], True),
        # aliases: any one suffices
        ("Holland", ["Netherlands", "Holland"], True),
        ("Belgium", ["Netherlands", "Holland"], False),
        # empty alias / alias list never match
        ("anything at all", [], False),
        ("", [], False),
        ("anything", [""], False),
        ("anything", ["   "], False),
        ("", [""], False),
        ("...", ["..."], False),  # alias empty after normalisation
        ("Paris", ["", "Paris"], True),
        # CJK: whitespace-token boundaries, so no substring matches (documented choice)
        ("東京", ["東京"], True),
        ("東京都", ["東京"], False),
        ("首都は東京です", ["東京"], False),
        ("首都は 東京 です", ["東京"], True),
        ("首都は東京。", ["東京"], False),  # "。" splits, but "首都は東京" stays one token
        ("Tokyo (東京)", ["東京"], True),
        # other non-Latin scripts with spaces behave like Latin
        ("Столица — Москва.", ["Москва"], True),
        ("Столица — Москвариум.", ["Москва"], False),
        ("العاصمة هي القاهرة", ["القاهرة"], True),
    ],
)
def test_contains_answer(prediction: str, answers: list[str], expected: bool) -> None:
    assert contains_answer(prediction, answers) is expected


@pytest.mark.parametrize("word", ACCENTED)
def test_contains_answer_composed_vs_decomposed(word: str) -> None:
    prediction = "The answer is {}."
    assert contains_answer(prediction.format(nfd(word)), [nfc(word)])
    assert contains_answer(prediction.format(nfc(word)), [nfd(word)])


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [("Sao Paulo", "São Paulo"), ("Zurich", "Zürich"), ("Besancon", "Besançon")],
)
def test_contains_answer_accent_folding_is_opt_in(prediction: str, gold: str) -> None:
    assert not contains_answer(prediction, [gold])
    assert not contains_answer(gold, [prediction])
    assert contains_answer(prediction, [gold], fold_accents=True)
    assert contains_answer(gold, [prediction], fold_accents=True)
    assert contains_answer(nfd(gold), [prediction], fold_accents=True)


def test_fold_accents_does_not_leak_through_cache() -> None:
    # Same alias under both settings: the cached gold forms must be keyed on the flag.
    assert contains_answer("Sao Paulo", ["São Paulo"], fold_accents=True)
    assert not contains_answer("Sao Paulo", ["São Paulo"])
    assert contains_answer("Sao Paulo", ["São Paulo"], fold_accents=True)


def test_answers_may_be_any_sequence() -> None:
    assert contains_answer("Paris", ("Lyon", "Paris"))
    assert exact_match("Paris", ("Lyon", "Paris"))


@pytest.mark.parametrize("fn", [contains_answer, exact_match, match])
def test_bare_string_answers_rejected(fn: Callable[..., object]) -> None:
    with pytest.raises(TypeError):
        fn("p", "Paris")


# --------------------------------------------------------------------------- exact_match


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("France", ["France"], True),
        ("France.", ["France"], True),
        ("France.  \n", ["France"], True),
        ("  france", ["FRANCE"], True),
        ("The Netherlands", ["Netherlands"], True),
        ("Netherlands", ["The Netherlands"], True),
        ("the netherlands.", ["The Netherlands"], True),
        ("A Tale of Two Cities", ["Tale of Two Cities"], True),
        ("an apple", ["apple"], True),
        ("U.S.A.", ["USA"], True),
        ("J.K.Rowling", ["J. K. Rowling"], True),
        ("J. K. Rowling.", ["J.K. Rowling"], True),
        ("J K Rowling", ["J.K. Rowling"], False),  # initials without periods stay apart
        ("Paris.It", ["Paris"], False),
        ("St Petersburg", ["St. Petersburg"], True),
        ("Saint-Étienne", ["Saint Étienne"], True),
        ("Peoples Republic of China", ["People\u2019s Republic of China"], False),
        ("tanzania united republic of", ["Tanzania, United Republic of"], True),
        ("ＵＳＡ", ["USA"], True),
        ("Holland", ["Netherlands", "Holland"], True),
        # articles only as whole words
        ("Theater", ["ater"], False),
        ("Anatolia", ["Anatolia"], True),
        # extra words break exact match
        ("Paris, France", ["Paris"], False),
        ("in 1984", ["1984"], False),
        ("New York City", ["New York"], False),
        ("India", ["Indiana"], False),
        ("Sao Paulo", ["São Paulo"], False),
        # empty never matches, including an alias that is nothing but an article
        ("", [""], False),
        ("", [], False),
        ("Paris", [], False),
        ("the", ["The"], False),
        ("", ["The"], False),
        ("東京", ["東京"], True),
        ("東京都", ["東京"], False),
    ],
)
def test_exact_match(prediction: str, answers: list[str], expected: bool) -> None:
    assert exact_match(prediction, answers) is expected


@pytest.mark.parametrize("word", ACCENTED)
def test_exact_match_composed_vs_decomposed(word: str) -> None:
    assert exact_match(nfd(word), [nfc(word)])
    assert exact_match(nfc(word), [nfd(word)])


def test_exact_match_fold_accents() -> None:
    assert not exact_match("Sao Paulo", ["São Paulo"])
    assert exact_match("Sao Paulo", ["São Paulo"], fold_accents=True)


# --------------------------------------------------------------------------- match


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("Paris", ["Paris"], MatchResult(containment=True, exact=True)),
        ("The capital is Paris.", ["Paris"], MatchResult(containment=True, exact=False)),
        ("The Netherlands", ["Netherlands"], MatchResult(containment=True, exact=True)),
        # exact (articles dropped) without containment (articles kept)
        ("Netherlands", ["The Netherlands"], MatchResult(containment=False, exact=True)),
        ("Indiana", ["India"], MatchResult(containment=False, exact=False)),
        ("", [""], MatchResult(containment=False, exact=False)),
        ("Sao Paulo", ["São Paulo"], MatchResult(containment=False, exact=False)),
    ],
)
def test_match(prediction: str, answers: list[str], expected: MatchResult) -> None:
    assert match(prediction, answers) == expected


@pytest.mark.parametrize(
    ("prediction", "answers"),
    [
        ("in Paris, France.", ["Paris"]),
        ("The Netherlands", ["Netherlands", "Holland"]),
        ("Sao Paulo", ["São Paulo"]),
        (nfd("Zürich"), ["Zurich"]),
        ("Indiana", ["India"]),
        ("", []),
    ],
)
@pytest.mark.parametrize("fold", [False, True])
def test_match_agrees_with_individual_functions(
    prediction: str, answers: list[str], fold: bool
) -> None:
    result = match(prediction, answers, fold_accents=fold)
    assert result.containment is contains_answer(prediction, answers, fold_accents=fold)
    assert result.exact is exact_match(prediction, answers, fold_accents=fold)


def test_match_result_is_frozen() -> None:
    result = MatchResult(containment=True, exact=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.exact = True  # type: ignore[misc]
