"""``likelihood``: one teacher-forced pass per template, R-hat = mean over templates of
P_T(the continuation is a gold alias); levels from thresholds calibrated against ``sampling``
(``sftscope calibrate``), since R-hat and R measure different things."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sftscope.config import ProbeConfig
from sftscope.data.schema import QAItem
from sftscope.data.templates import fill
from sftscope.mastery import alias_probability, level_of, prefix_free
from sftscope.probe_methods.base import ProbeInputs, Record, record

if TYPE_CHECKING:
    from sftscope.models.engines import Engine


def likelihood_scores(
    engine: Engine,
    items: Sequence[QAItem],
    templates: dict[str, Sequence[str]],
    temperature: float,
) -> list[list[float]]:
    """Per fact, per template: P_T(the continuation is a gold alias), one scoring pass."""
    prompts, conts, owner = [], [], []
    for i, it in enumerate(items):
        aliases = prefix_free(it.accepted)
        for j, t in enumerate(templates[it.relation]):
            for alias in aliases:
                prompts.append(fill(t, it.subject or ""))
                conts.append(" " + alias)
                owner.append((i, j))
    logprobs = engine.score(prompts, conts, temperature=temperature, desc="probe")
    sums: dict[tuple[int, int], list[float]] = {}
    for key, lp in zip(owner, logprobs, strict=True):
        sums.setdefault(key, []).append(sum(lp))
    return [
        [alias_probability(sums.get((i, j), [])) for j in range(len(templates[it.relation]))]
        for i, it in enumerate(items)
    ]


class Likelihood:
    decodes = False
    generations = False
    sets_field = ""

    def run(
        self,
        engine: Engine,
        items: Sequence[QAItem],
        inputs: ProbeInputs,
        cfg: ProbeConfig,
        seed: int,
    ) -> tuple[list[Record], list[Record]]:
        records = []
        scores = likelihood_scores(engine, items, inputs.templates, cfg.temperature)
        for it, probs in zip(items, scores, strict=True):
            r = sum(probs) / len(probs)
            records.append(
                record(
                    it,
                    "likelihood",
                    r,
                    level_of(r, inputs.thresholds),
                    n_correct=None,
                    n_total=len(probs),
                    per_template=probs,
                )
            )
        return records, []


METHOD = Likelihood()
