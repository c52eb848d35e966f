"""Numbers are numbers: a YAML or JSON `true` is never read as 1.

Pydantic's lax mode turns a boolean into 1 or 1.0 for an int or float field, so
`gen_len: {mean: true, max: 10}` or `nodes: true` would pass as 1. Strict mode
would refuse that but also refuses YAML lists for tuple fields, so instead every
model read from a file (spec, profile, plan) derives from `CheckedModel`, which
refuses a boolean (anywhere inside a list, or as a value of a dict-typed field)
for any field whose type does not itself admit one.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type takes a bool (bool, Any, or a union/container holding one)."""
    if annotation is bool or annotation is Any:
        return True
    if isinstance(annotation, str):  # an unresolved forward reference: do not guess
        return True
    for arg in typing.get_args(annotation):
        if isinstance(arg, bool):  # Literal[True]
            return True
        if not isinstance(arg, (int, float, str)) and _admits_bool(arg):
            return True
    return False


def _is_mapping(annotation: Any) -> bool:
    """Whether a field's type is a dict (its values are then looked into; a nested
    model's dict is not: that model checks its own fields)."""
    origin = typing.get_origin(annotation)
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        return True
    return origin in (typing.Union, types.UnionType) and any(
        _is_mapping(arg) for arg in typing.get_args(annotation))


def _first_bool(value: Any, mapping: bool = False) -> bool | None:
    """The first boolean in `value` or in any list/tuple inside it (and, with
    `mapping`, in a dict's values), else None."""
    if isinstance(value, bool):
        return value
    items = value.values() if mapping and isinstance(value, dict) else \
        value if isinstance(value, (list, tuple)) else ()
    for item in items:  # a dict inside is a nested model's: it checks its own fields
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
        found = _first_bool(value, _is_mapping(annotation))
        if found is not None and not _admits_bool(annotation):
            raise ValueError(f"expected a number, got the boolean {found}")
        return value
