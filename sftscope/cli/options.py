"""Command-line options generated from the pydantic config models, so a stage's options cannot
drift from its config: a field's name is its option's (``limit_per_relation`` becomes
``--limit-per-relation``, a section's ``eval.data`` ``--eval-data`` unless the section is
flattened or the key renamed), its annotation the option's type, its description the help.

Types: ``int``, ``float``, ``str`` and ``Path`` as themselves; ``bool`` as ``--flag/--no-flag``;
a ``Literal`` as a string with its values listed in the help; a union (``BatchSize``: an int or
``auto``), a list (comma-separated) or a ``dict[str, str]`` (comma-separated ``key=value``) as a
string. The config validates every value as it would the same value from YAML or ``key=value``,
so a bad one is the same one-line ``error: config field ...`` with exit code 2 (a click
``Choice`` would print a framed usage error instead). A field of any other type (a tuple,
another dict) has no option and must be excluded by name; a field without a description is an
error: every option has help.

Every generated option defaults to ``None``, "not given": the command receives the given ones as
``options`` (dotted config key -> value) for :func:`sftscope.config.load_config`, where they rank
above the defaults and the YAML file and below the ``key=value`` overrides.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from rich.markup import escape

Options = dict[str, Any]  # what a generated command passes on: dotted config key -> value
SCALARS = (bool, int, float, str, Path)


@dataclass(frozen=True)
class ConfigOption:
    """One generated option: config ``key`` (dotted), option ``name`` (without ``--``)."""

    key: str
    name: str
    kind: type  # what the command line parses: one of SCALARS
    choices: tuple[str, ...]  # a Literal's values (shown; the config checks them)
    help: str
    panel: str | None  # the help panel of a section's options

    @property
    def param(self) -> str:
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def annotation(self) -> Any:
        decls = f"{self.flag}/--no-{self.name}" if self.kind is bool else self.flag
        metavar = f"[{'|'.join(self.choices)}]" if self.choices else None
        option = typer.Option(
            decls,
            help=escape(self.help),
            metavar=metavar,
            rich_help_panel=self.panel,
            show_default=False,
        )
        return Annotated[self.kind | None, option]


def _members(annotation: Any) -> list[Any]:
    """A union's members other than None, or ``[annotation]``."""
    if get_origin(annotation) in (Union, UnionType):
        return [a for a in get_args(annotation) if a is not NoneType]
    return [annotation]


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model of a nested section (``RestoreEval | None`` -> ``RestoreEval``), else None."""
    models = [a for a in _members(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if models else None


def _cli_type(annotation: Any) -> tuple[type, tuple[str, ...]] | None:
    """What the command line parses for a field, and a Literal's values; None: no option."""
    members = _members(annotation)
    if len(members) > 1:  # BatchSize (int | 'auto'), str | list[str]: the validators parse it
        simple = all(_cli_type(a) is not None for a in members)
        return (str, ()) if simple else None
    (t,) = members
    if get_origin(t) is Literal:
        values = get_args(t)
        return (str, values) if all(isinstance(v, str) for v in values) else None
    if t in SCALARS:
        return t, ()
    if get_origin(t) is list and get_args(t)[0] in (str, int, float):
        return str, ()  # comma-separated; the field's validator splits it
    if get_origin(t) is dict and get_args(t) == (str, str):
        return str, ()  # comma-separated key=value pairs; the field's validator parses them
    return None


def _shown(value: Any, kind: type, name: str) -> str:
    if kind is bool and isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    if isinstance(value, list | tuple):
        return ",".join(_shown(v, kind, name) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help(text: str | None, field: FieldInfo, kind: type, name: str, notes: list[str]) -> str:
    """The description, then ``notes`` (the choices, ...), required or the default."""
    if not text:
        raise ValueError(f"--{name}: its config field has no description (the option's help)")
    if field.is_required():
        notes.append("required")
    elif field.default is not None:
        notes.append(f"default: {_shown(field.default, kind, name)}")
    return f"{text} ({'; '.join(notes)})" if notes else text


def config_options(
    cls: type[BaseModel],
    fields: Iterable[str] | None = None,
    *,
    exclude: Iterable[str] = (),
    flatten: Iterable[str] = (),
    names: Mapping[str, str] | None = None,
    help: Mapping[str, str] | None = None,
) -> list[ConfigOption]:
    """The options of ``cls``'s ``fields`` (dotted keys; a section stands for all its fields;
    default: every field), less ``exclude``. A ``flatten``ed section's fields are named without
    the section (RestoreConfig's ``eval.data`` is ``--data``); ``names`` renames keys (``{"eval.
    seed": "eval-seed"}``), ``help`` replaces an option's whole help."""
    names, help, excluded = dict(names or {}), dict(help or {}), set(exclude)
    prefixes = sorted((f"{s}." for s in flatten), key=len, reverse=True)
    out: list[ConfigOption] = []
    visited: set[str] = set()

    def add(model: type[BaseModel], key: str, panel: str | None) -> None:
        visited.add(key)
        if key in excluded:
            return
        field = model.model_fields[key.rpartition(".")[2]]
        section = _section(field.annotation)
        if section is not None:
            for sub in section.model_fields:
                add(section, f"{key}.{sub}", key)
            return
        parsed = _cli_type(field.annotation)
        if parsed is None:
            raise ValueError(
                f"config field {key!r} ({field.annotation}) has no option type: "
                "exclude it (key=value still sets it)"
            )
        short = next((key[len(p) :] for p in prefixes if key.startswith(p)), key)
        name = names.get(key) or short.replace(".", "-").replace("_", "-")
        kind, choices = parsed
        origins = [get_origin(m) for m in _members(field.annotation)]
        notes = (
            [" | ".join(choices)]
            if choices
            else ["comma-separated"]
            if origins == [list]
            else ["comma-separated key=value"]
            if origins == [dict]
            else []
        )
        text = help.get(key) or _help(field.description, field, kind, name, notes)
        out.append(ConfigOption(key, name, kind, choices, text, panel and f"{panel}.* settings"))

    if fields is None:  # every field, the required ones (model, out, ...) first
        fields = sorted(cls.model_fields, key=lambda k: not cls.model_fields[k].is_required())
    for key in fields:
        *parents, _ = key.split(".")
        model = cls
        for part in parents:
            model = _section(model.model_fields[part].annotation)  # type: ignore[assignment]
        add(model, key, ".".join(parents) or None)
    unknown = (excluded - visited) | (set(names) | set(help)) - {o.key for o in out}
    if unknown:
        raise ValueError(f"{cls.__name__}: {sorted(unknown)[0]!r} is not an option's field")
    seen: dict[str, str] = {}
    for opt in out:
        if opt.name in seen:
            raise ValueError(f"--{opt.name} is both {seen[opt.name]} and {opt.key}: rename one")
        seen[opt.name] = opt.key
    return out


def with_config_options(cls: type[BaseModel], fields: Iterable[str] | None = None, **spec: Any):
    """Decorator: the command gets one option per field (see :func:`config_options`) after its
    own parameters and is called with ``options`` in their place: dotted key -> the value given,
    None when not given."""
    opts = config_options(cls, fields, **spec)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.name != "options"
        ]
        clash = {p.name for p in own} & {o.param for o in opts}
        if clash:
            raise ValueError(f"{fn.__name__}: parameter {sorted(clash)[0]!r} is also an option")

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            options = {o.key: kwargs.pop(o.param, None) for o in opts}
            return fn(*args, options=options, **kwargs)

        generated = [
            inspect.Parameter(
                o.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=o.annotation
            )
            for o in opts
        ]
        params = own + generated
        command.__signature__ = sig.replace(parameters=params, return_annotation=None)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.config_options = opts  # what the tests (and a reader) can list
        return command

    return decorate
