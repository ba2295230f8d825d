"""The knowledge callback: a tiny model that knows 8 facts, fine-tuned at a high learning rate
on 16 others, forgets them step by step; the curve is logged, ``stop_below`` stops the run and
says why, the last numbers equal an eval of the saved model, and the callback works in a plain
``transformers.Trainer`` as in TRL's ``SFTTrainer``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sftscope.callbacks import KnowledgeCallback, WatchSet
from sftscope.config import TrainConfig
from sftscope.train import run_train

from helpers import EQ_FIXTURE, fixture_questions, write_jsonl


def _rows(relation: str, n: int) -> list[dict]:
    rows = json.loads((EQ_FIXTURE / "test" / f"{relation}.test.json").read_text())[:n]
    return [{"question": r["question"], "answer": r["answers"][0]} for r in rows]


@pytest.fixture(scope="module")
def knows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(a tiny model that answers 8 P17 facts in the SFT prompt, those facts as a QA file, 16
    P36 facts to fine-tune it on)."""
    from sftscope.models.tiny import save_tiny

    root = tmp_path_factory.mktemp("knows")
    facts = write_jsonl(root / "facts.jsonl", _rows("P17", 8))
    base = save_tiny(fixture_questions(), root / "tiny")
    _train(base, facts, root / "knows", epochs=40, logging_steps=50)
    return root / "knows", facts, write_jsonl(root / "other.jsonl", _rows("P36", 16))


def _train(model: Path, rows: Path, out: Path, **kw) -> dict:
    """``sftscope train`` at a high learning rate (a tiny model learns or forgets in steps)."""
    recipe = {"learning_rate": 3e-3, "batch_size": 4, "device": "cpu", **kw}
    return run_train(TrainConfig(model=str(model), train_file=rows, out=out, **recipe))


def _forget(knows, out: Path, **kw) -> dict:
    model, facts, other = knows
    return _train(model, other, out, epochs=5, watch=facts, watch_every=2, **kw)


def test_known_kept_falls_as_sft_overwrites_the_facts_and_equals_an_eval(knows, tmp_path) -> None:
    from typer.testing import CliRunner

    from sftscope.cli import app
    from sftscope.io import read_jsonl

    s = _forget(knows, tmp_path / "ft")
    rows = read_jsonl(tmp_path / "ft" / "knowledge_log.jsonl")
    assert [r["step"] for r in rows] == list(range(0, s["steps"] + 1, 2))
    kept = [r["knowledge/known_kept"] for r in rows]
    assert kept[0] == 1.0 and kept[-1] < 0.5 and min(kept[1:]) < kept[0]
    logged = [
        e for e in read_jsonl(tmp_path / "ft" / "train_log.jsonl") if "knowledge/known_kept" in e
    ]
    assert len(logged) == len(rows)  # through Trainer.log, so to every report_to
    assert s["watch"]["knowledge/known_kept"] == kept[-1] and s["watch"]["stopped"] is None
    # the last numbers are those of an eval of the saved model on the same facts
    _, facts, _ = knows
    res = CliRunner().invoke(
        app,
        ["eval", "--model", str(tmp_path / "ft"), "--data", "generic", "--data-dir", str(facts)]
        + ["--prompt", "sft", "--split", "train", "--device", "cpu", "--out", str(tmp_path / "ev")],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["overall"]["containment"] == kept[-1]


def test_stop_below_ends_training_early_and_says_why(knows, tmp_path) -> None:
    full = _forget(knows, tmp_path / "full")
    s = _forget(knows, tmp_path / "stopped", watch_stop_below=0.75)
    assert s["steps"] < full["steps"]
    assert (
        "known facts kept" in s["watch"]["stopped"] and "training stopped" in s["watch"]["stopped"]
    )


def test_the_callback_works_in_a_plain_trainer(knows, tmp_path) -> None:
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from sftscope.models.loading import load_model

    model_dir, facts, other = knows
    model, tok = load_model(str(model_dir), "cpu")
    model.train()
    texts = [f"<|question|> {r['question']} <|answer|> {r['answer']}" for r in _rows("P36", 16)]
    data = Dataset.from_list([{"input_ids": ids} for ids in tok(texts)["input_ids"]])
    args = TrainingArguments(
        output_dir=str(tmp_path / "plain"),
        per_device_train_batch_size=4,
        num_train_epochs=3,
        learning_rate=3e-3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=100,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tok,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
    )
    callback = KnowledgeCallback(WatchSet.load(facts), every_steps=3).attach(trainer)
    trainer.train()
    assert callback.rows[0]["step"] == 0 and callback.rows[-1]["step"] == trainer.state.global_step
    assert (tmp_path / "plain" / "knowledge_log.jsonl").exists()
    assert any("knowledge/known_kept" in e for e in trainer.state.log_history)
    assert model.training  # train mode restored


def test_a_watch_set_from_a_probe_takes_known_and_unknown_facts(tmp_path: Path) -> None:
    """200 known (levels 3-4) and 100 unknown (0-1) by default, here capped by what exists."""
    from sftscope.data.dataset import load_items
    from sftscope.data.readers import resolve_dataset

    items = load_items(resolve_dataset("entityquestions", EQ_FIXTURE), ["test"], ["P17"])
    probe = tmp_path / "probe"
    probe.mkdir()
    levels = {it.id: k % 5 for k, it in enumerate(items)}
    write_jsonl(
        probe / "mastery.jsonl",
        [
            {"id": i, "relation": "P17", "split": "test", "R": 0.0, "level": lv}
            for i, lv in levels.items()
        ],
    )
    cfg = {"model": "m", "data": "entityquestions", "data_dir": str(EQ_FIXTURE), "split": "test"}
    (probe / "probe.yaml").write_text(yaml.safe_dump({**cfg, "out": str(probe)}))
    watch = WatchSet.from_probe(probe, known=3, unknown=2)
    chosen = list(watch.levels.values())
    assert sum(lv >= 3 for lv in chosen) == 3 and sum(lv <= 1 for lv in chosen) == 2
    again = WatchSet.from_probe(probe, known=3, unknown=2)
    assert [it.id for it in again.items] == [it.id for it in watch.items]  # seeded


def test_a_grid_with_watch_records_each_cells_curve(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sftscope.config import GridConfig, load_config
    from sftscope.io import read_jsonl
    from sftscope.pipeline.grid import Grid

    from helpers import grid_yaml

    path = grid_yaml(tmp_path, tiny_model_dir, sizes=[4], levels=[1], watch=True)
    Grid(load_config(GridConfig, path)).run()
    rows = read_jsonl(tmp_path / "run" / "models" / "1-4-0" / "knowledge_log.jsonl")
    assert rows[0]["step"] == 0 and "knowledge/acc_L0" in rows[0]
    from sftscope.report.render import write_report

    page = (write_report(tmp_path / "run") / "report.md").read_text()
    assert "## Knowledge while training" in page and "unknown_gained_vs_step.png" in page


def test_audit_shows_the_curve_of_a_fine_tune_trained_with_watch(knows, tmp_path) -> None:
    """An sftscope fine-tune carries its knowledge_log.jsonl: the audit puts the curve into
    audit.json and draws it in its report."""
    from sftscope.io import read_jsonl
    from sftscope.pipeline.audit import Audit

    from helpers import tiny_audit

    _forget(knows, tmp_path / "ft")
    Audit(tiny_audit(knows[0], tmp_path / "ft", tmp_path / "audit")).run()
    s = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert s["training"] == read_jsonl(tmp_path / "ft" / "knowledge_log.jsonl")
    page = (tmp_path / "audit" / "report" / "report.md").read_text()
    assert "Knowledge while it was trained" in page
    assert (tmp_path / "audit" / "report" / "figures" / "known_kept_vs_step.png").exists()


def test_a_qa_file_is_watched_whole_whatever_its_split(knows) -> None:
    """A QA file without a split column is watched whole (the reader's hash split would keep
    only about a tenth of it); up to 300 rows."""
    _, facts, other = knows
    assert len(WatchSet.load(facts).items) == 8
    assert len(WatchSet.load(other, limit=5).items) == 5
