"""Typed records shared by every stage: one relation, one closed-book QA fact."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sftscope.config.base import SPLITS as SPLITS
from sftscope.config.base import Split as Split


class Domain(str, Enum):
    """In-domain relations supply training data; out-of-domain ones only test generalisation."""

    IN_DOMAIN = "in-domain"
    OOD = "out-of-domain"


class Relation(BaseModel):
    """A relation (Wikidata property where one fits) and the question asked about it."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    question_template: str | None = Field(
        description="question with a '{subject}' placeholder; None: the questions have no "
        "common form (a generic QA file), subjects come only from the data"
    )
    domain: Domain

    @field_validator("question_template")
    @classmethod
    def _has_placeholder(cls, v: str | None) -> str | None:
        if v is not None and "{subject}" not in v:
            raise ValueError("question_template must contain '{subject}'")
        return v


class QAItem(BaseModel):
    """One fact as a closed-book question.

    ``answers`` are the dataset's own gold answers (the first one is the SFT target);
    ``aliases`` are extra strings the alias table accepts for them. Matching uses both.
    ``id`` is ``{relation}/{split}/{index}`` with the item's index in its source file, so it
    is stable across runs and subsets.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    relation: str
    subject: str | None
    question: str
    answers: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    split: Split
    domain: Domain
    popularity: float | None = None

    @property
    def accepted(self) -> tuple[str, ...]:
        """Every string that counts as a correct answer: gold answers, then aliases."""
        return self.answers + tuple(a for a in self.aliases if a not in self.answers)

    @property
    def target(self) -> str:
        """The answer string used as the training target."""
        return self.answers[0]


def item_id(relation: str, split: str, index: int) -> str:
    return f"{relation}/{split}/{index}"
