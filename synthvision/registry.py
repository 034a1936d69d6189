"""Registries of named components (object sources, background sources, scene generators).

Like timm's model registry: `register` a factory under a name with a pydantic `Params` model,
`create` it from a spec entry with validated params, `names` lists them. Heavy modules (torch,
diffusers) register lazily by import path so `import synthvision` stays fast.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from synthvision.errors import SpecError

T = TypeVar("T")


@dataclass
class _Entry:
    factory: Callable[..., Any] | None
    params: type[BaseModel] | None
    lazy_path: str | None = None  # "package.module" that registers the entry when imported


class Registry(Generic[T]):
    """Name -> factory(params: Params, **context) -> T."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, _Entry] = {}

    def register(
        self, name: str, params: type[BaseModel]
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            self._entries[name] = _Entry(factory=factory, params=params)
            return factory

        return deco

    def register_lazy(self, name: str, module: str) -> None:
        """Declare `name`, registered for real when `module` is imported."""
        if name not in self._entries:
            self._entries[name] = _Entry(factory=None, params=None, lazy_path=module)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def _entry(self, name: str, key_path: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise SpecError(
                f"{key_path}: unknown {self.kind} {name!r}; "
                f"choose one of: {', '.join(self.names())}"
            )
        if entry.factory is None and entry.lazy_path is not None:
            importlib.import_module(entry.lazy_path)
            entry = self._entries[name]
            if entry.factory is None:
                raise RuntimeError(f"{entry.lazy_path} did not register {self.kind} {name!r}")
        return entry

    def validate_params(self, name: str, params: dict[str, Any], key_path: str) -> BaseModel:
        """Validate `params` for `name`; errors name the key path (e.g. `objects.params.x`)."""
        entry = self._entry(name, f"{key_path}.name")
        assert entry.params is not None
        try:
            return entry.params.model_validate(params or {})
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc, f"{key_path}.params")) from None

    def create(self, name: str, params: dict[str, Any], key_path: str, **context: Any) -> T:
        """Build `name` from validated `params`.

        `context` (e.g. `class_names`, `spec`) is offered to the factory: it receives the keyword
        arguments it declares (or all of them with `**kwargs`), so simple sources need not take
        the whole spec.
        """
        validated = self.validate_params(name, params, key_path)
        entry = self._entry(name, f"{key_path}.name")
        assert entry.factory is not None
        sig = inspect.signature(entry.factory)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            context = {k: v for k, v in context.items() if k in sig.parameters}
        result: T = entry.factory(validated, **context)
        return result


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: `key.path: what was expected (got ...)`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        path = ".".join(p for p in (prefix, loc) if p)
        msg = str(err["msg"]).removeprefix("Value error, ")  # our validators' own sentences
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the README for the keys allowed here)"
        got = err.get("input")
        detail = f" (got {_short_repr(got)})"
        if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict):
            detail = ""  # a whole section as input: the message names the keys at fault
        lines.append(f"{path}: {msg}{detail}" if path else f"{msg}{detail}")
    return "; ".join(lines)


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
