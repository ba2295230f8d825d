"""``question``: the sampling protocol for data without mapping templates or subjects (any QA
file): the question under ``templates`` few-shot exemplar sets (``slick_shots`` each; zero-shot
for a relation without exemplars) in place of the mapping templates, ``samples`` samples each,
answers cut at a newline; the same R and levels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sftscope.config import ProbeConfig
from sftscope.data.schema import QAItem
from sftscope.evaluate import STOP
from sftscope.probe_methods.base import ProbeInputs, Record, sample, shots_for
from sftscope.prompts import fewshot_prompt

if TYPE_CHECKING:
    from sftscope.models.engines import Engine


class Question:
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
        prompts = [
            [
                fewshot_prompt(it.question, shots_for(it, shots, k))
                for shots in inputs.sets.get(it.relation) or [[]]
            ]
            for it in items
        ]
        return sample(engine, items, prompts, cfg, seed, STOP, per="per_set")


METHOD = Question()
