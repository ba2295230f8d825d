"""The one place engines are made: stages name an engine (``engine: NAME``, from the registry
:data:`sftscope.registry.ENGINES`) and ask here; a stage never builds one itself.

A new backend is one module with a class implementing :class:`~sftscope.models.engines.Engine`
(built from an :class:`~sftscope.models.request.EngineRequest`) and one registry line. Every
engine reports what it is (``engine.info``: name, version, device type) so stages record it
beside their results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sftscope.config.engine import HFSettings, engine_settings
from sftscope.models.request import EngineRequest
from sftscope.registry import ENGINES

if TYPE_CHECKING:
    from sftscope.models.engines import Engine

__all__ = [
    "EngineRequest",
    "check_engine",
    "engine_for",
    "engine_info",
    "hf_engine",
    "in_place_engine",
    "make_engine",
    "one_model_per_process",
]


def check_engine(name: str) -> None:
    """A one-line error for an unknown engine or one whose package is missing: stages call it
    before they write anything."""
    ENGINES.check(name)


def make_engine(name: str, request: EngineRequest) -> Engine:
    """The engine ``name`` over ``request.model``."""
    return ENGINES.check(name).load()(request)


def engine_for(cfg: Any, progress: bool = True) -> Engine:
    """The engine a stage config asks for (``engine``, ``model``, ``device``, ``batch_size``,
    ``trust_remote_code``, the engine's settings section, and ``base`` for an adapter)."""
    request = EngineRequest(
        cfg.model,
        cfg.device,
        cfg.batch_size,
        cfg.trust_remote_code,
        progress,
        engine_settings(cfg),
        getattr(cfg, "base", None),
    )
    return make_engine(cfg.engine, request)


def in_place_engine(cfg: Any) -> Engine:
    """The HF engine over ``cfg.tuned``, whose weights a restore sweep or a repair edits in
    place: the run's device, evaluation batch size, ``hf`` settings and adapter base."""
    request = EngineRequest(
        str(cfg.tuned),
        cfg.device,
        cfg.eval.batch_size,
        cfg.trust_remote_code,
        settings=cfg.hf,
        base=cfg.base,
    )
    return make_engine("hf", request)


def hf_engine(
    model: Any,
    tokenizer: Any,
    batch_size: int | str = 32,
    progress: bool = True,
    settings: HFSettings | None = None,
) -> Engine:
    """The HF engine over a model already loaded: the token-level KL holds both models'
    distributions, and an in-place restore sweep edits the loaded weights."""
    from sftscope.models.engines import HFEngine

    decode = (settings or HFSettings()).decode
    return HFEngine(
        model,
        tokenizer,
        batch_size=batch_size,
        progress=progress,
        shared_prefix=decode == "shared-prefix",
    )


def build_hf(req: EngineRequest) -> Engine:
    """``engine: hf``: the model loaded by transformers (:func:`~sftscope.models.loading.
    load_model`)."""
    from sftscope.models.loading import load_model

    model, tokenizer = load_model(
        req.model, device=req.device, trust_remote_code=req.trust_remote_code, base=req.base
    )
    return hf_engine(model, tokenizer, req.batch_size, req.progress, req.settings)


def engine_info(engine: Engine) -> dict[str, Any]:
    """``{"engine", "version", "device"}`` of an engine, for a stage's outputs."""
    return dict(getattr(engine, "info", {"engine": type(engine).__name__}))


def one_model_per_process(name: str) -> bool:
    """Whether a process may load only one model with this engine (vLLM)."""
    return ENGINES[name].one_model_per_process
