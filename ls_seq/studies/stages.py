"""A stage store: the finished stages of one unit of a study (one model, one run), as typed records kept in
one JSON file, so that ``--resume`` skips what is done.

Each stage's result is a frozen dataclass, a :class:`StageRecord`: its ``stage`` name, the top-level ``keys`` of
the file it owns, and ``to_json()`` / ``from_json()``. The file is one JSON object, the records' keys side by
side (the layout studies wrote before the records existed, so their run directories still resume). A record
is done when one of its keys is in the file and it parses; a file that is not valid JSON (a write cut short
by a crash; :meth:`StageStore.save` writes atomically, so only another writer leaves one) is an
:class:`~ls_seq.errors.InputError` on :meth:`StageStore.load`, for the study to set aside, and a record that
is there but lacks a field or holds the wrong type is a :class:`StageRecordError` naming the stage and the file.

Examples:
    >>> import tempfile
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Bleu(StageRecord):
    ...     stage = "bleu"
    ...     keys = ("test_bleu",)
    ...     bleu: float
    ...     def to_json(self):
    ...         return {"test_bleu": self.bleu}
    ...     @classmethod
    ...     def from_json(cls, doc):
    ...         return cls(bleu=float(doc["test_bleu"]))
    >>> path = Path(tempfile.mkdtemp()) / "evaluation.json"
    >>> store = StageStore(path, [Bleu]).load()
    >>> store.get(Bleu) is None  # nothing done yet
    True
    >>> store.put(Bleu(27.5))
    >>> _ = store.save()
    >>> StageStore(path, [Bleu]).load().get(Bleu)
    Bleu(bleu=27.5)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ls_seq.errors import InputError
from ls_seq.io import atomic_write_json, read_json

__all__ = ["StageRecord", "StageRecordError", "StageStore", "json_object", "read_record"]

R = TypeVar("R", bound="StageRecord")


class StageRecordError(InputError):
    """A stage record that is in its file but cannot be read: a field missing or of the wrong type."""


class StageRecord:
    """The result of one stage, as a frozen dataclass (subclasses add ``@dataclass(frozen=True)``).

    ``stage`` names it (in messages and stage boundaries); ``keys`` are the top-level keys of the store's file
    it owns, the optional ones included. ``to_json()`` returns those keys (in the order to write them; an
    optional one may be left out), ``from_json(doc)`` reads them back from the whole document and raises
    ``KeyError``, ``TypeError`` or ``ValueError`` when they are not what it wrote.
    """

    stage: ClassVar[str]
    keys: ClassVar[tuple[str, ...]]

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls: type[R], doc: Mapping[str, Any]) -> R:
        raise NotImplementedError


def json_object(value: Any, name: str) -> dict[str, Any]:
    """``value`` as a dict, for a record's ``from_json``: ``TypeError`` naming ``name`` if it is not an object."""
    if not isinstance(value, Mapping):
        raise TypeError(f"`{name}` must be an object, got {type(value).__name__}")
    return dict(value)


def read_record(record_type: type[R], doc: Mapping[str, Any], source: str) -> R | None:
    """``record_type``'s record in ``doc`` (None when none of its keys is there: the stage is not done).

    ``source`` names where ``doc`` came from in the :class:`StageRecordError` raised when the record is there
    but does not parse.
    """
    if not any(key in doc for key in record_type.keys):
        return None
    try:
        return record_type.from_json(doc)
    except KeyError as exc:
        raise StageRecordError(
            f"{source}: the record of stage {record_type.stage!r} lacks the field {exc.args[0]!r}; it was written by "
            "another version of the study: move the file aside to run the stage again"
        ) from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise StageRecordError(
            f"{source}: the record of stage {record_type.stage!r} cannot be read ({exc}); move the file aside to "
            "run the stage again"
        ) from exc


class StageStore:
    """The records of ``record_types`` in the JSON file ``path``, read with :meth:`load`, changed in memory with
    :meth:`put` and written atomically with :meth:`save`.

    Keys of the file that no record owns are kept as they are.
    """

    def __init__(self, path: str | os.PathLike, record_types: Iterable[type[StageRecord]]):
        self.path = Path(path)
        self.record_types = tuple(record_types)
        owners: dict[str, str] = {}
        for record_type in self.record_types:
            for key in record_type.keys:
                if key in owners:
                    raise ValueError(f"stages {owners[key]!r} and {record_type.stage!r} both own the key {key!r}")
                owners[key] = record_type.stage
        self._doc: dict[str, Any] = {}

    def load(self) -> StageStore:
        """Read ``path`` (absent: no stage done); returns the store.

        Raises :class:`~ls_seq.errors.InputError` naming the file when it is not valid JSON or not an object;
        the store is then empty. The records are parsed by :meth:`get`.
        """
        self._doc = {}
        if self.path.is_file():
            doc = read_json(self.path)
            if not isinstance(doc, dict):
                raise InputError(f"{str(self.path)!r} is not a JSON object of stage records (it holds a {type(doc).__name__})")
            self._doc = doc
        return self

    def get(self, record_type: type[R]) -> R | None:
        """The record of ``record_type``'s stage, or None when it is not done; :class:`StageRecordError` when
        it is there but does not parse."""
        self._check_registered(record_type)
        return read_record(record_type, self._doc, repr(str(self.path)))

    def put(self, record: StageRecord) -> None:
        """Replace the record of ``record``'s stage in memory: its keys keep their place in the file, new keys
        go last, and an optional key the new record leaves out is dropped."""
        self._check_registered(type(record))
        values = record.to_json()
        unknown = set(values) - set(record.keys)
        if unknown:
            raise ValueError(f"stage {record.stage!r} wrote keys it does not own: {sorted(unknown)}")
        for key in record.keys:
            if key not in values:
                self._doc.pop(key, None)
        self._doc.update(values)

    def drop(self, record_type: type[StageRecord]) -> None:
        """Forget ``record_type``'s stage in memory (its keys leave the file at the next :meth:`save`): it is
        no longer done."""
        self._check_registered(record_type)
        for key in record_type.keys:
            self._doc.pop(key, None)

    def save(self) -> Path:
        """Write every record to ``path`` atomically (a reader sees the old file or the new one, never a part)."""
        return atomic_write_json(self.path, self._doc)

    def to_json(self) -> dict[str, Any]:
        """The document :meth:`save` writes."""
        return dict(self._doc)

    def _check_registered(self, record_type: type[StageRecord]) -> None:
        if record_type not in self.record_types:
            names = [r.stage for r in self.record_types]
            raise ValueError(f"stage {record_type.stage!r} is not one of this store's stages {names}")
