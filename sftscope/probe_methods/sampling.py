"""``sampling``, the paper's protocol (docs/method.md §2): N_map mapping templates x N_sample
samples at temperature T, max 32 new tokens; a sample is correct when it contains a gold alias,
R = correct / total. Batched across facts and templates, each prompt's prefill shared by its
samples, and a sample stops as soon as its outcome is decided (never changing R)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sftscope.config import ProbeConfig
from sftscope.data.schema import QAItem
from sftscope.data.templates import fill
from sftscope.probe_methods.base import ProbeInputs, Record, sample

if TYPE_CHECKING:
    from sftscope.models.engines import Engine


class Sampling:
    decodes = True
    generations = True
    sets_field = ""

    def run(
        self,
        engine: Engine,
        items: Sequence[QAItem],
        inputs: ProbeInputs,
        cfg: ProbeConfig,
        seed: int,
    ) -> tuple[list[Record], list[Record]]:
        templates = inputs.templates
        prompts = [[fill(t, it.subject or "") for t in templates[it.relation]] for it in items]
        return sample(engine, items, prompts, cfg, seed)


METHOD = Sampling()
