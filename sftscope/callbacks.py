"""Knowledge while it trains: a ``transformers.TrainerCallback`` that measures, every few steps,
what fine-tuning is doing to a fixed set of facts, so a curve (and an alarm) exists where
sftscope otherwise measures only before and after.

The watch set is read once: facts the base model knows (mastery levels 3-4) and facts it does
not (0-1) from a probe folder, or the items of any QA file (then "known" means answered right at
step 0). At step 0, every ``every_steps`` and at the end, the model being trained answers them
greedily with the batched engine of :mod:`sftscope.models.engines` (eval mode, no gradients,
train mode restored), and the first answer token's distribution of the level-4 facts is compared
with the one cached at step 0 (the paper's top-10 KL, docs/method.md §6, with no second model in
memory). The numbers go through the Trainer's own ``log`` (so to every ``report_to``) and into a
JSONL file; ``stop_below`` ends training when too few known facts are kept, and says why.

    from sftscope.callbacks import KnowledgeCallback, WatchSet

    watch = WatchSet.from_probe("runs/study/probe/train")      # or WatchSet.from_data(...)
    KnowledgeCallback(watch, stop_below=0.5).attach(trainer)   # any Trainer / SFTTrainer
    trainer.train()
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from sftscope.config import ProbeConfig, load_config
from sftscope.data.dataset import load_items
from sftscope.data.readers import resolve_dataset
from sftscope.data.schema import QAItem
from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_jsonl
from sftscope.layout import KNOWLEDGE_LOG, MASTERY
from sftscope.mastery import N_LEVELS, read_levels
from sftscope.prompts import ChatFormat, PromptStyle, build_prompt
from sftscope.token_kl import topk_kl
from sftscope.transitions import KNOWN

log = logging.getLogger(__name__)


@dataclass
class WatchSet:
    """The facts watched during training and their base mastery levels (None: not probed)."""

    items: list[QAItem]
    levels: dict[str, int | None]

    @classmethod
    def from_probe(
        cls, folder: str | Path, known: int = 200, unknown: int = 100, seed: int = 0
    ) -> WatchSet:
        """Up to ``known`` facts of levels 3-4 and ``unknown`` of levels 0-1 of a probe folder
        (``sftscope probe``'s, or a grid's ``probe/<split>``), drawn with ``seed``; the facts
        are read back from the data its ``probe.yaml`` names."""
        folder = Path(folder)
        if not (folder / MASTERY).exists():
            raise SftscopeError(f"{folder}: no {MASTERY} (not a probe folder)")
        cfg = load_config(ProbeConfig, folder / "probe.yaml")
        levels = read_levels(folder / MASTERY)
        dataset = resolve_dataset(cfg.data, cfg.data_dir, cfg.columns)
        splits = ["train", "dev", "test"] if cfg.split == "all" else [cfg.split]
        by_id = {it.id: it for it in load_items(dataset, splits, cfg.relations)}
        rng = random.Random(seed)
        chosen: list[QAItem] = []
        for want, wanted in ((known, range(KNOWN, N_LEVELS)), (unknown, range(KNOWN - 1))):
            ids = sorted(i for i, lv in levels.items() if lv in wanted and i in by_id)
            chosen += [by_id[i] for i in sorted(rng.sample(ids, min(want, len(ids))))]
        if not chosen:
            raise SftscopeError(f"{folder}: no probed fact of levels 0-1 or 3-4 to watch")
        return cls(chosen, {it.id: levels[it.id] for it in chosen})

    @classmethod
    def from_data(
        cls,
        data: str,
        data_dir: str | Path | None,
        splits: Sequence[str] = ("test",),
        limit: int = 300,
    ) -> WatchSet:
        """The first ``limit`` items of ``splits`` of any reader's data, without levels."""
        dataset = resolve_dataset(data, data_dir)
        present = [s for s in splits if any(dataset.has(r.id, s) for r in dataset.select(None))]
        items = load_items(dataset, present)[:limit] if present else []
        if not items:
            raise SftscopeError(f"{data_dir or data}: no {'/'.join(splits)} items to watch")
        return cls(items, dict.fromkeys((it.id for it in items), None))

    @classmethod
    def load(cls, source: str | Path, **kw: Any) -> WatchSet:
        """A probe folder, or a QA table: its first 300 rows, whatever their ``split`` (the
        generic reader's hash split would keep only a tenth of a file without that column)."""
        path = Path(source)
        if (path / MASTERY).exists():
            return cls.from_probe(path, **kw)
        if path.is_file():
            return cls.from_data("generic", path, ("train", "dev", "test"), **kw)
        raise SftscopeError(f"--watch {source}: neither a probe folder nor a QA file")


class KnowledgeCallback(TrainerCallback):
    """Measures the watch set during training (see the module docstring); ``attach`` it to a
    Trainer so its numbers go through ``Trainer.log``."""

    def __init__(
        self,
        watch: WatchSet,
        prompt: PromptStyle = "sft",
        every_steps: int | None = None,
        max_new_tokens: int = 16,
        batch_size: int = 32,
        stop_below: float | None = None,
        log_file: str | Path | None = None,
    ) -> None:
        self.watch, self.prompt = watch, prompt
        self.every_steps, self.max_new_tokens = every_steps, max_new_tokens
        self.batch_size = batch_size
        self.stop_below = stop_below
        self.log_file = Path(log_file) if log_file is not None else None
        self.trainer: Any = None
        self.rows: list[dict[str, Any]] = []
        self.known0: set[str] = set()  # answered right at step 0 (the known facts without levels)
        self.base_logits: torch.Tensor | None = None  # level-4 facts' first answer token, step 0
        self.stopped: str | None = None
        self._every = 1

    def attach(self, trainer: Any) -> KnowledgeCallback:
        """Add to ``trainer`` (its ``log`` reaches every ``report_to``); the log file defaults
        to ``knowledge_log.jsonl`` in its ``output_dir``."""
        self.trainer = trainer
        if self.log_file is None:
            self.log_file = Path(trainer.args.output_dir) / KNOWLEDGE_LOG
        trainer.add_callback(self)
        return self

    # -- the Trainer's events --------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kw):
        steps = args.eval_steps if args.eval_strategy == "steps" else None
        self._every = int(self.every_steps or steps or max(1, state.max_steps // 10))
        self._measure(args, state, control, model, kw)

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step % self._every == 0:
            self._measure(args, state, control, model, kw)

    def on_train_end(self, args, state, control, model=None, **kw):
        if not self.rows or self.rows[-1]["step"] != state.global_step:
            self._measure(args, state, control, model, kw)

    # -- measuring -------------------------------------------------------------------------
    def _measure(self, args, state, control, model, kw) -> None:
        from accelerate import PartialState

        if state.is_world_process_zero:
            tokenizer = kw.get("processing_class") or kw.get("tokenizer")
            if tokenizer is None or model is None:
                raise SftscopeError("KnowledgeCallback: the Trainer passed no model or tokenizer")
            row = {"step": state.global_step, **self.measure(model, tokenizer)}
            self.rows.append(row)
            if self.log_file is not None:
                atomic_write_jsonl(self.log_file, self.rows)
            metrics = {k: v for k, v in row.items() if k != "step" and v is not None}
            if self.trainer is not None:
                self.trainer.log(metrics)
            kept = row.get("knowledge/known_kept")
            if self.stop_below is not None and kept is not None and kept < self.stop_below:
                self.stopped = (
                    f"known facts kept {kept:.3f} < stop_below {self.stop_below:g} at step "
                    f"{state.global_step}: training stopped"
                )
                log.warning("KnowledgeCallback: %s", self.stopped)
                control.should_training_stop = True
        if PartialState().num_processes > 1:  # the others wait for the main process
            PartialState().wait_for_everyone()

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, tokenizer: Any) -> dict[str, float | None]:
        """The watch set's numbers for ``model`` as it is now (its train mode restored)."""
        from sftscope.evaluate import evaluate_items
        from sftscope.models.engines import HFEngine

        net = model.get_base_model() if hasattr(model, "get_base_model") else model  # (PEFT)
        training = net.training
        net.eval()
        try:
            engine = HFEngine(net, tokenizer, batch_size=self.batch_size, progress=False)
            items = self.watch.items
            records = evaluate_items(engine, items, self.prompt, {}, self.max_new_tokens)
            logits = self._first_token_logits(net, tokenizer)
        finally:
            net.train(training)
        right = {r["id"] for r in records if r["containment"]}
        if not self.rows:  # step 0
            self.known0 = right
            self.base_logits = logits
        return self._numbers(right, logits)

    def _numbers(self, right: set[str], logits: torch.Tensor | None) -> dict[str, float | None]:
        levels = self.watch.levels
        probed = any(lv is not None for lv in levels.values())

        def share(ids: Sequence[str]) -> float | None:
            return sum(i in right for i in ids) / len(ids) if ids else None

        if probed:
            known = [i for i, lv in levels.items() if lv is not None and lv >= KNOWN]
            unknown = [i for i, lv in levels.items() if lv is not None and lv < KNOWN - 1]
        else:
            known = sorted(self.known0)
            unknown = [i for i in levels if i not in self.known0]
        out: dict[str, float | None] = {
            "knowledge/known_kept": share(known),
            "knowledge/unknown_gained": share(unknown),
        }
        for k in range(N_LEVELS):
            out[f"knowledge/acc_L{k}"] = share([i for i, lv in levels.items() if lv == k])
        if logits is not None and self.base_logits is not None and len(logits):
            kls = [topk_kl(t, b) for t, b in zip(logits, self.base_logits, strict=True)]
            out["knowledge/kl_paper"] = sum(kls) / len(kls)
        return out

    def _first_token_logits(self, net: torch.nn.Module, tokenizer: Any) -> torch.Tensor | None:
        """The next-token logits after the prompt of every level-4 fact (fp32, CPU)."""
        top = [it for it in self.watch.items if self.watch.levels.get(it.id) == N_LEVELS - 1]
        if not top:
            return None
        from sftscope.models.engines import encode_texts, left_pad

        chat = ChatFormat(tokenizer) if self.prompt == "chat" else None
        prompts = [build_prompt(it, self.prompt, {}, chat) for it in top]
        rows = encode_texts(tokenizer, prompts)
        device = next(net.parameters()).device
        out = []
        for a in range(0, len(rows), self.batch_size):
            ids, mask = left_pad(rows[a : a + self.batch_size], tokenizer.pad_token_id, device)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = net(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
            out.append(logits[:, -1].float().cpu())
        return torch.cat(out)
