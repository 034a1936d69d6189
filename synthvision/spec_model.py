"""The base of every spec and component-params model."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class SpecModel(BaseModel):
    """Unknown keys are rejected, and a YAML boolean is never read as a number.

    pydantic's lax mode takes `True` for the integer 1 and the float 1.0, so `num_images: true`
    or `--set steps=yes` would build something no reader of the spec meant. Fields whose type
    admits a boolean (or anything) are left alone.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key in data and _holds_bool(data[key]) and _reads_bool_as_number(field.annotation):
                shown = json.dumps(data[key], default=str)  # as YAML spells it: true, [true, 0.5]
                raise ValueError(f"{key}: expected a number, not the boolean {shown}")
        return data


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, dict):  # e.g. `splits: {train: true}`
        value = list(value.values())
    return isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)


def _reads_bool_as_number(annotation: Any) -> bool:
    """Whether pydantic (lax mode) would turn a bool given for this type into 1 or 0: the type
    takes a number somewhere and a bool nowhere."""
    leaves = list(_leaf_types(annotation))
    takes_bool = any(leaf in (bool, Any, object) for leaf in leaves)
    return not takes_bool and any(leaf in (int, float) for leaf in leaves)


def _leaf_types(annotation: Any) -> typing.Iterator[Any]:
    """The plain types inside Annotated, unions, Optional, Literal and list/tuple/set arguments."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        yield from _leaf_types(args[0])
    elif origin is typing.Literal:
        yield from (type(v) for v in args)
    elif origin is dict:  # values only: keys are names
        yield from _leaf_types(args[1]) if len(args) == 2 else iter(())
    elif origin in (typing.Union, types.UnionType, list, tuple, set, frozenset):
        for arg in args:
            if arg is not Ellipsis:
                yield from _leaf_types(arg)
    else:
        yield annotation
