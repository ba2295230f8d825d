"""Prompt formats shared by evaluation, training and the later analyses.

* ``sft``: the paper's format (docs/method.md §3.3), ``<|question|> {q} <|answer|>`` with the answer
  following after a space; used for fine-tuned models, and as the SFT training format.
* ``fewshot``: plain ``Question: …\\nAnswer: …`` with exemplars from the same relation's train
  split; used for base / instruct models that have never seen the SFT format.
* ``chat``: the question as a user turn through the tokenizer's own chat template, after a short
  instruction (:class:`ChatFormat`); used for instruct / chat models, in the format they were
  tuned on.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sftscope.config.base import CHAT_INSTRUCTION
from sftscope.config.base import PromptStyle as PromptStyle
from sftscope.data.schema import QAItem
from sftscope.errors import SftscopeError


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


@dataclass(frozen=True)
class ChatFormat:
    """Questions rendered by a tokenizer's own chat template (``add_generation_prompt``), after
    ``instruction``; exemplars, when given, become earlier user / assistant turns. The rendered
    text holds the template's special tokens (a BOS among them): the engines do not add them
    again. Questions are asked with ``enable_thinking=False``: a reasoning template (Qwen3,
    SmolLM3) would otherwise spend the answer's few tokens thinking; templates without that
    switch ignore it. A tokenizer without a template is a one-line error naming ``model``."""

    tokenizer: Any
    instruction: str = CHAT_INSTRUCTION
    model: str = "the model"

    def __post_init__(self) -> None:
        if not getattr(self.tokenizer, "chat_template", None):
            raise SftscopeError(
                f"{self.model}: its tokenizer has no chat template; use --prompt fewshot (or sft)"
            )

    def render(self, question: str, exemplars: Sequence[QAItem] = ()) -> str:
        turns = []
        for ex in exemplars:
            turns += [_turn("user", ex.question), _turn("assistant", ex.target)]
        turns.append(_turn("user", question.strip()))
        return self._apply(turns, add_generation_prompt=True, enable_thinking=False)

    def render_turns(self, turns: list[dict[str, str]]) -> str:
        """Ready-made chat turns (an SFT row's prompt) with the generation prompt, rendered as
        training rendered them (the template's own defaults)."""
        return self._apply(turns, add_generation_prompt=True)

    def end_of_turn(self) -> str | None:
        """What the template writes after an assistant's answer (``<|im_end|>``,
        ``<|eot_id|>``, ``<end_of_turn>``, ...): where a chat answer is cut."""
        marker = "Sftscope42"
        turns = [_turn("user", "Q"), _turn("assistant", marker)]
        text = self._apply(turns, add_generation_prompt=False, enable_thinking=False)
        tail = text.split(marker, 1)[-1].strip().split()
        return tail[0] if tail else None

    def _apply(
        self, turns: list[dict[str, str]], add_generation_prompt: bool, **variables: Any
    ) -> str:
        """``variables``: extra template variables (``enable_thinking``)."""
        from jinja2 import TemplateError

        def render(messages: list[dict[str, str]]) -> str:
            return self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )

        if not self.instruction:
            return render(turns)
        try:
            return render([_turn("system", self.instruction), *turns])
        except TemplateError:  # no system role (Gemma): the instruction opens the first turn
            first = _turn(turns[0]["role"], f"{self.instruction}\n\n{turns[0]['content']}")
            return render([first, *turns[1:]])


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def build_prompt(
    item: QAItem,
    style: PromptStyle,
    exemplars: dict[str, list[QAItem]],
    chat: ChatFormat | None = None,
) -> str:
    if style == "sft":
        return sft_prompt(item.question)
    if style == "chat":
        if chat is None:
            raise ValueError("chat prompts need the model's ChatFormat")
        return chat.render(item.question, exemplars.get(item.relation, []))
    return fewshot_prompt(item.question, exemplars.get(item.relation, []))
