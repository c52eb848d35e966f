"""Numbers are numbers: a YAML or JSON `true` is never read as 1.

Pydantic's lax mode turns a boolean into 1 or 1.0 for an int or float field, so
`gen_len: {mean: true, max: 10}` or `nodes: true` would pass as 1. Strict mode
would refuse that but also refuses YAML lists for tuple fields, so instead every
model read from a file (spec, profile, plan) derives from `CheckedModel`, which
refuses a boolean for a number field (or inside a list of numbers, or as a value
of a dict of numbers, named by its key), and anything but true or false for a
boolean field (lax mode reads 1 or "yes" as True).
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


_UNIONS = (typing.Union, types.UnionType)
_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)


def _is_bool_field(annotation: Any) -> bool:
    """bool, or bool | None: a field that takes true or false and nothing else."""
    if annotation is bool:
        return True
    args = typing.get_args(annotation)
    return (typing.get_origin(annotation) in _UNIONS and bool in args
            and all(a is bool or a is type(None) for a in args))


def _holds_numbers(annotation: Any) -> bool:
    """Whether a field's type is a number (int, float) or a list/tuple of them or a
    dict with them as values, and takes no bool: a boolean there is a mistake. Other
    types (strings, literals, nested models) get pydantic's own message."""
    if annotation is int or annotation is float:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in _UNIONS:
        return bool not in args and any(_holds_numbers(a) for a in args)
    if origin in _SEQUENCES:
        return any(_holds_numbers(a) for a in args if a is not Ellipsis)
    if origin in _MAPPINGS:
        return len(args) == 2 and _holds_numbers(args[1])
    return False


def _is_mapping(annotation: Any) -> bool:
    """Whether a field's type is a dict (its values are then looked into)."""
    origin = typing.get_origin(annotation)
    if origin in _MAPPINGS or annotation is dict:
        return True
    return origin in _UNIONS and any(_is_mapping(a) for a in typing.get_args(annotation))


def _first_bool(value: Any, mapping: bool = False) -> tuple[str, bool] | None:
    """The first boolean in `value` or in any list/tuple inside it (and, with
    `mapping`, in a dict's values: then with its key), else None."""
    if isinstance(value, bool):
        return "", value
    if mapping and isinstance(value, dict):
        for key, item in value.items():
            found = _first_bool(item)
            if found is not None:
                return f"{key}: ", found[1]
    elif isinstance(value, (list, tuple)):
        for item in value:
            found = _first_bool(item)
            if found is not None:
                return found
    return None


class CheckedModel(BaseModel):
    """A model read from a file: unknown fields, NaN, infinity and booleans-for-numbers
    are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if _is_bool_field(annotation):  # and the other way round: 1 or "yes" is no bool
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            return value
        if not _holds_numbers(annotation):
            return value
        found = _first_bool(value, _is_mapping(annotation))
        if found is not None:
            where, flag = found
            raise ValueError(f"{where}expected a number, got the boolean {flag}")
        return value
