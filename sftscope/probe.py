"""Knowledge-mastery probe (docs/method.md §2): how well the base model knows each fact.

Every method (one module each in :mod:`sftscope.probe_methods`, named in the registry
:data:`sftscope.registry.PROBE_METHODS`) has one output contract (``mastery.jsonl``: id,
relation, split, R, level, n_correct, n_total, method): ``sampling`` (the paper's), ``likelihood``
(scored; calibrate it), ``slick`` (SliCK) and ``question`` (the sampling protocol for any QA
file). Sampling methods keep their generations in ``generations.jsonl.gz`` so facts can be
relabelled offline.

Few-shot exemplars (``slick``, ``question``) come from train, from dev when train is probed,
and with ``split: all`` (every item as one pool, e.g. an SFT file) from the pool itself. In
every case a fact is never its own exemplar: each set holds spare candidates and a fact skips
those with its own question (:func:`.probe_methods.base.shots_for`), so no prompt contains the
answer it asks for.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from tqdm.auto import tqdm

from sftscope.config import ProbeConfig, dump_config, result_fields
from sftscope.data.dataset import Dataset, load_items, warn_no_subject
from sftscope.data.readers import resolve_dataset
from sftscope.data.schema import SPLITS, QAItem
from sftscope.data.templates import load_templates, packaged_datasets
from sftscope.errors import SftscopeError
from sftscope.evaluate import exemplar_pool
from sftscope.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    read_jsonl,
    read_yaml,
)
from sftscope.layout import GENERATIONS, MASTERY, SUMMARY
from sftscope.mastery import (
    histogram,
    read_calibration,
)
from sftscope.models.factory import check_engine, engine_for, engine_info
from sftscope.outputs import ProbeShard, ProbeSummary
from sftscope.probe_methods.base import (
    ProbeInputs,
    ProbeMethod,
    exemplar_sets,
    record,
    spare_for,
)
from sftscope.registry import PROBE_METHODS

if TYPE_CHECKING:  # the engine (torch, transformers) loads only when a model runs
    from sftscope.models.engines import Engine

ITEMS_DIGEST = "items.sha256"  # in a probe folder: the digest of the items it probed


HINT = " (give templates_file, or use method question or slick, which need none)"


def _templates(dataset: str, cfg: ProbeConfig) -> dict:
    """The mapping templates of ``dataset``: the user's file, else the packaged ones."""
    if cfg.templates_file is None and dataset not in packaged_datasets():
        raise SftscopeError(f"no mapping templates for dataset {dataset}{HINT}")
    return load_templates(dataset, cfg.templates_file)


def probe_pool(dataset: Dataset, cfg: ProbeConfig) -> list[QAItem]:
    """The items of ``cfg.split``; for ``all``, every split the data has (train, dev, test in
    turn), ``limit_per_relation`` counted per relation over all of them."""
    warn = not PROBE_METHODS[cfg.method].question  # question methods need no subjects
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
    return read_calibration(cfg.calibration)


def probe_fields(cfg: ProbeConfig, exclude: frozenset[str] = frozenset()) -> dict:
    """What a probe's results depend on: its settings, with a calibration file's thresholds in
    place of its path (the same probe from a moved install or a worktree is the same probe)."""
    fields = result_fields(cfg, exclude={"calibration", *exclude})
    if cfg.calibration is not None:
        fields["calibrated_thresholds"] = list(load_thresholds(cfg))
    return fields


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
    current = probe_fields(_settings(cfg))
    try:
        return probe_fields(ProbeConfig.model_validate(saved)) != current
    except (ValidationError, SftscopeError):  # (a file it read, since removed: not this probe)
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


def plan_probe(
    cfg: ProbeConfig, dataset: Dataset | None = None, items: list[QAItem] | None = None
) -> ProbePlan:
    """Load the items (unless given: :func:`probe_pool` of ``dataset``), thresholds and
    templates or exemplar sets of a probe; bad input is an error here, before anything is
    written."""
    dataset = dataset or resolve_dataset(cfg.data, cfg.data_dir, cfg.columns)
    items = probe_pool(dataset, cfg) if items is None else items
    if not items:
        raise SftscopeError(f"no items to probe in {dataset.root} (split {cfg.split})")
    thresholds = load_thresholds(cfg)
    templates: dict[str, Sequence[str]] = {}
    sets: dict[str, list[list[QAItem]]] = {}
    if PROBE_METHODS[cfg.method].question:
        relations = sorted({it.relation for it in items})
        pool = items if cfg.split == "all" else exemplar_pool(dataset, cfg.split, relations)
        spare = spare_for(pool) if cfg.split == "all" else 0
        n_sets = getattr(cfg, PROBE_METHODS.load(cfg.method).sets_field)
        sets = exemplar_sets(pool, n_sets, cfg.slick_shots, cfg.seed, spare)
    else:
        table = _templates(dataset.name, cfg)
        for rel in sorted({it.relation for it in items}):
            if rel not in table:
                raise SftscopeError(
                    f"no mapping templates for relation {rel} of {dataset.name}{HINT}"
                )
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
        raise SftscopeError(
            f"{out} holds a probe of other items ({data} changed since it was "
            "probed); use another --out"
        )


def run_probe(
    cfg: ProbeConfig, engine: Engine | None = None, plan: ProbePlan | None = None
) -> ProbeSummary:
    """The ``sftscope probe`` stage; resumable, see the module docstring. ``plan``: what
    :func:`plan_probe` made of ``cfg`` already."""
    summary = _probe(cfg, engine, None, plan)
    assert isinstance(summary, ProbeSummary)
    return summary


def run_probe_shard(
    cfg: ProbeConfig, shard: tuple[int, int], engine: Engine | None = None
) -> ProbeShard:
    """One shard ``(i, n)`` of a probe: only the chunks ``c % n == i``, left unmerged; n workers
    probe one split in parallel, then :func:`run_probe` merges their parts."""
    part = _probe(cfg, engine, shard, None)
    assert isinstance(part, ProbeShard)
    return part


def _probe(
    cfg: ProbeConfig,
    engine: Engine | None,
    shard: tuple[int, int] | None,
    plan: ProbePlan | None,
) -> ProbeSummary | ProbeShard:
    out = Path(cfg.out)
    if engine is None:
        check_engine(cfg.engine)
    plan = plan or plan_probe(cfg)
    items, thresholds = plan.items, plan.thresholds
    inputs = ProbeInputs(thresholds, plan.templates, plan.sets)
    check_probe_folder(cfg, items)
    if (out / SUMMARY).exists():
        return ProbeSummary.read(out / SUMMARY)

    method: ProbeMethod = PROBE_METHODS.load(cfg.method)
    question = PROBE_METHODS[cfg.method].question
    probe_items = [it for it in items if it.subject is not None or question]
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
    if todo and finished and method.decodes:
        _check_same_decode(out, _read_engine(parts), engine_info(engine))
    atomic_write_text(out / "probe.yaml", dump_config(_settings(cfg)))
    atomic_write_text(out / ITEMS_DIGEST, items_digest(items) + "\n")
    if todo:  # what ran the chunks, for the summary (shards: the last to run one)
        atomic_write_json(parts / "engine.json", engine_info(engine))
    tokens_before = getattr(engine, "tokens_forwarded", 0)
    bar = tqdm(
        total=len(probe_items),
        desc=f"probe ({cfg.method})",
        unit="fact",
        initial=len(probe_items) - sum(len(chunks[c]) for c in todo),
    )
    for c in todo:
        chunk, seed = chunks[c], cfg.seed * 1_000_003 + c
        records, gens = method.run(engine, chunk, inputs, cfg, seed)
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
        return ProbeShard(chunks=len(todo), facts=done_now, seconds=round(wall, 2))
    return _finish(
        cfg,
        out,
        items,
        chunks,
        thresholds,
        wall,
        done_now,
        getattr(engine, "tokens_forwarded", 0) - tokens_before,
    )


def _read_engine(parts: Path) -> dict[str, Any] | None:
    path = parts / "engine.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _decode_setting(decode: str) -> str:
    """The ``hf.decode`` setting that decodes as ``engine.info["decode"]`` says (which adds
    a version to ``shared-prefix``: ``shared-prefix-1``)."""
    return "shared-prefix" if decode.startswith("shared-prefix") else decode


def _check_same_decode(out: Path, before: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """A resumed sampling probe must decode as its finished chunks did: another decode sums
    attention in another order, so a few samples differ, and one probe would mix two draws.
    (The HF engine before ``decode`` was recorded always used transformers' DynamicCache.)"""
    if before is None:
        return
    was = before.get("decode", "dynamic-cache" if before.get("engine") == "hf" else None)
    new = now.get("decode")
    if was is not None and new is not None and was != new:
        raise SftscopeError(
            f"probe {out}: its finished chunks were sampled with decode {was!r} and this "
            f"engine decodes with {new!r}; resume it with the same decode "
            f"(--hf-decode {_decode_setting(was)}), or probe into a new folder"
        )


def _finish(
    cfg: ProbeConfig,
    out: Path,
    items: Sequence[QAItem],
    chunks: list,
    thresholds: Sequence[float],
    wall: float,
    done_now: int,
    tokens: int,
) -> ProbeSummary:
    parts = out / "parts"
    records = [r for c in range(len(chunks)) for r in read_jsonl(parts / f"{c:05d}.jsonl")]
    probed = {r["id"] for r in records}
    records += [
        record(it, cfg.method, None, None, n_correct=None, n_total=0)
        for it in items
        if it.id not in probed
    ]
    order = {it.id: k for k, it in enumerate(items)}
    records.sort(key=lambda r: order[r["id"]])
    if PROBE_METHODS.load(cfg.method).generations:
        blobs = [(parts / f"{c:05d}.gen.jsonl.gz").read_bytes() for c in range(len(chunks))]
        atomic_write_bytes(out / GENERATIONS, b"".join(blobs))  # gzip members
    atomic_write_jsonl(out / MASTERY, records)
    summary = ProbeSummary(
        method=cfg.method,
        model=cfg.model,
        data=cfg.data,
        split=cfg.split,
        thresholds=list(thresholds),
        n_items=len(items),
        n_probed=len(probed),
        no_subject=len(items) - len(probed),
        histogram=histogram(records),
        wall_seconds=round(wall, 2),
        facts_per_second=round(done_now / wall, 3) if done_now and wall else None,
        forward_tokens=tokens,
        engine=_read_engine(parts),
    )
    summary.write(out / SUMMARY)
    shutil.rmtree(parts, ignore_errors=True)
    return summary
