"""Mapping templates for the knowledge-mastery probe, loaded from ``templates.yaml``.

The probe (docs/method.md §2) asks the base model to complete declarative sentence prefixes such as
"{subject} was born in" -- 21 of them per relation in the paper -- and scores a fact by how
often a gold answer follows. The templates are data, not code: they are kept in a packaged
YAML file so they can be reviewed, extended or replaced (``templates_file`` in the probe
config) without touching the probe. The file maps dataset name -> relation id ->
``{question, mapping}``; see its header comment. Loading checks every template a run would
use and fails with one line naming the file and the dataset, relation or template at fault.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftscope.errors import SftscopeError
from sftscope.io import read_yaml

__all__ = [
    "MIN_TEMPLATES",
    "PLACEHOLDER",
    "RelationTemplates",
    "fill",
    "load_templates",
    "packaged_datasets",
]

PLACEHOLDER = "{subject}"
MIN_TEMPLATES = 21  # the paper's N_map
DEFAULT_PATH = Path(__file__).parent / "templates.yaml"


@dataclass(frozen=True)
class RelationTemplates:
    """One relation's question template and its mapping templates, in file order."""

    relation: str
    question: str
    mapping: tuple[str, ...]


def fill(template: str, subject: str) -> str:
    """``template`` with its ``{subject}`` placeholder replaced (no ``str.format``: subjects
    and templates may contain braces)."""
    if PLACEHOLDER not in template:
        raise SftscopeError(f"template {template!r} has no {PLACEHOLDER} placeholder")
    return template.replace(PLACEHOLDER, subject, 1)


def load_templates(dataset: str, path: Path | str | None = None) -> dict[str, RelationTemplates]:
    """Relation id -> templates for ``dataset`` (``entityquestions``, ``geo``, ...).

    ``path`` is a user-supplied YAML file with the packaged file's layout; by default the
    packaged ``templates.yaml`` is used (parsed once per process). The packaged file holds at
    least the paper's 21 templates per relation; a user file may hold fewer (the probe checks
    that a relation has as many as its ``templates`` setting asks for).
    """
    if path is None:
        return dict(_packaged(dataset))
    path = Path(path)
    return _parse_dataset(read_yaml(path, "template file"), dataset, str(path), minimum=1)


@functools.cache
def _packaged(dataset: str) -> dict[str, RelationTemplates]:
    return _parse_dataset(_packaged_data(), dataset, DEFAULT_PATH.name, MIN_TEMPLATES)


def packaged_datasets() -> list[str]:
    """The datasets the packaged file has templates for."""
    return [str(name) for name in _packaged_data()]


@functools.cache
def _packaged_data() -> Any:
    return read_yaml(DEFAULT_PATH, "template file")


def _parse_dataset(
    data: Any, dataset: str, source: str, minimum: int
) -> dict[str, RelationTemplates]:
    if not isinstance(data, dict):
        raise SftscopeError(f"{source}: expected a mapping of dataset names at top level")
    if dataset not in data:
        known = ", ".join(map(str, data)) or "none"
        raise SftscopeError(f"{source}: unknown dataset {dataset!r} (known: {known})")
    relations = data[dataset]
    if not isinstance(relations, dict) or not relations:
        raise SftscopeError(f"{source}: {dataset}: expected a mapping of relation ids")
    return {
        str(rel): _parse_relation(entry, f"{source}: {dataset}/{rel}", str(rel), minimum)
        for rel, entry in relations.items()
    }


def _parse_relation(entry: Any, where: str, relation: str, minimum: int) -> RelationTemplates:
    if not isinstance(entry, dict):
        raise SftscopeError(f"{where}: expected 'question' and 'mapping' keys")
    question = entry.get("question")
    if not isinstance(question, str) or question.count(PLACEHOLDER) != 1:
        raise SftscopeError(f"{where}: 'question' must be a string with one {PLACEHOLDER}")
    mapping = entry.get("mapping")
    if not isinstance(mapping, list):
        raise SftscopeError(f"{where}: 'mapping' must be a list of templates")
    seen: dict[str, int] = {}
    for i, template in enumerate(mapping):
        at = f"{where}: mapping[{i}]"
        if not isinstance(template, str):
            raise SftscopeError(f"{at}: expected a string, got {type(template).__name__}")
        if template.count(PLACEHOLDER) != 1:
            raise SftscopeError(f"{at}: {template!r} must contain {PLACEHOLDER} exactly once")
        if template != template.strip():
            raise SftscopeError(f"{at}: {template!r} has leading or trailing whitespace")
        key = " ".join(template.casefold().split())
        if key in seen:
            raise SftscopeError(f"{at}: {template!r} duplicates mapping[{seen[key]}]")
        seen[key] = i
    if len(mapping) < minimum:
        raise SftscopeError(f"{where}: {len(mapping)} mapping templates, at least {minimum} needed")
    return RelationTemplates(relation=relation, question=question, mapping=tuple(mapping))
