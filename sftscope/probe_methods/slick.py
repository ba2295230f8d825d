"""``slick``, after Gekhman et al. (2024): greedy and sampled answers (``slick_samples`` at
``slick_temperature``) under ``slick_sets`` few-shot exemplar sets, answers cut at a newline;
HighlyKnown / MaybeKnown / WeaklyKnown / Unknown, mapped to levels 4 / 2 / 1 / 0."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sftscope.config import ProbeConfig
from sftscope.data.matching import contains_answer
from sftscope.data.schema import QAItem
from sftscope.evaluate import STOP
from sftscope.mastery import slick_category, slick_level
from sftscope.probe_methods.base import ProbeInputs, Record, record, shots_for
from sftscope.prompts import fewshot_prompt

if TYPE_CHECKING:
    from sftscope.models.engines import Engine


class Slick:
    decodes = True
    generations = False
    sets_field = "slick_sets"

    def run(
        self,
        engine: Engine,
        items: Sequence[QAItem],
        inputs: ProbeInputs,
        cfg: ProbeConfig,
        seed: int,
    ) -> tuple[list[Record], list[Record]]:
        """Greedy and T=0.5 answers under each few-shot exemplar set."""
        prompts, owner = [], []
        for i, it in enumerate(items):
            for shots in inputs.sets.get(it.relation, []):
                prompts.append(fewshot_prompt(it.question, shots_for(it, shots, cfg.slick_shots)))
                owner.append(i)
        greedy = engine.generate(prompts, max_new_tokens=16, stop=STOP, desc="slick greedy")
        sampled = engine.generate(
            prompts,
            max_new_tokens=16,
            temperature=cfg.slick_temperature,
            n=cfg.slick_samples,
            seed=seed,
            stop=STOP,
            desc="slick sampled",
        )
        g_ok = [0] * len(items)
        s_ok = [0] * len(items)
        g_n = [0] * len(items)
        for i, (g,), s in zip(owner, greedy, sampled, strict=True):
            g_n[i] += 1
            g_ok[i] += contains_answer(g, items[i].accepted)
            s_ok[i] += sum(contains_answer(x, items[i].accepted) for x in s)
        records = []
        for i, it in enumerate(items):
            p_g = g_ok[i] / g_n[i]
            p_s = s_ok[i] / (g_n[i] * cfg.slick_samples)
            records.append(
                record(
                    it,
                    "slick",
                    p_g,
                    slick_level(p_g, p_s),
                    n_correct=g_ok[i] + s_ok[i],
                    n_total=g_n[i] * (1 + cfg.slick_samples),
                    p_greedy=p_g,
                    p_sampled=p_s,
                    category=slick_category(p_g, p_s),
                )
            )
        return records, []


METHOD = Slick()
