"""One registry idiom: every plugin family is a lazy name -> "module:attr" table, the only list
of its names. Config choices and --help come from it, every entry loads, and facts about a
plugin are read from its entry."""

from __future__ import annotations

import typing

import pytest
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.config import EngineFields, ExecutorConfig, ProbeSettings, SelectProbe
from sftscope.errors import SftscopeError
from sftscope.pipeline.executors import probe_workers
from sftscope.registry import (
    ENGINES,
    EXECUTORS,
    PROBE_METHODS,
    READERS,
    RUNNERS,
    Registry,
    load_target,
)

FAMILIES = [ENGINES, EXECUTORS, READERS, RUNNERS, PROBE_METHODS]


def _choices(model: type, field: str) -> tuple[str, ...]:
    return typing.get_args(model.model_fields[field].annotation)


def test_config_choices_are_the_registry_names() -> None:
    assert _choices(EngineFields, "engine") == ENGINES.names
    assert _choices(ExecutorConfig, "kind") == EXECUTORS.names
    assert _choices(ProbeSettings, "method") == PROBE_METHODS.names
    assert _choices(SelectProbe, "method") == ("auto", *PROBE_METHODS.names)
    # an engine's settings block is a section of every model stage's config
    sections = {n for n, e in ENGINES.items() if e.settings}
    assert sections and sections <= set(EngineFields.model_fields)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda r: r.family)
def test_every_entry_loads(family: Registry) -> None:
    """Without importing the optional packages (vllm, submitit, ray are imported on use)."""
    for name, entry in family.items():
        assert entry.load() is not None, name
        for extra in ("settings", "config"):
            if getattr(entry, extra, None):
                assert load_target(getattr(entry, extra)) is not None, (name, extra)


def test_unknown_names_and_missing_packages_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SftscopeError, match="executor 'pbs': expected one of local, processes"):
        EXECUTORS["pbs"]
    monkeypatch.setattr("sftscope.registry.installed", lambda module: False)
    with pytest.raises(
        SftscopeError, match=r"needs the ray package: pip install 'sftscope\[ray\]'"
    ):
        EXECUTORS.check("ray")


def test_probe_workers_come_from_the_entry_or_the_class() -> None:
    assert probe_workers(ExecutorConfig(kind="local", workers=5)) == 1
    assert probe_workers(ExecutorConfig(kind="slurm")) == EXECUTORS["slurm"].workers
    assert probe_workers(ExecutorConfig(kind="ray", workers=3)) == 3
    assert probe_workers(ExecutorConfig(kind="processes", workers=2)) == 2
    assert probe_workers(ExecutorConfig(kind="ray", probe_shards=7)) == 7


def test_help_lists_every_reader_and_engine() -> None:
    runner = CliRunner()
    stats = runner.invoke(app, ["data", "stats", "--help"], terminal_width=200)
    assert all(name in stats.output for name in READERS.names), stats.output
    ev = runner.invoke(app, ["eval", "--help"], terminal_width=200)
    assert f"[{'|'.join(ENGINES.names)}]" in ev.output
