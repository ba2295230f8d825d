"""PEFT adapter folders, accepted wherever a model is.

An adapter folder (``adapter_config.json`` and ``adapter_model.safetensors``, as PEFT's and
TRL's ``save_pretrained`` write it, without full weights) stands for its base model with the
adapter merged. Its base is, in this order: the one the stage is given (``--base``; for a stage
comparing a tuned model with a base, that base: the adapter is what fine-tuning added to it),
or ``base_model_name_or_path`` in ``adapter_config.json``. A base that cannot be found is one
error line naming the adapter's config.

Loading merges with PEFT itself (``PeftModel.from_pretrained(...).merge_and_unload()``), so
evaluation, probing and the KL see exactly the merged model; the parameter level reads the
adapter's weight deltas tensor by tensor instead (:mod:`sftscope.params.lora`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftscope.errors import SftscopeError
from sftscope.io import read_json
from sftscope.models.locations import SMOLLM2, looks_like_path, offline

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class Adapter:
    """One adapter folder and its parsed ``adapter_config.json``."""

    path: Path
    config: dict[str, Any]

    @property
    def config_file(self) -> Path:
        return self.path / ADAPTER_CONFIG

    @property
    def weights(self) -> Path:
        return self.path / ADAPTER_WEIGHTS

    @property
    def named_base(self) -> str | None:
        """The base its config names (a hub id or a path on the machine that trained it)."""
        return self.config.get("base_model_name_or_path") or None

    def has_tokenizer(self) -> bool:
        """TRL saves the tokenizer beside the adapter (a chat template may be set there)."""
        return (self.path / "tokenizer_config.json").exists()


def find_adapter(name: str | Path) -> Adapter | None:
    """The adapter in folder ``name``, or None when it is not an adapter folder (a full model
    folder beside an ``adapter/`` subfolder, as ``sftscope train --lora`` writes, is a model)."""
    path = Path(name).expanduser()
    config = path / ADAPTER_CONFIG
    if not config.is_file() or any((path / f).exists() for f in _FULL_WEIGHTS):
        return None
    parsed = read_json(config, "adapter config")
    if not isinstance(parsed, dict):
        raise SftscopeError(f"{config}: not a PEFT adapter config (expected a JSON object)")
    if not (path / ADAPTER_WEIGHTS).exists():
        raise SftscopeError(f"{path}: {ADAPTER_WEIGHTS} is missing (safetensors adapters only)")
    return Adapter(path, parsed)


def adapter_base(adapter: Adapter, base: str | None = None) -> str:
    """The base model (a name :func:`~sftscope.models.loading.resolve_model` takes) the adapter
    applies to: ``base`` when given, else the one its config names; one error line when that
    is neither a local folder, the bundled model, nor in the local Hugging Face cache."""
    chosen = base or adapter.named_base
    if not chosen:
        raise SftscopeError(
            f"{adapter.config_file}: no base_model_name_or_path; give the base with --base"
        )
    if find_adapter(chosen) is not None:
        raise SftscopeError(f"{adapter.config_file}: its base {chosen} is itself an adapter")
    if chosen == SMOLLM2 or base:  # given by the user: resolved (and checked) on loading
        return chosen
    if looks_like_path(chosen):
        if (Path(chosen).expanduser() / "config.json").is_file():
            return chosen
    elif not offline() or _cached(chosen):
        return chosen
    raise SftscopeError(
        f"{adapter.config_file}: its base model {chosen} cannot be found (not a local model "
        "folder, nor in the local Hugging Face cache); give the base with --base"
    )


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def merge_adapter(model: Any, adapter: Adapter) -> Any:
    """``model`` with the adapter merged into its weights by PEFT (every PEFT method PEFT can
    merge: LoRA on linear, embedding and fused-expert weights, DoRA, ...)."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
    except (ValueError, KeyError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SftscopeError(f"{adapter.path}: PEFT cannot apply this adapter ({first})") from None
    model = peft_model.merge_and_unload()
    # PEFT leaves every weight frozen; from_pretrained does not, and CPU kernels round
    # differently on frozen weights (likelihood scores move at ~1e-7): unfreeze, so an adapter
    # scores exactly as its merged checkpoint does
    return model.requires_grad_(True)
