"""Which dataset ``--data NAME --data-dir PATH`` means: the readers registry
(:data:`sftscope.registry.READERS`, one line per reader) and the one call every stage makes.

A reader is a function ``(data_dir) -> Dataset`` in a module of its own: the EntityQuestions
layout (``entityquestions``, ``testbed``: :func:`~sftscope.data.dataset.open_dataset`), the
built-in geography set (``geo``), PopQA and generic QA tables (:mod:`sftscope.data.tables`).
A reader whose columns are not fixed (``generic``) also takes ``columns``, the config's column
mapping, as a keyword; the others refuse a mapping rather than ignore it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path

from sftscope.data.dataset import Dataset
from sftscope.errors import SftscopeError
from sftscope.registry import READERS


def resolve_dataset(
    data: str, data_dir: str | Path | None = None, columns: Mapping[str, str] | None = None
) -> Dataset:
    """The reader ``data`` names over ``data_dir`` (with the column mapping ``columns``); a
    one-line error for an unknown reader, for a missing folder where the reader needs one, or
    for a mapping given to a reader with fixed columns."""
    if data not in READERS:
        raise SftscopeError(
            f"--data {data!r}: no such dataset reader (known: {', '.join(READERS.names)})"
        )
    entry = READERS[data]
    if data_dir is None and entry.needs_dir:
        raise SftscopeError(f"--data {data} needs --data-dir (the dataset folder or file)")
    reader = entry.load()
    path = Path(data_dir) if data_dir is not None else None
    if not columns:
        return reader(path)
    if "columns" not in inspect.signature(reader).parameters:
        raise SftscopeError(
            f"--columns: --data {data} reads fixed columns; a column mapping is for a reader "
            "of any table (--data generic)"
        )
    return reader(path, columns=dict(columns))
