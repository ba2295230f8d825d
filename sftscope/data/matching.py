"""Answer matching between generated text and gold answer strings (aliases included).

Closed-book QA scores free-form generations, so the same fact arrives in many surface forms:
"U.S.A." / "USA", "Saint-Étienne" / "Saint Étienne", a decomposed "é" from one tokenizer and a
precomposed one from another. Both sides therefore go through one :func:`normalize` before any
comparison, and two criteria are offered on top of it:

* :func:`contains_answer` -- the paper's criterion: some gold alias occurs in the prediction on
  word boundaries, so "in Paris, France." counts for "Paris" but "Indiana" never counts for
  "India".
* :func:`exact_match` -- the lm-evaluation-harness / SQuAD convention: after normalisation and
  dropping the articles "a", "an", "the", the prediction equals some alias.

Word boundaries are whitespace after normalisation (punctuation and symbols become spaces).
Consequences worth knowing, all deliberate and covered by tests:

* Scripts written without spaces (Chinese, Japanese, Thai) only match whole whitespace-delimited
  tokens: "東京" is *not* found in "東京都" nor in "首都は東京です". Substring matching there
  would also accept "京都" inside "東京都"; a script-aware segmenter would be needed to do better.
* Apostrophes become spaces, so the possessive "India's capital" contains the alias "India"
  (models write possessives far more often than they drop an apostrophe); the price is that
  "Peoples Republic" does not equal "People's Republic" -- list such spellings in the alias table.
* A run of initials -- single letters each followed by a period, spaced or not -- becomes one
  word, so abbreviations and initialled names compare equal ("U.S.A." == "USA", "J.K. Rowling"
  == "J. K. Rowling" == "J.K.Rowling"); any other period is a word break like other punctuation,
  so "Paris.It was" contains "Paris". A decimal point is a break too ("3.5" -> "3 5", on both
  sides alike), and so is a thousands comma ("1,000" -> "1 000", which does not equal "1000").
  Initials written without periods stay separate words ("J K Rowling" != "JK Rowling").
* Accents are significant unless ``fold_accents=True``; folding strips combining marks only, so
  letters without a decomposition ("ø", "ł", "đ") stay as they are.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["MatchResult", "contains_answer", "exact_match", "match", "normalize", "settled"]

# A run of initials: a letter that starts a word, then a period, then (spaces allowed) more such
# letters with periods. "U.S.A." -> "usa", "J. K. Rowling" -> "jk rowling"; other periods are
# spaced like other punctuation ("St. Petersburg" -> "st petersburg", "Paris.It" -> "paris it").
# Apostrophes are spaced too, so "India's" -> "india s" still contains "india".
_INITIALS = re.compile(r"(?<!\w)[^\W\d_]\.(?:\s*[^\W\d_]\.)*")
# Invisible format characters that only split or glue a word visually.
_INVISIBLE = "\u00ad\u2060\ufeff"  # soft hyphen, word joiner, byte-order mark
_ARTICLES = frozenset({"a", "an", "the"})


def _build_table() -> dict[int, str | None]:
    """Map every punctuation (P*) and symbol (S*) code point to a space, bar the deletions.

    Only planes 0-3 are scanned: planes 4-13 are unassigned and 14-16 hold no P*/S*
    characters, and scanning all of Unicode would cost ~0.2 s at import.
    """
    table: dict[int, str | None] = {
        cp: " " for cp in range(0x40000) if unicodedata.category(chr(cp))[0] in "PS"
    }
    table[0x200B] = " "  # zero-width space marks a word break (e.g. in Thai text)
    table[0x02BC] = " "  # modifier letter apostrophe is a letter (Lm) but used as an apostrophe
    for ch in _INVISIBLE:
        table[ord(ch)] = None
    return table


_TABLE = _build_table()
# ASCII inputs (most generations) take a bytes.translate path, ~5x faster than str.translate.
_ASCII_TABLE = bytes(32 if _TABLE.get(b, b) == " " else b for b in range(256))


_OPEN_INITIALS = re.compile(r"(?:(?<!\w)[^\W\d_]\.\s*)+$")
_MAYBE_INITIAL = re.compile(r"[^\W\d_]?$|[^\W\d_]\.")  # a word that starts as an initial may


def settled(text: str) -> str:
    """The start of ``text`` that no continuation can change once normalised: up to its last
    whitespace (normalisation merges words only within a run of initials), less a run of
    initials at its end while the word after it may still start as one ("J. K" may become
    "J. K.", one word "jk"; so may "J. K.com")."""
    cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
    if cut <= 0:
        return ""
    head = text[:cut]
    return _OPEN_INITIALS.sub("", head) if _MAYBE_INITIAL.match(text[cut + 1 :]) else head


def _join_initials(text: str) -> str:
    """Each run of initials as one word followed by a space: "j. k. rowling" -> "jk  rowling"."""
    if "." not in text:
        return text
    return _INITIALS.sub(lambda m: "".join(c for c in m[0] if c.isalpha()) + " ", text)


def normalize(text: str, *, fold_accents: bool = False) -> str:
    """Canonicalise *text* for answer comparison.

    NFKC (precomposed and decomposed accents compare equal, full-width "ＵＳＡ" becomes "usa"),
    casefold, join runs of initials into one word ("J. K." -> "jk"), turn other punctuation
    (periods and apostrophes too) and symbols into spaces, collapse whitespace. With
    ``fold_accents`` combining marks are dropped too ("São Paulo" -> "sao paulo").
    """
    if text.isascii():  # fast path: ASCII is NFKC-stable and has no combining marks
        raw = _join_initials(text.lower()).encode("ascii").translate(_ASCII_TABLE)
        return " ".join(raw.decode("ascii").split())
    text = unicodedata.normalize("NFKC", text).casefold()
    if fold_accents:
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    # casefold can emit decomposed sequences (e.g. "İ" -> "i̇"); recompose for stability.
    text = unicodedata.normalize("NFC", text)
    return " ".join(_join_initials(text).translate(_TABLE).split())


def _drop_articles(normalized: str) -> str:
    """Remove "a", "an", "the" as whole words from an already-normalised string."""
    return " ".join(tok for tok in normalized.split(" ") if tok not in _ARTICLES)


@lru_cache(maxsize=1 << 16)
def _gold_forms(alias: str, fold_accents: bool) -> tuple[str, str]:
    """Return (space-padded containment needle, exact-match form) for one alias, or "" each.

    Cached because the same gold strings are scored against many generations; predictions are
    not cached since they are mostly unique and would only evict gold entries.
    """
    norm = normalize(alias, fold_accents=fold_accents)
    return (f" {norm} " if norm else "", _drop_articles(norm))


def _check_answers(answers: Sequence[str]) -> None:
    # A bare str is a Sequence[str] of characters: "Paris" would silently match any "p".
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of alias strings, not a single str")


def _contains(padded_pred: str, answers: Sequence[str], fold_accents: bool) -> bool:
    for alias in answers:
        needle = _gold_forms(alias, fold_accents)[0]
        if needle and needle in padded_pred:
            return True
    return False


def _exact(pred_exact: str, answers: Sequence[str], fold_accents: bool) -> bool:
    for alias in answers:
        form = _gold_forms(alias, fold_accents)[1]
        if form and form == pred_exact:
            return True
    return False


def contains_answer(prediction: str, answers: Sequence[str], *, fold_accents: bool = False) -> bool:
    """True if some non-empty alias occurs in *prediction* as a run of whole words.

    This is the paper's knowledge criterion: it tolerates the extra words a model generates
    around the answer without letting "India" match "Indiana".
    """
    _check_answers(answers)
    padded = f" {normalize(prediction, fold_accents=fold_accents)} "
    return _contains(padded, answers, fold_accents)


def exact_match(prediction: str, answers: Sequence[str], *, fold_accents: bool = False) -> bool:
    """True if *prediction* equals some non-empty alias once normalised and stripped of articles.

    Matches the lm-evaluation-harness / SQuAD convention, so "The Netherlands." equals
    "Netherlands" but "Paris, France" does not equal "Paris".
    """
    _check_answers(answers)
    pred = _drop_articles(normalize(prediction, fold_accents=fold_accents))
    return _exact(pred, answers, fold_accents)


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Both criteria for one prediction: ``containment`` (paper) and ``exact`` (SQuAD)."""

    containment: bool
    exact: bool


def match(prediction: str, answers: Sequence[str], *, fold_accents: bool = False) -> MatchResult:
    """Score *prediction* with both criteria, normalising it only once."""
    _check_answers(answers)
    norm = normalize(prediction, fold_accents=fold_accents)
    return MatchResult(
        containment=_contains(f" {norm} ", answers, fold_accents),
        exact=_exact(_drop_articles(norm), answers, fold_accents),
    )
