"""``question``: the sampling protocol for data without mapping templates or subjects (any QA
file): the question under ``templates`` few-shot exemplar sets (``slick_shots`` each; zero-shot
for a relation without exemplars) in place of the mapping templates, ``samples`` samples each,
answers cut at a newline; the same R and levels.

With ``prompt: chat`` (instruct models) each exemplar set becomes earlier user / assistant turns
of the tokenizer's chat template before the question, after the chat instruction: the sets still
give the model different contexts to recall the fact in (the multi-template idea), in the format
it was tuned on; answers are also cut at the template's end of turn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sftscope.config import ProbeConfig
from sftscope.data.schema import QAItem
from sftscope.evaluate import STOP
from sftscope.probe_methods.base import ProbeInputs, Record, sample, shots_for
from sftscope.prompts import ChatFormat, fewshot_prompt

if TYPE_CHECKING:
    from sftscope.models.engines import Engine


class Question:
    decodes = True
    generations = True
    sets_field = "templates"

    def run(
        self,
        engine: Engine,
        items: Sequence[QAItem],
        inputs: ProbeInputs,
        cfg: ProbeConfig,
        seed: int,
    ) -> tuple[list[Record], list[Record]]:
        k = cfg.slick_shots
        stop: tuple[str, ...] = STOP
        render = fewshot_prompt
        if cfg.prompt == "chat":
            chat = ChatFormat(engine.tokenizer, cfg.chat_instruction, model=f"model {cfg.model!r}")
            stop = (*STOP, *filter(None, [chat.end_of_turn()]))
            render = chat.render
        prompts = [
            [
                render(it.question, shots_for(it, shots, k))
                for shots in inputs.sets.get(it.relation) or [[]]
            ]
            for it in items
        ]
        return sample(engine, items, prompts, cfg, seed, stop, per="per_set")


METHOD = Question()
