"""Typed settings: one dataclass per concern, each the single owner of its options.

Every settings class (`DataConfig` in `data`, `ModelConfig` in `models`, `MaskConfig` in `masking`, a method's
config in `methods`) derives from `Settings`, which gives it

- `validate()`, called on construction: a `HeadattrError` naming the flag and its valid range;
- `to_meta()`: its fields under their run.json names (one flat `config` object per run, so the names of
  different classes never collide);
- `from_meta(config)`: the same object back from a run.json `config`, missing keys taking the defaults, so
  that `prune`, `ensemble` and the demo read a run's settings through the class that wrote them.

A field's run.json name is its own name unless the class maps it in `META_NAMES`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

from headattr.errors import HeadattrError

S = TypeVar("S", bound="Settings")


class Settings:
    """Mixin for frozen dataclasses of options (see the module docstring)."""

    META_NAMES: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `HeadattrError` for the first invalid field; the default accepts everything."""

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready fields under their run.json names (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[self.META_NAMES.get(f.name, f.name)] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_meta(cls: type[S], config: dict[str, Any]) -> S:
        """The settings recorded in a run.json `config` (missing keys: the defaults)."""
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = cls.META_NAMES.get(f.name, f.name)
            if key in config:
                value = config[key]
                kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    def replace(self: S, **changes: Any) -> S:
        """A copy with `changes` applied (and validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def choice(flag: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise unless `value` is one of `allowed`."""
    if value not in allowed:
        raise HeadattrError(f"unknown {flag} {value!r}; choose one of {', '.join(allowed)}")


def at_least(flag: str, value: int | float, low: int | float) -> None:
    """Raise unless `value >= low`."""
    if value < low:
        raise HeadattrError(f"{flag} must be at least {low}, got {value}")
