"""Alias table: extra strings accepted as correct for a gold answer.

Closed-book QA is scored by string matching, so a model that answers "USA" for the gold
"United States of America" must not be marked wrong. The table is data
(``aliases.yaml``, packaged with sftscope) so it can be reviewed and extended without
code changes. Entries come in two forms:

* ``{answer: X, accept: [...]}`` -- directional: when the gold answer is X these strings
  are also accepted, but not the reverse (Ye et al. accept "Harvard University" for the
  gold "Harvard Law School"; the law school is not an answer for the university).
* ``{same: [...]}`` or a bare list -- symmetric: every member accepts all the others
  (country-name variants such as "Czech Republic" / "Czechia").

Lookup keys ignore case, accents, punctuation and Unicode form, so the gold answer
"côte d’ivoire" finds the entry written as "Côte d'Ivoire".
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sftscope.errors import SftscopeError
from sftscope.io import read_yaml

_NON_WORD = re.compile(r"[\W_]+")
_SPACE = re.compile(r"\s+")


def _lookup_key(text: str) -> str:
    """Key for finding a gold answer: case, accents, punctuation and spacing ignored."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    return " ".join(_NON_WORD.sub(" ", text).split())


def _dedup_key(text: str) -> str:
    """Key for deduplicating accepted strings: keeps accents and punctuation, since a
    matcher that does not fold them needs both "Côte d'Ivoire" and "Cote d'Ivoire"."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class AliasTable:
    """Gold answer -> extra accepted strings, with normalised lookup."""

    def __init__(self, entries: Mapping[str, Sequence[str]] | None = None) -> None:
        self._accept: dict[str, list[str]] = {}
        self._display: dict[str, str] = {}
        for answer, accepted in (entries or {}).items():
            self._add(answer, accepted)

    # -- construction -------------------------------------------------------------------

    def _add(self, answer: str, accepted: Sequence[str]) -> None:
        key = _lookup_key(answer)
        self._display.setdefault(key, answer)
        bucket = self._accept.setdefault(key, [])
        seen = {_dedup_key(s) for s in bucket} | {_dedup_key(answer)}
        for s in accepted:
            d = _dedup_key(s)
            if d not in seen:
                seen.add(d)
                bucket.append(s)

    @classmethod
    def default(cls) -> AliasTable:
        """The packaged table (Ye et al.'s synonym table plus geography variants)."""
        return _default_table()

    @classmethod
    def from_file(cls, path: str | Path) -> AliasTable:
        """Load a user-supplied YAML table; malformed content names the file and entry."""
        path = Path(path)
        return cls.from_data(read_yaml(path, "alias file"), source=str(path))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> AliasTable:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SftscopeError(f"{source}: invalid YAML ({_one_line(e)})") from None
        return cls.from_data(data, source)

    @classmethod
    def from_data(cls, data: Any, source: str = "<data>") -> AliasTable:
        """Build from parsed YAML: a list of entries (see the packaged aliases.yaml)."""
        if data is None:
            return cls()
        if not isinstance(data, list):
            raise SftscopeError(f"{source}: expected a list of alias entries at top level")
        table = cls()
        for i, entry in enumerate(data, 1):
            for answer, accepted in _parse_entry(entry, f"{source}: entry {i}"):
                table._add(answer, accepted)
        return table

    def merge(self, other: AliasTable) -> AliasTable:
        """A new table with both tables' entries (this table's strings first)."""
        merged = AliasTable()
        for table in (self, other):
            for key, accepted in table._accept.items():
                merged._add(table._display[key], accepted)
        return merged

    # -- lookup -------------------------------------------------------------------------

    def aliases_for(self, answers: Sequence[str]) -> tuple[str, ...]:
        """Extra accepted strings for these gold answers, in table order, without the
        answers themselves or duplicates."""
        seen = {_dedup_key(a) for a in answers}
        out: list[str] = []
        for answer in answers:
            for s in self._accept.get(_lookup_key(answer), ()):
                d = _dedup_key(s)
                if d not in seen:
                    seen.add(d)
                    out.append(s)
        return tuple(out)

    def __contains__(self, answer: object) -> bool:
        return isinstance(answer, str) and _lookup_key(answer) in self._accept

    def __len__(self) -> int:
        return len(self._accept)

    def __iter__(self) -> Iterator[str]:
        """Gold answers that have aliases, as first written in the table."""
        return iter(self._display[k] for k in self._accept)

    def __repr__(self) -> str:
        return f"AliasTable({len(self)} answers)"


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _strings(value: Any, where: str, field: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise SftscopeError(f"{where}: '{field}' must be a non-empty list of strings")
    out = []
    for s in value:
        if not isinstance(s, str) or not s.strip():
            raise SftscopeError(f"{where}: '{field}' contains {s!r}, not a non-empty string")
        out.append(s.strip())
    return out


def _parse_entry(entry: Any, where: str) -> list[tuple[str, list[str]]]:
    """One YAML entry -> (gold answer, accepted strings) pairs."""
    if isinstance(entry, list):
        entry = {"same": entry}
    if not isinstance(entry, dict):
        raise SftscopeError(
            f"{where}: expected a list, {{same: [...]}} or {{answer: ..., accept: [...]}}, "
            f"got {type(entry).__name__}"
        )
    keys = set(entry)
    if keys == {"same"}:
        members = _strings(entry["same"], where, "same")
        if len({_dedup_key(m) for m in members}) < 2:
            raise SftscopeError(f"{where}: 'same' needs at least two different strings")
        return [(m, [o for o in members if o != m]) for m in members]
    if keys == {"answer", "accept"}:
        answer = entry["answer"]
        if not isinstance(answer, str) or not answer.strip():
            raise SftscopeError(f"{where}: 'answer' must be a non-empty string")
        return [(answer.strip(), _strings(entry["accept"], where, "accept"))]
    raise SftscopeError(
        f"{where}: keys must be exactly 'same' or 'answer' + 'accept', got {sorted(map(str, keys))}"
    )


@functools.cache
def _default_table() -> AliasTable:
    ref = resources.files("sftscope.data").joinpath("aliases.yaml")
    return AliasTable.from_yaml(ref.read_text(encoding="utf-8"), source=str(ref))
