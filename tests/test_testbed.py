"""The synthetic testbed world: seeded, graded exposure, and a dataset every stage reads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sftscope.config import ProbeConfig
from sftscope.data.dataset import load_items, open_dataset
from sftscope.data.templates import load_templates
from sftscope.probe import run_probe
from sftscope.testbed.world import RELATIONS, TESTBED, WorldConfig, generate, write_dataset

CFG = WorldConfig(entities=200, objects=10, max_exposure=32, seed=3)


def test_world_is_seeded_complete_and_unambiguous() -> None:
    facts = generate(CFG)
    assert facts == generate(CFG) and facts != generate(CFG.model_copy(update={"seed": 4}))
    assert len(facts) == 200 * len(RELATIONS)
    people = {f.subject for f in facts}
    assert len(people) == 200
    objects = {f.object for f in facts}
    names = [n.lower() for n in people | objects]
    assert len(names) == len(set(names))  # unique across the whole world
    assert not any(a != b and f" {a} " in f" {b} " for a in names for b in names)


def test_exposure_is_graded_and_splits_are_sized() -> None:
    facts = generate(WorldConfig(entities=2000, max_exposure=32, seed=0))
    count = Counter(f.exposure for f in facts)
    assert count[0] > count[1] > count[4] > count[16] > 0  # P(e) ∝ (e + 1)^-s
    assert max(count) >= 20  # a frequent tail exists
    for rel in RELATIONS:
        splits = Counter(f.split for f in facts if f.relation == rel.id)
        assert splits["test"] == 200 and splits["dev"] == 200 and splits["train"] == 1600


def test_dataset_reads_like_any_other_and_probes(tmp_path: Path, tiny_engine) -> None:
    root = write_dataset(generate(CFG), CFG, tmp_path / "world")
    ds = open_dataset(root)
    assert ds.name == TESTBED and list(ds.relations) == [r.id for r in RELATIONS]
    items = load_items(ds, ["train", "dev", "test"])
    assert len(items) == len(RELATIONS) * 200
    assert all(it.subject and it.popularity is not None for it in items)
    assert set(load_templates(ds.name)) == {r.id for r in RELATIONS}
    cfg = ProbeConfig(
        model="tiny",
        data_dir=root,
        split="train",
        method="likelihood",
        templates=3,
        limit_per_relation=2,
        out=tmp_path / "probe",
    )
    summary = run_probe(cfg, engine=tiny_engine)
    assert summary.n_probed == 2 * len(RELATIONS)


@pytest.mark.slow
def test_testbed_build_cli_learns_graded_knowledge(tmp_path: Path) -> None:
    """The tiny preset end to end (~30 s): a loadable model whose greedy recall of a fact
    rises with the fact's exposure in the corpus (ground truth by construction)."""
    import json

    from typer.testing import CliRunner

    from sftscope.cli import app
    from sftscope.models.loading import load_model

    res = CliRunner().invoke(
        app, ["testbed", "build", "--preset", "tiny", "--out", str(tmp_path / "tb")]
    )
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "tb" / "testbed.json").read_text())
    recall = s["recall_by_exposure"]
    assert recall["0"]["recall"] < 0.3 < recall["8-15"]["recall"]
    model, tok = load_model(str(tmp_path / "tb" / "model"), device="cpu")
    assert model.config.num_hidden_layers == 2 and tok.eos_token_id is not None
    assert open_dataset(tmp_path / "tb" / "data").name == TESTBED
    res = CliRunner().invoke(app, ["testbed", "build", "--preset", "huge", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--preset 'huge'" in res.output
    # The probe against the ground truth: R rises with exposure.
    tb = tmp_path / "tb"
    res = CliRunner().invoke(
        app,
        [
            "probe",
            "--model",
            str(tb / "model"),
            "--data",
            "testbed",
            "--data-dir",
            str(tb / "data"),
            "--split",
            "train",
            "--method",
            "likelihood",
            "--templates",
            "4",
            "--out",
            str(tmp_path / "probe"),
        ],
    )
    assert res.exit_code == 0, res.output
    from sftscope.testbed.truth import probe_vs_exposure

    s = probe_vs_exposure(tmp_path / "probe", tb / "data")
    assert s["facts"] == 4 * 48 and s["spearman"] > 0.3
    assert s["buckets"]["0"]["mean_R"] < s["buckets"]["8-15"]["mean_R"]
    probe = str(tmp_path / "probe")
    res = CliRunner().invoke(
        app, ["testbed", "check", "--data", str(tb / "data"), "--probe", probe, "--after", probe]
    )
    assert res.exit_code == 0, res.output
    assert "Spearman ρ(R, exposure)" in res.output and "100.0% stay known" in res.output
    res = CliRunner().invoke(
        app, ["testbed", "check", "--data", str(tmp_path), "--probe", str(tmp_path / "probe")]
    )
    assert res.exit_code == 2 and str(tmp_path) in res.output
