"""Repair methods: each in-place result equals a plain dense implementation over whole state
dicts, and apply-then-undo leaves the loaded model bit-identical."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sftscope.errors import SftscopeError
from sftscope.params.diff import natural_key
from sftscope.params.reference import reference_restore
from sftscope.params.repair.base import RepairContext, Repairer
from sftscope.params.structure import structure_of
from sftscope.params.tensors import open_checkpoint
from sftscope.registry import REPAIR_METHODS

from helpers import perturbed_copy


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    tuned = perturbed_copy(tiny_model_dir, tmp_path_factory.mktemp("repair") / "tuned", seed=3)
    return tiny_model_dir, tuned


def _region(base: Path) -> list[str]:
    s = structure_of(base)
    return sorted(s.names(list(load_file(base / "model.safetensors")), "paper"), key=natural_key)


def reference(method: str, base: Path, tuned: Path, strength: float) -> dict[str, torch.Tensor]:
    """The repaired state dict, computed densely and independently of the streamed code."""
    if method == "restore":
        return next(iter(reference_restore(base, tuned, [strength])))[1]
    p_all, s_all = load_file(base / "model.safetensors"), load_file(tuned / "model.safetensors")
    out = dict(s_all)
    names = _region(base)
    layers = {n: structure_of(base).role(n).layer for n in names}
    top = max(v for v in layers.values() if v is not None)
    for n in names:
        p, s = p_all[n].float(), s_all[n].float()
        d = s - p
        if method == "interpolate":
            out[n] = p + strength * d
        elif method == "dare":
            g = torch.Generator().manual_seed(zlib.crc32(f"0:{n}".encode()))
            out[n] = p + d * (torch.rand(p.shape, generator=g) >= strength) / (1 - strength)
        elif method == "magnitude":
            flat = d.flatten().numpy()
            keep = np.zeros(flat.size, dtype=bool)
            keep[np.argsort(-np.abs(flat), kind="stable")[: round(strength * flat.size)]] = True
            out[n] = p + (d.flatten() * torch.from_numpy(keep)).view(p.shape)
        elif method == "spectral" and p.dim() == 2:
            u, sv, vh = torch.linalg.svd(d, full_matrices=False)
            k = round(strength * min(p.shape))
            out[n] = p + (u[:, :k] * sv[:k]) @ vh[:k]
        elif method == "depth":
            out[n] = p + (strength + (1 - strength) * layers[n] / top) * d
        elif method == "layers" and strength <= layers[n] <= strength + 3:
            out[n] = p
    return out


CASES = [
    ("restore", 20.0),
    ("interpolate", 0.3),
    ("dare", 0.4),
    ("magnitude", 0.25),
    ("spectral", 0.25),
    ("depth", 0.5),
    ("layers", 1.0),
]


def _loaded(tuned: Path) -> torch.nn.Module:
    from sftscope.models.loading import load_model

    return load_model(str(tuned), "cpu")[0]


@pytest.mark.parametrize(("method", "strength"), CASES, ids=[c[0] for c in CASES])
def test_in_place_repair_equals_a_dense_reference_and_undoes_exactly(
    method: str, strength: float, pair: tuple[Path, Path]
) -> None:
    base, tuned = pair
    model = _loaded(tuned)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = RepairContext(open_checkpoint(base), open_checkpoint(tuned))
    repair = REPAIR_METHODS.load(method)()
    repair.prepare(ctx, [strength, *REPAIR_METHODS[method].strengths[:2]])
    repairer = Repairer(ctx, model)
    repairer.apply(repair, strength)
    want = reference(method, base, tuned, strength)
    got = model.state_dict()
    changed = [n for n in ctx.names if not torch.equal(got[n], before[n])]
    assert changed, method
    for name in ctx.names:
        assert torch.equal(got[name], want[name].to(got[name].dtype)), (method, name)
    repairer.undo()
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before), method


def test_a_strength_out_of_range_is_one_line() -> None:
    for method, value in (("dare", 1.0), ("interpolate", 1.5), ("restore", 0.0)):
        with pytest.raises(SftscopeError, match=f"repair method '{method}'"):
            REPAIR_METHODS[method].check_strength(method, value)
    with pytest.raises(SftscopeError, match="repair method 'ties': expected one of restore"):
        REPAIR_METHODS["ties"]


def _cli(*args: str):
    from typer.testing import CliRunner

    from sftscope.cli import app

    return CliRunner().invoke(app, list(args))


def _data(out: Path) -> list[str]:
    from helpers import EQ_FIXTURE

    return [
        "--data",
        "entityquestions",
        "--data-dir",
        str(EQ_FIXTURE),
        "--relations",
        "P17,P36",
        "--limit-per-relation",
        "3",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def _repair(pair: tuple[Path, Path], out: Path) -> list[str]:
    """``sftscope repair`` of the pair with the tiny data settings, into ``out``."""
    base, tuned = pair
    return ["repair", "--base", str(base), "--tuned", str(tuned), *_data(out)]


def test_repair_end_to_end_picks_on_dev_reports_test_and_resumes(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    import json

    base, tuned = pair
    out = tmp_path / "repair"
    args = _repair(pair, out)
    args += ["--methods", "restore,interpolate,dare", "--strengths", "restore=5/40,dare=0.5"]
    res = _cli(*args)
    assert res.exit_code == 0, res.output
    s = json.loads((out / "repair.json").read_text())
    assert [p["label"] for p in s["points"]] == [
        "restore-5",
        "restore-40",
        "interpolate-0.25",
        "interpolate-0.5",
        "interpolate-0.75",
        "interpolate-0.9",
        "dare-0.5",
    ]
    assert [p["method"] for p in s["picks"]] == ["restore", "interpolate", "dare"]
    assert all(p["split"] == "test" and 0 <= p["p_value"] <= 1 for p in s["picks"])
    assert set(s["tuned"]) == {"dev", "test"} and s["tuned"]["test"]["lost"] == 0
    assert "repair: per method, the dev pick on test" in res.output
    report = (out / "report" / "report.md").read_text()
    assert "Picks on test:" in report and (out / "report" / "figures" / "pareto.png").exists()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    assert _cli(*args).exit_code == 0  # everything evaluated: nothing is applied again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == stamps


def test_repair_decodes_as_hf_decode_says(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """The repair's engine takes ``--hf-decode`` like every other stage's: each evaluation
    records the decode it ran with."""
    import json

    out = tmp_path / "repair"
    args = [*_repair(pair, out), "--methods", "dare", "--strengths", "dare=0.5"]
    res = _cli(*args, "--hf-decode", "dynamic-cache")
    assert res.exit_code == 0, res.output
    for summary in out.glob("eval/*/*/summary.json"):
        assert json.loads(summary.read_text())["engine"]["decode"] == "dynamic-cache"
    assert len(list(out.glob("eval/*/*/summary.json"))) >= 3


def test_repair_scores_test_by_mastery_level_from_a_probe_of_the_split(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--mastery DIR`` with a probe of the test split only (a grid's probe/ folder): test
    points get per-level scores, dev points are scored without levels."""
    import json

    base, tuned = pair
    probe = ["probe", "--model", str(base), "--split", "test", "--method", "likelihood"]
    res = _cli(*probe, "--templates", "2", *_data(tmp_path / "probe" / "test"))
    assert res.exit_code == 0, res.output
    out = tmp_path / "repair"
    args = _repair(pair, out)
    res = _cli(*args, "--methods", "interpolate", "--mastery", str(tmp_path / "probe"))
    assert res.exit_code == 0, res.output
    test = json.loads((out / "eval" / "tuned" / "test" / "summary.json").read_text())
    dev = json.loads((out / "eval" / "tuned" / "dev" / "summary.json").read_text())
    assert test["by_level"] and not dev.get("by_level")


def test_an_in_place_point_evaluates_as_the_same_point_written_and_reloaded(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--save dare:0.5`` writes the point (equal to the dense reference, loadable with
    from_pretrained); evaluated from disk, its records are those of the in-place point."""
    from transformers import AutoModelForCausalLM

    base, tuned = pair
    out = tmp_path / "repair"
    res = _cli(
        "repair",
        "--base",
        str(base),
        "--tuned",
        str(tuned),
        *_data(out),
        "--methods",
        "dare",
        "--strengths",
        "dare=0.5",
        "--save",
        "dare:0.5",
    )
    assert res.exit_code == 0, res.output
    written = out / "models" / "dare-0.5"
    assert "repaired checkpoint" in res.output
    want, got = reference("dare", base, tuned, 0.5), load_file(written / "model.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)
    AutoModelForCausalLM.from_pretrained(written)
    res = _cli(
        "eval",
        "--model",
        str(written),
        "--prompt",
        "sft",
        "--split",
        "dev",
        *_data(tmp_path / "ev"),
    )
    assert res.exit_code == 0, res.output
    in_place = (out / "eval" / "dare-0.5" / "dev" / "records.jsonl").read_text()
    assert in_place == (tmp_path / "ev" / "records.jsonl").read_text()


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--methods", "ties"], "repair method 'ties': expected one of restore"),
        (["--methods", "dare", "--strengths", "dare=1"], "repair method 'dare': p 1 is outside"),
        (["--methods", "dare", "--strengths", "spectral=0.1"], "'spectral', which is not in"),
        (["--methods", "dare", "--save", "dare"], "expected best or METHOD:STRENGTH"),
        (
            ["--methods", "layers", "--strengths", "layers=2"],
            "first layer 2 is not a layer of 0..1",
        ),
    ],
)
def test_bad_repair_input_is_one_line_and_writes_nothing(
    pair: tuple[Path, Path], tmp_path: Path, extra: list[str], says: str
) -> None:
    base, tuned = pair
    out = tmp_path / "repair"
    res = _cli("repair", "--base", str(base), "--tuned", str(tuned), *_data(out), *extra)
    errors = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and says in errors[0], res.output
    assert not out.exists()


def test_repair_of_a_different_architecture_or_without_dev_is_one_line(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    from sftscope.models.tiny import save_tiny_arch

    from helpers import EQ_FIXTURE, fixture_questions

    base, tuned = pair
    other = save_tiny_arch("gpt2", fixture_questions(), tmp_path / "gpt2")
    out = tmp_path / "repair"
    res = _cli("repair", "--base", str(other), "--tuned", str(tuned), *_data(out))
    assert res.exit_code == 2 and "error:" in res.output and not out.exists(), res.output
    no_dev = tmp_path / "no-dev"
    shutil.copytree(EQ_FIXTURE, no_dev, ignore=shutil.ignore_patterns("dev"))
    args = [*_data(out), "--data-dir", str(no_dev)]
    res = _cli("repair", "--base", str(base), "--tuned", str(tuned), *args)
    errors = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "dev" in errors[0], res.output
    assert not out.exists()


def test_audit_repair_adds_the_comparison_to_an_audit(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """``audit --repair`` plans the comparison as a stage of the audit (resumed like the others)
    and puts its picks into audit.json and the audit's report."""
    import json

    from sftscope.pipeline.audit import Audit

    from helpers import tiny_audit

    base, tuned = pair
    cfg = tiny_audit(base, tuned, tmp_path / "audit").model_copy(
        update={"repair": ["interpolate", "depth"]}
    )
    audit = Audit(cfg)
    assert "params/tuned/repair" in [s.key for s in audit.stages]
    audit.run()
    s = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert [p["method"] for p in s["params"]["repair"]["picks"]] == ["interpolate", "depth"]
    page = (tmp_path / "audit" / "report" / "report.md").read_text()
    assert "Repair methods, compared on the same facts" in page
    assert all(status == "done" for _, status in Audit(cfg).plan())
    with pytest.raises(SftscopeError, match="repair method 'ties'"):
        tiny_audit(base, tuned, tmp_path / "x").model_validate(
            {**cfg.model_dump(), "repair": "ties"}
        )


def test_keep_task_picks_the_most_knowledge_that_keeps_the_task_gain() -> None:
    from sftscope.outputs import RepairPoint
    from sftscope.repair import _keeping

    def pt(label: str, task: float, ood: float) -> RepairPoint:
        return RepairPoint(label=label, split="dev", strength=0.5, in_domain=task, ood=ood)

    base, tuned = pt("base", 0.2, 0.9), pt("tuned", 0.6, 0.5)
    points = [pt("a", 0.60, 0.55), pt("b", 0.59, 0.70), pt("c", 0.40, 0.88)]
    assert _keeping(points, 0.95, base, tuned).label == "b"  # c keeps only 50 % of the gain
    assert _keeping(points, 0.5, base, tuned).label == "c"
    assert _keeping([pt("a", 0.1, 0.9)], 0.95, base, tuned).label == "a"  # none keeps: best


def test_repair_keep_task_evaluates_the_base_and_says_its_rule(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    import json

    base, tuned = pair
    out = tmp_path / "repair"
    args = _repair(pair, out)
    res = _cli(*args, "--methods", "interpolate", "--keep-task", "0.95")
    assert res.exit_code == 0, res.output
    s = json.loads((out / "repair.json").read_text())
    assert s["pick_rule"] == "keep-task 0.95" and set(s["base"]) == {"dev", "test"}
    assert "keeping 95 % of the task gain" in (out / "report" / "report.md").read_text()


def test_repair_scores_and_picks_on_the_fine_tunes_own_task_data(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--task-data``: every point also answers the fine-tune's held-out SFT rows (any shape
    train reads: here question/answer and chat rows would both do); the picks go by it."""
    import json

    from helpers import write_jsonl

    base, tuned = pair
    rows = [{"question": "Which country is Paris in?", "answer": "France"}] * 3
    task = write_jsonl(tmp_path / "task.jsonl", rows)
    out = tmp_path / "repair"
    args = _repair(pair, out)
    res = _cli(*args, "--methods", "interpolate", "--task-data", str(task))
    assert res.exit_code == 0, res.output
    s = json.loads((out / "repair.json").read_text())
    assert all(p["task"] is not None for p in s["points"] + s["picks"])
    assert s["tuned"]["dev"]["task"] is not None
    assert (out / "eval" / "interpolate-0.5" / "task" / "task.jsonl").exists()
    assert "in-domain" in (out / "report" / "report.md").read_text()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "no question here"}])
    res = _cli(
        *args, "--methods", "interpolate", "--task-data", str(bad), "--out", str(tmp_path / "x")
    )
    errors = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "bad.jsonl" in errors[0], res.output
    assert not (tmp_path / "x").exists()
