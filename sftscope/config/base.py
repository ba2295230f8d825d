"""What every stage config is made of: the base model, the field marker that keeps a field out
of fingerprints, and loading (defaults < YAML < CLI options < ``key=value`` overrides). The
stage configs themselves are in :mod:`sftscope.config.stages` and :mod:`sftscope.config.runs`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from sftscope.errors import SftscopeError
from sftscope.io import content_digest, read_yaml

C = TypeVar("C", bound=BaseModel)

# The values that configs and records share (the data's splits, the prompt formats).
Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")
PromptStyle = Literal["fewshot", "sft", "chat"]
# What a chat prompt asks for beside the question (configurable: ``chat_instruction``).
CHAT_INSTRUCTION = "Answer with the name only, in a few words."


def _batch_size(v: Any) -> int | str:
    """A positive int or ``auto``, with one error message for anything else."""
    if v == "auto":
        return v
    ok = isinstance(v, int | str) and not isinstance(v, bool) and str(v).strip().isdigit()
    if ok and int(v) >= 1:
        return int(v)
    raise ValueError(f"{v!r} is not a positive integer or 'auto'")


# Prompts per batch, or "auto": sized from free GPU memory on CUDA (sftscope.models.batching).
BatchSize = Annotated[int | Literal["auto"], PlainValidator(_batch_size)]


def runtime(default: Any = ..., description: str | None = None, **kw: Any) -> Any:
    """A field that says *how* or *where* a stage runs, never *what* it computes (device, batch
    size, output folder, progress): left out of fingerprints, so moving a finished run to a GPU
    or changing a batch size redoes nothing. The engine gives batch-size-independent results."""
    return Field(default, description=description, json_schema_extra={"fingerprint": False}, **kw)


def added(default: Any, description: str, **kw: Any) -> Any:
    """A field that changes results, added after runs were made with what is now its default:
    it counts in fingerprints only when set to something else, so those runs stay done. One
    whose default is None is also left out of the config's JSON and YAML while unset, so the
    stage specs and config files of those runs stay byte-equal too."""
    if default is None:
        kw.setdefault("exclude_if", _is_none)
    return Field(
        default, description=description, json_schema_extra={"fingerprint": "unless-default"}, **kw
    )


def content(default: Any, description: str, **kw: Any) -> Any:
    """A file or folder a stage reads: it counts in fingerprints by its content
    (:func:`sftscope.io.content_digest`), not by its path, so a run folder resumes from another
    clone, venv or cluster node, and an edited file redoes what read it."""
    extra = {"fingerprint": "content"}
    return Field(default, description=description, json_schema_extra=extra, **kw)


def key_values(text: str, form: str) -> dict[str, str]:
    """``a=x,b=y`` (a dict option's and ``key=value``'s form) as a mapping; ``form`` names one
    part's shape in the error (``FIELD=COLUMN``)."""
    pairs: dict[str, str] = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = (x.strip() for x in part.partition("="))
        if not (sep and key and value):
            raise ValueError(f"{part!r} is not {form}")
        if key in pairs:
            raise ValueError(f"{key!r} is given twice")
        pairs[key] = value
    return pairs


def _is_none(value: Any) -> bool:
    return value is None


def _marker(field: Any) -> Any:
    extra = field.json_schema_extra
    return extra.get("fingerprint") if isinstance(extra, dict) else None


def counts(field: Any) -> bool:
    """Whether a pydantic ``FieldInfo`` changes results (see :func:`runtime`)."""
    return _marker(field) is not False


def result_fields(cfg: BaseModel, exclude: set[str] | frozenset[str] = frozenset()) -> dict:
    """The config as JSON without the fields that do not change results, recursively: what a
    stage's fingerprint hashes and what a resumed stage's saved settings are compared by."""
    out: dict[str, Any] = {}
    dumped = cfg.model_dump(mode="json")
    for name, field in type(cfg).model_fields.items():
        if name in exclude or not counts(field) or name not in dumped:
            continue
        value = getattr(cfg, name)
        if _marker(field) == "unless-default" and value == field.default:
            continue
        if _marker(field) == "content" and value is not None:
            out[name] = {"content": content_digest(value)}
            continue
        out[name] = result_fields(value) if isinstance(value, BaseModel) else dumped[name]
    return out


class StageConfig(BaseModel):
    """Common base: unknown keys are errors (a typo must not silently become a default)."""

    model_config = ConfigDict(extra="forbid")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings to a dict; values are parsed as YAML scalars (``true``, ``3``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SftscopeError(f"override {pair!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value) if value else None
    return out


# Sections a YAML file may give as one word: ``executor: slurm`` is ``executor: {kind: slurm}``.
SHORTHANDS = {"executor": "kind"}


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """``train.learning_rate=1e-4`` sets a field of a nested section."""
    *parents, leaf = key.split(".")
    node = values
    for i, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and part in SHORTHANDS:  # executor: slurm, then slurm.*
            child = node[part] = {SHORTHANDS[part]: child}
        elif not isinstance(child, dict):
            raise SftscopeError(f"override {key!r}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = value


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    options: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> C:
    """``defaults`` (e.g. a preset) < YAML file < CLI options (those given) < ``key=value``
    overrides, validated by ``cls``."""
    values: dict[str, Any] = dict(defaults or {})
    if path is not None:
        loaded = read_yaml(path, "config file") or {}
        if not isinstance(loaded, dict):
            raise SftscopeError(f"{path}: expected a mapping of config fields")
        values.update(loaded)
    for key, value in (options or {}).items():  # "eval.data" sets a field of a section
        if value is not None:
            _set_dotted(values, key, value)
    for key, value in parse_overrides(overrides or []).items():
        _set_dotted(values, key, value)
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "config"
        where = f"{path}: " if path else ""
        raise SftscopeError(f"{where}config field {field!r}: {err['msg']}") from None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
