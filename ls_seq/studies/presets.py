"""Presets of a study: frozen dataclasses, looked up by name, with fields overridden from the command line.

A study declares its preset type (a ``@dataclass(frozen=True)``: architecture, schedule, evaluation sizes)
and a :class:`PresetRegistry` of named instances. The recipe's flags that share a field's name override it
(:func:`apply_overrides`; ``None`` means "keep the preset's"), so every setting has one name from the preset
table to the command line to ``run_config.json``.

Examples:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Schedule:
    ...     steps: int
    ...     temperatures: tuple[float, ...] = (1.0,)
    >>> presets = PresetRegistry({"short": Schedule(10), "long": Schedule(1000)})
    >>> presets.resolve("short", steps=None, temperatures=[1.0, 2.0])
    Schedule(steps=10, temperatures=(1.0, 2.0))
    >>> presets.resolve("huge")
    Traceback (most recent call last):
        ...
    ValueError: `preset` must be one of 'long', 'short', got 'huge'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ls_seq.checks import check_choice

__all__ = ["PresetRegistry", "apply_overrides", "preset_dict"]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

P = TypeVar("P", bound="DataclassInstance")


def _check_preset(preset: Any) -> None:
    if not (dataclasses.is_dataclass(preset) and not isinstance(preset, type)):
        raise TypeError(f"a preset must be a dataclass instance, got {type(preset).__name__}")
    if not type(preset).__dataclass_params__.frozen:  # type: ignore[attr-defined]  # typeshed's DataclassInstance omits it
        raise TypeError(f"a preset must be a frozen dataclass (its values are shared), got {type(preset).__name__}")


def apply_overrides(preset: P, **overrides: Any) -> P:
    """A copy of ``preset`` with the fields in ``overrides`` replaced; ``None`` values keep the preset's.

    A list given for a field that holds a tuple becomes a tuple (the command line gives lists), so the copy
    stays hashable and compares equal to a preset written with tuples. An unknown field is a ``ValueError``
    naming it and the allowed fields.
    """
    _check_preset(preset)
    names = {f.name for f in dataclasses.fields(preset)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown preset field(s) {unknown}; allowed: {sorted(names)}")
    changes = {
        name: tuple(value) if isinstance(getattr(preset, name), tuple) and isinstance(value, list) else value
        for name, value in overrides.items()
        if value is not None
    }
    return dataclasses.replace(preset, **changes)


def preset_dict(preset: Any) -> dict[str, Any]:
    """The preset's fields as JSON gives them back (tuples as lists): what ``run_config.json`` records."""
    _check_preset(preset)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(preset).items()}


class PresetRegistry(Mapping[str, P], Generic[P]):
    """Named presets of one frozen dataclass type; ``argument`` is the flag that names them, for messages."""

    def __init__(self, presets: Mapping[str, P], *, argument: str = "preset") -> None:
        if not presets:
            raise ValueError("a preset registry needs at least one preset")
        types = {type(p) for p in presets.values()}
        if len(types) != 1:
            raise TypeError(f"every preset of a registry must have one type, got {sorted(t.__name__ for t in types)}")
        for preset in presets.values():
            _check_preset(preset)
        self._presets = dict(presets)
        self.argument = argument

    def __getitem__(self, name: str) -> P:
        check_choice(name, self.argument, sorted(self._presets))
        return self._presets[name]

    def __contains__(self, name: object) -> bool:  # Mapping's would call __getitem__, which raises ValueError
        return name in self._presets

    def __iter__(self) -> Iterator[str]:
        return iter(self._presets)

    def __len__(self) -> int:
        return len(self._presets)

    @property
    def fields(self) -> set[str]:
        """The field names of the presets (what a recipe's flags may override)."""
        return {f.name for f in dataclasses.fields(next(iter(self._presets.values())))}

    def resolve(self, name: str, **overrides: Any) -> P:
        """The preset ``name`` with ``overrides`` applied (:func:`apply_overrides`)."""
        return apply_overrides(self[name], **overrides)
