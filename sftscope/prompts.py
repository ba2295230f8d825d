"""Prompt formats shared by evaluation, training and the later analyses.

* ``sft``: the paper's format (docs/method.md §3.3), ``<|question|> {q} <|answer|>`` with the answer
  following after a space; used for fine-tuned models, and as the SFT training format.
* ``fewshot``: plain ``Question: …\\nAnswer: …`` with exemplars from the same relation's train
  split; used for base / instruct models that have never seen the SFT format.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from sftscope.config.base import PromptStyle as PromptStyle
from sftscope.data.schema import QAItem


def sft_prompt(question: str) -> str:
    """The paper's question part; the answer is trained/generated as `` {answer}``."""
    return f"<|question|> {question.strip()} <|answer|>"


def sft_completion(answer: str, eos_token: str | None) -> str:
    """The paper's answer part: a space, the answer, a space and the EOS token."""
    return f" {answer.strip()} " + (eos_token or "")


def fewshot_prompt(question: str, exemplars: Sequence[QAItem]) -> str:
    shots = "".join(f"Question: {ex.question}\nAnswer: {ex.target}\n\n" for ex in exemplars)
    return f"{shots}Question: {question.strip()}\nAnswer:"


def pick_exemplars(pool: Sequence[QAItem], k: int, seed: int) -> dict[str, list[QAItem]]:
    """``k`` exemplars per relation, drawn once with ``seed`` (the same for every question of a
    relation, so prompts are comparable across items and models)."""
    by_rel: dict[str, list[QAItem]] = defaultdict(list)
    for it in pool:
        by_rel[it.relation].append(it)
    picked = {}
    for rel, items in sorted(by_rel.items()):
        rng = random.Random(f"{seed}:{rel}")
        picked[rel] = rng.sample(items, min(k, len(items)))
    return picked


def build_prompt(item: QAItem, style: PromptStyle, exemplars: dict[str, list[QAItem]]) -> str:
    if style == "sft":
        return sft_prompt(item.question)
    return fewshot_prompt(item.question, exemplars.get(item.relation, []))
