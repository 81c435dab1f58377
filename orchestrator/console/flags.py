"""Command-line flags generated from a pydantic model's fields: one source for name, type, help.

Every scalar field (``int``, ``float``, ``str``, ``bool``, a ``Literal`` of choices, or one of
those ``| None``) becomes ``--field-name``; a ``bool`` field becomes a ``--x`` / ``--no-x`` pair.
Fields of other shapes (mappings, lists, nested models) are left to a config file or ``--set``.
Every generated flag defaults to ``None`` so that only the flags a user gives override a config
file, which overrides the model's defaults.
"""

from __future__ import annotations

import argparse
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = ["FlagSpec", "TOKEN_ENV", "flag_specs", "add_model_flags", "given_values", "token_or_env"]

# Where --token (serve, watch and the commands against a server) is read from when not given.
TOKEN_ENV = "ORCHESTRATOR_TOKEN"


def token_or_env(given: str | None) -> str | None:
    """``given`` (an empty string too: no token), else ``$ORCHESTRATOR_TOKEN`` if set and not empty."""
    return given if given is not None else (os.environ.get(TOKEN_ENV) or None)


_SCALARS: dict[type, str] = {int: "int", float: "float", str: "str", bool: "bool"}


@dataclass(frozen=True)
class FlagSpec:
    """How one model field is spelled and parsed on the command line."""

    field: str
    flag: str
    kind: str  # "int", "float", "str", "bool", "choice" or "int_or_choice" (a word or an int)
    choices: tuple[Any, ...] = ()
    help: str = ""


def _scalar_kind(annotation: Any) -> tuple[str, tuple[Any, ...]] | None:
    """('int'|'float'|'str'|'bool'|'choice', choices) for a flag-able annotation, else None."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _scalar_kind(members[0])
        kinds = [_scalar_kind(member) for member in members]
        if len(kinds) == 2 and sorted(k[0] for k in kinds if k is not None) == ["choice", "int"]:
            return "int_or_choice", next(k[1] for k in kinds if k is not None and k[0] == "choice")
        return None
    if origin is Literal:
        return "choice", get_args(annotation)
    if isinstance(annotation, type) and annotation in _SCALARS:
        return _SCALARS[annotation], ()
    return None


def _help(info: FieldInfo) -> str:
    text = info.description or ""
    if info.default is not None and not info.is_required() and info.default_factory is None:
        default = f"default {info.default}"
        text = f"{text} ({default})" if text else default
    return text.replace("%", "%%")  # argparse formats help strings


def flag_specs(
    model: type[BaseModel],
    *,
    spelling: Mapping[str, str] | None = None,
    skip: Iterable[str] = (),
) -> list[FlagSpec]:
    """The flags of ``model``'s scalar fields, in declaration order.

    ``spelling`` maps a field to its flag name without dashes (``{"use_cv": "cv"}`` gives
    ``--cv`` / ``--no-cv``); ``skip`` names fields that get no flag.
    """
    spelling = spelling or {}
    skipped = set(skip)
    specs = []
    for name, info in model.model_fields.items():
        kind = _scalar_kind(info.annotation)
        if name in skipped or kind is None:
            continue
        flag = "--" + spelling.get(name, name).replace("_", "-")
        specs.append(FlagSpec(name, flag, kind[0], kind[1], _help(info)))
    return specs


def add_model_flags(group: argparse._ActionsContainer, specs: Iterable[FlagSpec]) -> None:
    """Add one argument per spec to ``group``; each stores into ``dest=spec.field``."""
    for spec in specs:
        if spec.kind == "bool":
            group.add_argument(
                spec.flag,
                dest=spec.field,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=spec.help,
            )
        elif spec.kind == "choice":
            group.add_argument(
                spec.flag, dest=spec.field, choices=list(spec.choices), default=None, help=spec.help
            )
        elif spec.kind == "int_or_choice":
            group.add_argument(
                spec.flag,
                dest=spec.field,
                type=_int_or_choice(spec.choices),
                default=None,
                metavar="{" + ",".join(map(str, spec.choices)) + ",N}",
                help=spec.help,
            )
        else:
            parse = {"int": int, "float": float, "str": str}[spec.kind]
            group.add_argument(spec.flag, dest=spec.field, type=parse, default=None, help=spec.help)


def given_values(args: argparse.Namespace, specs: Iterable[FlagSpec]) -> dict[str, Any]:
    """The fields whose flags were given on the command line (``None`` means not given)."""
    values = {}
    for spec in specs:
        value = getattr(args, spec.field, None)
        if value is not None:
            values[spec.field] = value
    return values


def _int_or_choice(choices: tuple[Any, ...]) -> Any:
    """An argparse ``type``: one of ``choices`` as written, else an integer."""

    def parse(text: str) -> Any:
        if text in choices:
            return text
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected one of {', '.join(map(str, choices))} or an integer, got {text!r}"
            ) from None

    return parse
