"""Knowledge-mastery probe (PAPER.md §2): how well the base model knows each fact.

Three methods, one output contract (``mastery.jsonl``: id, relation, split, R, level,
n_correct, n_total, method):

* ``sampling`` — the paper: N_map mapping templates × N_sample samples at temperature T, max 32
  new tokens; a sample is correct when it contains a gold alias; R = correct / total. Batched
  across facts and templates, each prompt's prefill shared by its samples, and a sample stops
  as soon as its outcome is decided (this never changes R; see ``mastery.decided``).
  Generations are kept in ``generations.jsonl.gz`` so facts can be relabelled offline.
* ``likelihood`` — one teacher-forced pass per template: R̂ = mean over templates of
  P_T(continuation is a gold alias); levels from thresholds calibrated against ``sampling``.
* ``slick`` — Gekhman et al. (2024): greedy and sampled answers under several few-shot
  exemplar sets; HighlyKnown / MaybeKnown / WeaklyKnown / Unknown.
* ``question`` — the sampling protocol for data without mapping templates or subjects (any QA
  file): the question under ``templates`` few-shot exemplar sets (``slick_shots`` each) in
  place of the mapping templates, ``samples`` samples each; the same R and levels.

Few-shot exemplars (``slick``, ``question``) come from train, from dev when train is probed,
and with ``split: all`` (every item as one pool, e.g. an SFT file) from the pool itself. In
every case a fact is never its own exemplar: each set holds spare candidates and a fact skips
those with its own question (:func:`shots_for`), so no prompt contains the answer it asks for.

Facts are processed in fixed chunks, each written atomically to ``parts/``; a killed probe
rerun with the same settings skips finished chunks and gives the same result. The folder
records a digest of the items probed (``items.sha256``): a rerun on changed data is refused
rather than answered from the old probe.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from tqdm.auto import tqdm

from sftscope.config import ProbeConfig, dump_config, result_fields
from sftscope.data.dataset import Dataset, load_items, resolve_dataset, warn_no_subject
from sftscope.data.matching import contains_answer, normalize
from sftscope.data.schema import SPLITS, QAItem
from sftscope.data.templates import fill, load_templates, packaged_datasets
from sftscope.errors import SftscopeError
from sftscope.evaluate import STOP, exemplar_pool
from sftscope.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    read_jsonl,
    read_yaml,
)
from sftscope.mastery import (
    N_LEVELS,
    alias_probability,
    decided,
    level_of,
    prefix_free,
    slick_category,
    slick_level,
)
from sftscope.models.factory import check_engine, engine_for, engine_info
from sftscope.prompts import fewshot_prompt, pick_exemplars

if TYPE_CHECKING:  # the engine (torch, transformers) loads only when a model runs
    from sftscope.models.engines import Engine

Record = dict[str, Any]
QUESTION_METHODS = ("slick", "question")  # prompted with the question, not mapping templates
ITEMS_DIGEST = "items.sha256"  # in a probe folder: the digest of the items it probed


def _record(item: QAItem, method: str, r: float | None, level: int | None, **extra) -> Record:
    return {"id": item.id, "relation": item.relation, "split": item.split, "R": r,
            "level": level, "method": method, **extra}  # fmt: skip


def probe_sampling(
    engine: Engine, items: Sequence[QAItem], templates: dict[str, Sequence[str]],
    cfg: ProbeConfig, seed: int,
) -> tuple[list[Record], list[Record]]:  # fmt: skip
    """The paper's protocol; returns (mastery records, generation records)."""
    prompts = [[fill(t, it.subject or "") for t in templates[it.relation]] for it in items]
    return _sample(engine, items, prompts, cfg, seed)


def probe_questions(
    engine: Engine, items: Sequence[QAItem], exemplar_sets: dict[str, list[list[QAItem]]],
    cfg: ProbeConfig, seed: int,
) -> tuple[list[Record], list[Record]]:  # fmt: skip
    """The sampling protocol on data without mapping templates (any QA): the question itself
    under ``templates`` few-shot exemplar sets (zero-shot for a relation without exemplars)
    instead of the mapping templates, answers cut at a newline; the same R and levels."""
    k = cfg.slick_shots
    prompts = [[fewshot_prompt(it.question, shots_for(it, shots, k))
                for shots in exemplar_sets.get(it.relation) or [[]]] for it in items]  # fmt: skip
    return _sample(engine, items, prompts, cfg, seed, STOP, per="per_set")


def _sample(
    engine: Engine, items: Sequence[QAItem], prompts_of: Sequence[Sequence[str]],
    cfg: ProbeConfig, seed: int, stop: Sequence[str] = (), per: str = "per_template",
) -> tuple[list[Record], list[Record]]:  # fmt: skip
    """``samples`` samples of every prompt of every item; an item's R is its share of samples
    that contain a gold answer, and ``per`` (``per_template``, ``per_set``) its share per
    prompt (the token-level KL picks each relation's best mapping template from it)."""
    prompts = [p for ps in prompts_of for p in ps]
    owner = [i for i, ps in enumerate(prompts_of) for _ in ps]
    done_if = [partial(decided, answers=items[i].accepted) for i in owner]
    outs = engine.generate(
        prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        n=cfg.samples, seed=seed, stop=stop, done_if=done_if if cfg.early_exit else None,
        desc="probe",
    )  # fmt: skip
    per_item: list[list[tuple[str, list[str]]]] = [[] for _ in items]
    for i, prompt, samples in zip(owner, prompts, outs, strict=True):
        per_item[i].append((prompt, samples))
    records, gens = [], []
    for it, rows in zip(items, per_item, strict=True):
        hits = [sum(contains_answer(x, it.accepted) for x in s) for _, s in rows]
        total = sum(len(s) for _, s in rows)
        correct = sum(hits)
        r = correct / total
        shares = [h / len(s) for h, (_, s) in zip(hits, rows, strict=True)]
        records.append(_record(it, cfg.method, r, level_of(r, cfg.thresholds),
                               n_correct=correct, n_total=total, **{per: shares}))  # fmt: skip
        gens.append({"id": it.id, "prompts": [p for p, _ in rows], "samples": [s for _, s in rows]})
    return records, gens


def likelihood_scores(
    engine: Engine, items: Sequence[QAItem], templates: dict[str, Sequence[str]],
    temperature: float,
) -> list[list[float]]:  # fmt: skip
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


def probe_likelihood(
    engine: Engine, items: Sequence[QAItem], templates: dict[str, Sequence[str]],
    cfg: ProbeConfig, thresholds: Sequence[float],
) -> list[Record]:  # fmt: skip
    records = []
    for it, probs in zip(items, likelihood_scores(engine, items, templates, cfg.temperature),
                         strict=True):  # fmt: skip
        r = sum(probs) / len(probs)
        records.append(_record(it, "likelihood", r, level_of(r, thresholds),
                               n_correct=None, n_total=len(probs),
                               per_template=probs))  # fmt: skip
    return records


def probe_slick(
    engine: Engine, items: Sequence[QAItem], exemplar_sets: dict[str, list[list[QAItem]]],
    cfg: ProbeConfig, seed: int,
) -> list[Record]:  # fmt: skip
    """Greedy and T=0.5 answers under each few-shot exemplar set (answers cut at newline)."""
    prompts, owner = [], []
    for i, it in enumerate(items):
        for shots in exemplar_sets.get(it.relation, []):
            prompts.append(fewshot_prompt(it.question, shots_for(it, shots, cfg.slick_shots)))
            owner.append(i)
    greedy = engine.generate(prompts, max_new_tokens=16, stop=STOP, desc="slick greedy")
    sampled = engine.generate(
        prompts, max_new_tokens=16, temperature=cfg.slick_temperature, n=cfg.slick_samples,
        seed=seed, stop=STOP, desc="slick sampled",
    )  # fmt: skip
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
        records.append(_record(
            it, "slick", p_g, slick_level(p_g, p_s), n_correct=g_ok[i] + s_ok[i],
            n_total=g_n[i] * (1 + cfg.slick_samples), p_greedy=p_g, p_sampled=p_s,
            category=slick_category(p_g, p_s),
        ))  # fmt: skip
    return records


HINT = " (give templates_file, or use method question or slick, which need none)"


def _templates(dataset: str, cfg: ProbeConfig) -> dict:
    """The mapping templates of ``dataset``: the user's file, else the packaged ones."""
    if cfg.templates_file is None and dataset not in packaged_datasets():
        raise SftscopeError(f"no mapping templates for dataset {dataset}{HINT}")
    return load_templates(dataset, cfg.templates_file)


def exemplar_sets(pool: Sequence[QAItem], n_sets: int, shots: int, seed: int, spare: int = 0
                  ) -> dict[str, list[list[QAItem]]]:  # fmt: skip
    """``n_sets`` seeded draws of ``shots + spare`` candidate exemplars per relation (SliCK,
    the question probe); a fact takes the first ``shots`` that are not itself."""
    sets: dict[str, list[list[QAItem]]] = {}
    for s in range(n_sets):
        for rel, chosen in pick_exemplars(pool, shots + spare, seed * 7919 + s).items():
            sets.setdefault(rel, []).append(chosen)
    return sets


@lru_cache(maxsize=1 << 16)
def _normalized(question: str) -> str:
    return normalize(question)


def fact_key(item: QAItem) -> tuple[str, str]:
    """What makes two rows the same fact: relation and normalised question."""
    return item.relation, _normalized(item.question)


def shots_for(item: QAItem, candidates: Sequence[QAItem], k: int) -> list[QAItem]:
    """The first ``k`` candidates that are not ``item``'s own fact (nor a copy of it)."""
    own = fact_key(item)
    return [c for c in candidates if c.id != item.id and fact_key(c) != own][:k]


def spare_for(pool: Sequence[QAItem]) -> int:
    """Spare candidates per exemplar set when the probed items are the pool: the most copies
    of one fact, so that a fact skipping its own copies still finds ``shots`` others."""
    return max(Counter(fact_key(it) for it in pool).values(), default=0)


def probe_pool(dataset: Dataset, cfg: ProbeConfig) -> list[QAItem]:
    """The items of ``cfg.split``; for ``all``, every split the data has (train, dev, test in
    turn), ``limit_per_relation`` counted per relation over all of them."""
    warn = cfg.method not in QUESTION_METHODS  # they need no subjects
    if cfg.split != "all":
        return load_items(dataset, [cfg.split], cfg.relations, cfg.limit_per_relation, warn=warn)
    chosen = [r.id for r in dataset.select(cfg.relations)]
    items: list[QAItem] = []
    for split in SPLITS:
        present = [r for r in chosen if dataset.has(r, split)]
        if present:
            items += load_items(dataset, [split], present, warn=False)
    if cfg.limit_per_relation is not None:
        seen: Counter[str] = Counter()
        kept = []
        for it in items:
            seen[it.relation] += 1
            if seen[it.relation] <= cfg.limit_per_relation:
                kept.append(it)
        items = kept
    if warn:
        warn_no_subject(items)
    return items


def items_digest(items: Sequence[QAItem]) -> str:
    """A digest of what the probe asks about (ids, questions, answers, subjects)."""
    h = hashlib.sha256()
    for it in items:
        row = [it.id, it.question, list(it.answers), it.subject]
        h.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def load_thresholds(cfg: ProbeConfig) -> tuple[float, ...]:
    if cfg.calibration is None:
        return tuple(cfg.thresholds)
    from sftscope.calibration import read_calibration

    return read_calibration(cfg.calibration)


def histogram(records: Sequence[Record]) -> dict[str, list[int]]:
    """Facts per level, per relation (in first-seen order) and in total."""
    hist: dict[str, list[int]] = {}
    for r in records:
        if r["level"] is not None:
            hist.setdefault(r["relation"], [0] * N_LEVELS)[r["level"]] += 1
    hist["total"] = [sum(h[k] for h in hist.values()) for k in range(N_LEVELS)]
    return hist


def _settings(cfg: ProbeConfig) -> ProbeConfig:
    """The settings a probe folder records: the config without its own location."""
    return cfg.model_copy(update={"out": Path(".")})


def holds_other_probe(cfg: ProbeConfig) -> bool:
    """Whether ``cfg.out`` holds (part of) a probe made with settings that give other results
    (a probe begun on a CPU resumes on a GPU, or with another batch size)."""
    path = Path(cfg.out) / "probe.yaml"
    if not path.exists():
        return False
    saved = read_yaml(path, "probe settings")
    try:
        return result_fields(ProbeConfig.model_validate(saved)) != result_fields(_settings(cfg))
    except ValidationError:
        return True


def finished_chunks(out: Path) -> set[int]:
    """The chunks of a probe folder whose records are written (a rerun skips them)."""
    return {int(p.stem) for p in (Path(out) / "parts").glob("*.jsonl") if p.stem.isdigit()}


@dataclass(frozen=True)
class ProbePlan:
    """What a probe asks, loaded and checked before anything is written."""

    dataset: Dataset
    items: list[QAItem]
    thresholds: tuple[float, ...]
    templates: dict[str, Sequence[str]]
    sets: dict[str, list[list[QAItem]]]


def plan_probe(cfg: ProbeConfig, dataset: Dataset | None = None,
               items: list[QAItem] | None = None) -> ProbePlan:  # fmt: skip
    """Load the items (unless given: :func:`probe_pool` of ``dataset``), thresholds and
    templates or exemplar sets of a probe; bad input is an error here, before anything is
    written."""
    dataset = dataset or resolve_dataset(cfg.data, cfg.data_dir)
    items = probe_pool(dataset, cfg) if items is None else items
    if not items:
        raise SftscopeError(f"no items to probe in {dataset.root} (split {cfg.split})")
    thresholds = load_thresholds(cfg)
    templates: dict[str, Sequence[str]] = {}
    sets: dict[str, list[list[QAItem]]] = {}
    if cfg.method in QUESTION_METHODS:
        relations = sorted({it.relation for it in items})
        pool = items if cfg.split == "all" else exemplar_pool(dataset, cfg.split, relations)
        spare = spare_for(pool) if cfg.split == "all" else 0
        n_sets = cfg.slick_sets if cfg.method == "slick" else cfg.templates
        sets = exemplar_sets(pool, n_sets, cfg.slick_shots, cfg.seed, spare)
    else:
        table = _templates(dataset.name, cfg)
        for rel in sorted({it.relation for it in items}):
            if rel not in table:
                raise SftscopeError(f"no mapping templates for relation {rel} of {dataset.name}"
                                    f"{HINT}")  # fmt: skip
            if len(table[rel].mapping) < cfg.templates:
                raise SftscopeError(
                    f"config field 'templates': {cfg.templates} > the {len(table[rel].mapping)} "
                    f"mapping templates of {rel}"
                )
            templates[rel] = table[rel].mapping[: cfg.templates]
    return ProbePlan(dataset, items, thresholds, templates, sets)


def check_probe_folder(cfg: ProbeConfig, items: Sequence[QAItem]) -> None:
    """Refuse a folder holding a probe with other settings or of other items."""
    out = Path(cfg.out)
    if holds_other_probe(cfg):
        raise SftscopeError(f"{out} holds a probe with other settings; use another --out")
    saved = out / ITEMS_DIGEST
    if saved.exists() and saved.read_text(encoding="utf-8").strip() != items_digest(items):
        data = cfg.data_dir or cfg.data
        raise SftscopeError(f"{out} holds a probe of other items ({data} changed since it was "
                            "probed); use another --out")  # fmt: skip


def run_probe(
    cfg: ProbeConfig, engine: Engine | None = None, shard: tuple[int, int] | None = None,
    plan: ProbePlan | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The ``sftscope probe`` stage; resumable, see the module docstring. ``shard = (i, n)``
    probes only the chunks ``c % n == i`` and returns without merging: n workers probe one
    split in parallel, then one more call (no shard) merges their parts. ``plan``: what
    :func:`plan_probe` made of ``cfg`` already."""
    out = Path(cfg.out)
    if engine is None:
        check_engine(cfg.engine)
    plan = plan or plan_probe(cfg)
    items, thresholds, templates, sets = plan.items, plan.thresholds, plan.templates, plan.sets
    check_probe_folder(cfg, items)
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text(encoding="utf-8"))

    probe_items = [it for it in items
                   if it.subject is not None or cfg.method in QUESTION_METHODS]  # fmt: skip
    chunks = [
        probe_items[i : i + cfg.chunk_size] for i in range(0, len(probe_items), cfg.chunk_size)
    ]
    parts = out / "parts"
    finished = finished_chunks(out)
    todo = [c for c in range(len(chunks)) if c not in finished]
    if shard is not None:
        todo = [c for c in todo if c % shard[1] == shard[0]]
    started, done_now = time.perf_counter(), 0
    if todo and engine is None:  # a model that does not load leaves nothing written
        engine = engine_for(cfg, progress=False)
    atomic_write_text(out / "probe.yaml", dump_config(_settings(cfg)))
    atomic_write_text(out / ITEMS_DIGEST, items_digest(items) + "\n")
    if todo:  # what ran the chunks, for the summary (shards: the last to run one)
        atomic_write_json(parts / "engine.json", engine_info(engine))
    tokens_before = getattr(engine, "tokens_forwarded", 0)
    bar = tqdm(total=len(probe_items), desc=f"probe ({cfg.method})", unit="fact",
               initial=len(probe_items) - sum(len(chunks[c]) for c in todo))  # fmt: skip
    for c in todo:
        chunk, seed = chunks[c], cfg.seed * 1_000_003 + c
        gens: list[Record] = []
        if cfg.method == "sampling":
            records, gens = probe_sampling(engine, chunk, templates, cfg, seed)
        elif cfg.method == "likelihood":
            records = probe_likelihood(engine, chunk, templates, cfg, thresholds)
        elif cfg.method == "question":
            records, gens = probe_questions(engine, chunk, sets, cfg, seed)
        else:
            records = probe_slick(engine, chunk, sets, cfg, seed)
        if gens:
            text = "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in gens)
            atomic_write_bytes(
                parts / f"{c:05d}.gen.jsonl.gz", gzip.compress(text.encode(), mtime=0)
            )
        atomic_write_jsonl(parts / f"{c:05d}.jsonl", records)  # last: marks the chunk done
        done_now += len(chunk)
        bar.update(len(chunk))
    bar.close()
    wall = time.perf_counter() - started
    if shard is not None:
        return {"chunks": len(todo), "facts": done_now, "seconds": round(wall, 2)}
    return _finish(cfg, out, items, chunks, thresholds, wall, done_now,
                   getattr(engine, "tokens_forwarded", 0) - tokens_before)  # fmt: skip


def _read_engine(parts: Path) -> dict[str, Any] | None:
    path = parts / "engine.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _finish(
    cfg: ProbeConfig, out: Path, items: Sequence[QAItem], chunks: list,
    thresholds: Sequence[float], wall: float, done_now: int, tokens: int,
) -> dict[str, Any]:  # fmt: skip
    parts = out / "parts"
    records = [r for c in range(len(chunks)) for r in read_jsonl(parts / f"{c:05d}.jsonl")]
    probed = {r["id"] for r in records}
    records += [_record(it, cfg.method, None, None, n_correct=None, n_total=0)
                for it in items if it.id not in probed]  # fmt: skip
    order = {it.id: k for k, it in enumerate(items)}
    records.sort(key=lambda r: order[r["id"]])
    if cfg.method in ("sampling", "question"):
        blobs = [(parts / f"{c:05d}.gen.jsonl.gz").read_bytes() for c in range(len(chunks))]
        atomic_write_bytes(out / "generations.jsonl.gz", b"".join(blobs))  # gzip members
    atomic_write_jsonl(out / "mastery.jsonl", records)
    summary = {
        "method": cfg.method,
        "model": cfg.model,
        "data": cfg.data,
        "split": cfg.split,
        "thresholds": list(thresholds),
        "n_items": len(items),
        "n_probed": len(probed),
        "no_subject": len(items) - len(probed),
        "histogram": histogram(records),
        "wall_seconds": round(wall, 2),
        "facts_per_second": round(done_now / wall, 3) if done_now and wall else None,
        "forward_tokens": tokens,
        "engine": _read_engine(parts),
    }
    atomic_write_json(out / "summary.json", summary)
    shutil.rmtree(parts, ignore_errors=True)
    return summary
