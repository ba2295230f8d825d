"""Which columns of a QA or SFT table hold an item's fields, and the many forms answers come in,
so files read as their makers keep them: NQ-open's ``answer`` list, FlashRAG's
``golden_answers``, PopQA exports with Python-literal lists, Alpaca, TRL's chat rows.

A field's column is the one the mapping names (``--columns answers=golden_answers``), else the
first of its candidates (:data:`CANDIDATES`, in that order) that the row has as a key: one rule
per row, no guessing from values, so a table with two candidates reads its first one, always.
Questions are strings, or chat turns (``messages``, TRL's conversational ``prompt``): the user
turn before the last assistant turn; Alpaca's ``instruction`` takes its ``input`` after a line
break. Answers: see :func:`answer_list`.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any

from sftscope.errors import SftscopeError

Row = dict[str, Any]

# Candidates per field, in priority order: the QA columns first, then the SFT shapes
# (prompt/completion, chat messages), whose values are unwrapped below.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "question": ("question", "query", "instruction", "prompt", "input", "messages"),
    "answers": (
        "answers",
        "answer",
        "golden_answers",
        "possible_answers",
        "aliases",
        "target",
        "targets",
        "output",
        "completion",
        "messages",
    ),
    "subject": ("subject", "subj"),
    "relation": ("relation",),
    "split": ("split",),
    "popularity": ("popularity", "s_pop"),
    "domain": ("domain",),
}
SFT_COLUMNS = frozenset({"prompt", "completion", "messages"})  # not a question and its answer

# sftscope's own SFT prompt (sftscope.prompts.sft_prompt) and end-of-text tokens that a ready
# ``completion`` may end with: a prompt/completion file made for training reads back as QA.
_SFT_PROMPT = re.compile(r"^\s*<\|question\|>\s*(?P<q>.*?)\s*<\|answer\|>\s*$", re.DOTALL)
_END_TOKENS = re.compile(r"(?:\s*(?:<\|[^<>|\s]+\|>|</s>|<eos>|<end_of_turn>))+\s*$")


class Columns:
    """Which column holds each field (see the module docstring) under a mapping, resolved once
    per set of row keys: a table repeats its keys, so a row costs one dict lookup."""

    def __init__(self, mapping: Mapping[str, str] | None = None) -> None:
        self.mapping = dict(mapping or {})
        self._seen: dict[tuple[str, ...], dict[str, str | None]] = {}
        self._last: tuple[Row | None, dict[str, str | None]] = (None, {})

    def __call__(self, row: Row) -> dict[str, str | None]:
        if row is self._last[0]:  # the fields of one row are asked for one after another
            return self._last[1]
        keys = tuple(row)
        found = self._seen.get(keys)
        if found is None:
            found = {
                f: self.mapping.get(f) or next((c for c in names if c in row), None)
                for f, names in CANDIDATES.items()
            }
            if len(self._seen) < 256:  # rows with ever new keys: no unbounded cache
                self._seen[keys] = found
        self._last = (row, found)
        return found


def optional(row: Row, field: str, columns: Columns) -> Any:
    """The value of an optional field; None when the row has no such column or it is empty."""
    name = columns(row)[field]
    found = row.get(name) if name is not None else None
    return None if found in (None, "") else found


def required(row: Row, field: str, where: str, columns: Columns) -> str:
    """The column of a field every row needs, present and non-empty; else a one-line error."""
    name = columns(row)[field]
    if name is not None and row.get(name) not in (None, "", []):
        return name
    if field in columns.mapping:
        raise SftscopeError(f"{where}: no '{name}' (--columns {field}={name})")
    shown = "', '".join(CANDIDATES[field])
    raise SftscopeError(
        f"{where}: no '{name or field}' (looked for '{shown}'; --columns {field}=NAME "
        "names another)"
    )


def question_text(row: Row, where: str, columns: Columns) -> str:
    """The question of a row: a string (sftscope's SFT prompt unwrapped), the user turn of
    chat turns, or Alpaca's instruction and its input."""
    name = required(row, "question", where, columns)
    raw = row[name]
    if isinstance(raw, str):
        m = _SFT_PROMPT.match(raw) if raw.lstrip().startswith("<|") else None
        text = m.group("q") if m else raw
    elif is_chat(raw):
        text = turn(raw, "user", where, name)
    else:
        raise SftscopeError(f"{where}: '{name}' is not a string or a list of chat turns")
    extra = row.get("input")
    if name == "instruction" and isinstance(extra, str) and extra.strip():
        text = f"{text}\n{extra}"
    if not text.strip():
        raise SftscopeError(f"{where}: '{name}' is empty")
    return text


def answers_of(row: Row, where: str, columns: Columns) -> list[str]:
    """The answers of a row (:func:`answer_list` of its answers column)."""
    name = required(row, "answers", where, columns)
    return answer_list(row[name], where, name)


def answer_list(raw: Any, where: str, column: str, *, single: bool = True) -> list[str]:
    """A column holding answers, in any of its forms: a list of strings; a string holding one,
    as JSON (PopQA's ``possible_answers``) or a Python literal (``"['a', 'b']"``, parsed with
    ``ast.literal_eval``, never evaluated); a single string (unless ``single`` is false; an
    SFT completion's end-of-text token dropped); chat turns (the last assistant turn); an
    object with ``value`` and ``aliases`` (TriviaQA) or ``text`` (SQuAD)."""
    if is_chat(raw):
        return [turn(raw, "assistant", where, column)]
    if isinstance(raw, dict):
        raw = _answer_object(raw, where, column)
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("[") and text.endswith("]"):
            raw = _list_literal(text, where, column)
        elif single:
            return [_END_TOKENS.sub("", raw) if text.endswith(">") else raw]
        else:
            raise SftscopeError(f"{where}: '{column}' {_short(raw)} is not a list")
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        kind = "a list of strings" if isinstance(raw, list | tuple) else "a list or a string"
        raise SftscopeError(f"{where}: '{column}' is not {kind}")
    return raw  # as read, not a copy: a big table's rows are many objects already


def _list_literal(text: str, where: str, column: str) -> Any:
    """A list written in a string: JSON, else a Python literal."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise SftscopeError(
            f"{where}: '{column}' {_short(text)} is neither a JSON nor a Python list"
        ) from None


def _answer_object(raw: dict, where: str, column: str) -> Any:
    if "value" in raw or "aliases" in raw:  # TriviaQA: the answer, then its aliases
        first = [raw["value"]] if isinstance(raw.get("value"), str) else []
        aliases = raw.get("aliases") or []
        return list(dict.fromkeys([*first, *aliases])) if isinstance(aliases, list) else aliases
    if "text" in raw:  # SQuAD: text (a list, or one string) and answer_start
        return [raw["text"]] if isinstance(raw["text"], str) else raw["text"]
    raise SftscopeError(f"{where}: '{column}' is an object without 'value', 'aliases' or 'text'")


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def is_chat(raw: Any) -> bool:
    """Whether a value is meant as chat turns: a list whose first item is an object with a
    ``role`` (:func:`chat_turns` checks every turn)."""
    return isinstance(raw, list) and bool(raw) and isinstance(raw[0], dict) and "role" in raw[0]


def chat_turns(raw: Any, where: str, column: str) -> list[dict[str, str]]:
    """Chat turns as ``{role, content}`` with text content; a one-line error otherwise."""
    if not is_chat(raw):
        raise SftscopeError(f"{where}: '{column}' is not a list of chat turns ({{role, content}})")
    out = []
    for k, t in enumerate(raw, 1):
        ok = isinstance(t, dict) and isinstance(t.get("role"), str)
        if not ok or not isinstance(t.get("content"), str):
            raise SftscopeError(f"{where}: '{column}' turn {k}: role and content must be text")
        out.append({"role": t["role"], "content": t["content"]})
    return out


def last_assistant(turns: list[dict[str, Any]]) -> int | None:
    """The index of the last assistant turn, or None."""
    return next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "assistant"), None)


def turn(raw: Any, role: str, where: str, column: str) -> str:
    """``assistant``: the last assistant turn's text; ``user``: the user turn before it (the
    last user turn when there is no assistant turn, as in a conversational prompt)."""
    turns = chat_turns(raw, where, column)
    end = last_assistant(turns)
    if role == "assistant":
        if end is None:
            raise SftscopeError(f"{where}: '{column}' has no assistant turn")
        return turns[end]["content"]
    users = [t for t in turns[:end] if t["role"] == "user"]
    if not users:
        raise SftscopeError(f"{where}: '{column}' has no user turn before the assistant's")
    return users[-1]["content"]
