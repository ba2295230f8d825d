"""``sftscope select``: which pairs of an SFT file to train on, by what the base model knows.

Every row of the user's QA file (any format a dataset reader takes: ``--data generic`` by
default, or ``popqa``, an EntityQuestions-layout folder, ...) is one pool, whatever its
``split`` column or the reader's hash split says. The base model's mastery of each pair is
measured by the probe stage over that pool (:mod:`sftscope.probe` with ``split: all``, in
``DIR/probe/``); with a few-shot method its exemplars come from the other rows, never from the
pair itself nor a copy of it. Method ``auto``: the paper's sampling protocol when every relation
has mapping templates and every row a subject, else ``question`` (any QA file; also under
``--probe-prompt chat``, the instruct model's own chat template). Then, in ``DIR``:

* ``annotated.jsonl``: every input row in input order, its own fields kept, plus
  ``mastery_level`` (0-4; null for a row the method could not probe), ``R``, ``n_correct`` and
  ``n_total``;
* ``histogram.json``: pairs per level (a list indexed by level), overall and per relation;
* ``level-<L>.jsonl`` (L = 0..4): the input rows of each level, as they were;
* ``recommended.jsonl``: at most ``size`` input rows of levels ``min_level``..``max_level``, a
  seeded sample balanced across relations (the paper's balanced draw, docs/method.md §1.4, with
  :func:`sftscope.subsets.draw_subset`: small relations taken whole, the rest shared);
  a pair the file repeats counts once. ``recommended.train.jsonl``: the same pairs as
  ``sftscope train --train-file`` reads them (question, answer = the first gold answer);
* ``select.json``: settings, histogram and the sample's composition; written last.

Why these defaults (docs/method.md):

* **Few samples** (``size`` 240): for every mastery level, accuracy peaks at ~240 training
  samples and falls with more; training on a whole level is nearly the worst (§5.1,
  Phenomenon 1: -8.86 points from 240 to 1,920 level-0 samples). The 2024 predecessor found 60
  samples enough to activate the knowledge (§9.3): ``--size 60`` (for one seed, those 60 pairs
  are among the 240).
* **No unknown facts** (``min_level`` 2): level-0 data is the worst to train on at every size,
  and low-mastery data hurts the items the model knew best (§5.1, Table 2: 45.47 mean of
  levels after 1,920 level-0 samples, 57.53 after level 2).
* **Mid and high mastery** (``max_level`` 4): level 2 gives the best mean over test levels
  (Table 2), the predecessor found higher levels more effective (§9.3), and training on a
  level helps test items of that level most (the diagonal, §5.1, §9.3), so levels 2-4 are kept
  together; ``--min-level 2 --max-level 2`` is the paper's single best level.

Resumable: ``DIR/probe`` is a probe folder (a killed run continues where it stopped; other
probe settings or a changed input file are refused); the files above are rebuilt from it, so a
rerun with another ``size``, ``min_level``, ``max_level`` or ``seed`` needs no model, and the
same config and seed give the same files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftscope.config import ProbeConfig, SelectConfig, SelectProbe
from sftscope.data.dataset import Dataset
from sftscope.data.readers import resolve_dataset
from sftscope.data.schema import QAItem
from sftscope.data.templates import load_templates, packaged_datasets
from sftscope.errors import SftscopeError
from sftscope.io import atomic_write_text, json_text, read_jsonl
from sftscope.layout import MASTERY
from sftscope.mastery import N_LEVELS
from sftscope.models.factory import check_engine
from sftscope.probe import plan_probe, probe_pool, run_probe
from sftscope.probe_methods.base import fact_key
from sftscope.subsets import MIXED, Subset, draw_subset

if TYPE_CHECKING:
    from sftscope.models.engines import Engine

Row = dict[str, Any]


def annotation(record: Row) -> Row:
    """The fields ``annotated.jsonl`` adds to a row, from its probe record."""
    return {
        "mastery_level": record["level"],
        "R": record["R"],
        "n_correct": record["n_correct"],
        "n_total": record["n_total"],
    }


def probe_config(cfg: SelectConfig, method: str) -> ProbeConfig:
    """The probe of the whole file, in ``DIR/probe``."""
    return ProbeConfig(
        **cfg.probe.model_dump(exclude={"method"}),
        method=method,
        split="all",
        model=cfg.model,
        base=cfg.base,
        relations=cfg.relations,
        limit_per_relation=cfg.limit_per_relation,
        out=Path(cfg.out) / "probe",
        **cfg.context(),
    )


def has_templates(
    dataset: Dataset, relations: Iterable[str], templates_file: Path | None, n: int = 1
) -> bool:
    """Whether every relation has ``n`` mapping templates (the packaged ones of the dataset,
    or ``templates_file``'s)."""
    if templates_file is None and dataset.name not in packaged_datasets():
        return False
    table = load_templates(dataset.name, templates_file)
    return all(rel in table and len(table[rel].mapping) >= n for rel in relations)


def pick_method(probe: SelectProbe, dataset: Dataset, items: list[QAItem]) -> str:
    """``auto``: the paper's protocol where it applies to every row (a subject, and mapping
    templates for its relation), else ``question``; always ``question`` under a chat prompt
    (the only method that asks the question)."""
    if probe.method != "auto":
        return probe.method
    if probe.prompt == "chat":
        return "question"
    ok = all(it.subject is not None for it in items) and has_templates(
        dataset, {it.relation for it in items}, probe.templates_file, probe.templates
    )
    return "sampling" if ok else "question"


def input_rows(dataset: Dataset, items: list[QAItem]) -> list[tuple[int, Row]]:
    """Each item's row as the input has it, and its position there: a table's own row with all
    its columns (:meth:`TableSource.original_rows`), or a layout file's raw item with its
    relation and split (so every output file is a generic QA table)."""
    originals = getattr(dataset.source, "original_rows", None)
    cache: dict[tuple[str, str], list[tuple[int, Row]]] = {}
    out = []
    for k, it in enumerate(items):
        key, index = (it.relation, it.split), int(it.id.rsplit("/", 1)[1])
        if key not in cache:
            cache[key] = (
                originals(*key)
                if originals
                else [
                    (-1, {"relation": it.relation, "split": it.split, **raw})
                    for raw in dataset.source.rows(*key)
                ]
            )
        pos, row = cache[key][index]
        out.append((pos if originals else k, row))
    return out


def level_histogram(items: list[QAItem], levels: dict[str, int | None]) -> dict[str, Any]:
    """Pairs per level (lists indexed by level 0-4), overall and per relation."""
    per_relation = {rel: [0] * N_LEVELS for rel in dict.fromkeys(it.relation for it in items)}
    unprobed = 0
    for it in items:
        level = levels[it.id]
        if level is None:
            unprobed += 1
        else:
            per_relation[it.relation][level] += 1
    overall = [sum(c[k] for c in per_relation.values()) for k in range(N_LEVELS)]
    return {
        "levels": list(range(N_LEVELS)),
        "overall": overall,
        "per_relation": per_relation,
        "unprobed": unprobed,
        "pairs": len(items),
    }


def recommend(
    items: list[QAItem],
    levels: dict[str, int | None],
    size: int,
    min_level: int,
    max_level: int,
    seed: int,
) -> tuple[Subset | None, dict[str, Any]]:
    """At most ``size`` pairs of levels ``min_level``..``max_level``, balanced across relations
    and seeded (:func:`draw_subset`); each fact once. None when no pair qualifies."""
    eligible = {
        i: lv for i, lv in levels.items() if lv is not None and min_level <= lv <= max_level
    }
    pool, seen = [], set()
    for it in items:
        if it.id in eligible and fact_key(it) not in seen:
            seen.add(fact_key(it))
            pool.append(it)
    relations = list(dict.fromkeys(it.relation for it in items))
    info = {
        "size": size,
        "min_level": min_level,
        "max_level": max_level,
        "seed": seed,
        "eligible": len(pool),
        "copies_skipped": len(eligible) - len(pool),
    }
    if not pool:
        empty = dict.fromkeys(relations, 0)
        return None, {**info, "n": 0, "composition": empty, "pools": empty}
    sub = draw_subset(pool, eligible, MIXED, min(size, len(pool)), seed, relations=relations)
    return sub, {**info, "n": len(sub.items), "composition": sub.composition, "pools": sub.pools}


def _jsonl(rows: list[Row]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)


def run_select(cfg: SelectConfig, engine: Engine | None = None) -> dict[str, Any]:
    """The ``sftscope select`` stage (see the module docstring); returns ``select.json``."""
    out = Path(cfg.out)
    if engine is None:
        check_engine(cfg.engine)
    dataset = resolve_dataset(cfg.data, cfg.data_dir, cfg.columns)
    asked = cfg.probe.method if cfg.probe.method != "auto" else "question"  # auto: no warning
    items = probe_pool(dataset, probe_config(cfg, asked))
    if not items:
        raise SftscopeError(f"{dataset.root}: no rows to select from")
    pcfg = probe_config(cfg, pick_method(cfg.probe, dataset, items))
    plan = plan_probe(pcfg, dataset, items)
    rows = input_rows(dataset, items)
    probe = run_probe(pcfg, engine, plan=plan)  # resumable; bad input fails before it writes

    records = {r["id"]: r for r in read_jsonl(pcfg.out / MASTERY)}
    levels = {it.id: records[it.id]["level"] for it in items}
    order = sorted(range(len(items)), key=lambda k: rows[k][0])
    ordered = [(items[k], rows[k][1]) for k in order]
    sub, picked = recommend(items, levels, cfg.size, cfg.min_level, cfg.max_level, cfg.seed)
    chosen = {it.id for it in sub.items} if sub else set()
    annotated = [{**row, **annotation(records[it.id])} for it, row in ordered]
    texts = {"annotated.jsonl": _jsonl(annotated)}
    for level in range(N_LEVELS):
        texts[f"level-{level}.jsonl"] = _jsonl([r for it, r in ordered if levels[it.id] == level])
    texts["recommended.jsonl"] = _jsonl([r for it, r in ordered if it.id in chosen])
    if sub is not None:  # the same pairs in input order, as sftscope train reads them
        sub = replace(sub, items=[it for it, _ in ordered if it.id in chosen])
    texts["recommended.train.jsonl"] = _jsonl(sub.rows() if sub else [])
    hist = level_histogram(items, levels)
    texts["histogram.json"] = json_text(hist)
    summary = {
        "model": cfg.model,
        "data": cfg.data,
        "data_dir": str(cfg.data_dir or dataset.root),
        "method": pcfg.method,
        "thresholds": probe.thresholds,
        "histogram": hist,
        "recommended": picked,
        "files": sorted(texts),
    }
    texts["select.json"] = json_text(summary)
    for name, text in texts.items():  # select.json last: its presence marks a finished run
        atomic_write_text(out / name, text)
    return summary
