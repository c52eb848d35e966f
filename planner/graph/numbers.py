"""Numbers in a spec are numbers: a YAML `true` is never read as 1.

Pydantic's lax mode turns a boolean into 1 or 1.0 for an int or float field, so
`gen_len: {mean: true, max: 10}` or `nodes: true` would pass as 1. Strict mode
would refuse that but also refuses YAML lists for tuple fields, so instead every
spec model derives from `CheckedModel`, which refuses a boolean (anywhere inside
a list) for any field whose type does not itself admit one.
"""

from __future__ import annotations

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


def _first_bool(value: Any) -> bool | None:
    """The first boolean in `value` or in any list/tuple inside it, else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_bool(item)
            if found is not None:
                return found
    return None


class CheckedModel(BaseModel):
    """A spec model: unknown fields, NaN, infinity and booleans-for-numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        found = _first_bool(value)
        if found is not None and info.field_name is not None \
                and not _admits_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got the boolean {found}")
        return value
