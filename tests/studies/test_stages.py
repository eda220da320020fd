"""The stage store: typed records round-trip through one JSON file, a record is done only when it is there and
parses, a write cut short leaves the previous file, and a record missing a field is refused naming its stage
and the file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import pytest
from _helpers.faults import FailingWrites, truncate

import ls_seq.io
from ls_seq.errors import InputError
from ls_seq.studies.stages import StageRecord, StageRecordError, StageStore, read_record


@dataclass(frozen=True)
class Scores(StageRecord):
    stage = "scores"
    keys = ("temperatures", "nll", "note")  # "note" is optional

    temperatures: tuple[float, ...]
    nll: tuple[float, ...]
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {"temperatures": list(self.temperatures), "nll": list(self.nll)}
        if self.note is not None:
            values["note"] = self.note
        return values

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Scores:
        temperatures, nll = tuple(float(t) for t in doc["temperatures"]), tuple(float(v) for v in doc["nll"])
        if len(nll) != len(temperatures):
            raise ValueError(f"{len(nll)} NLLs for {len(temperatures)} temperatures")
        return cls(temperatures, nll, doc.get("note"))


@dataclass(frozen=True)
class Bleu(StageRecord):
    stage = "bleu"
    keys = ("bleu",)

    bleu: float

    def to_json(self) -> dict[str, Any]:
        return {"bleu": self.bleu}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Bleu:
        return cls(float(doc["bleu"]))


SCORES = Scores((0.8, 1.0), (2.5, 2.25), note="first pass")


def _store(path):
    return StageStore(path, [Scores, Bleu])


def test_records_round_trip_through_the_file_in_the_layout_they_write(tmp_path):
    path = tmp_path / "evaluation.json"
    store = _store(path).load()
    assert store.get(Scores) is None and store.get(Bleu) is None  # no file: nothing done
    store.put(SCORES)
    store.put(Bleu(31.25))
    store.save()
    assert json.loads(path.read_text()) == {"temperatures": [0.8, 1.0], "nll": [2.5, 2.25], "note": "first pass", "bleu": 31.25}
    again = _store(path).load()
    assert again.get(Scores) == SCORES and again.get(Bleu) == Bleu(31.25)
    assert Scores.from_json(SCORES.to_json()) == SCORES
    with pytest.raises(FrozenInstanceError):
        SCORES.nll = (0.0, 0.0)


def test_put_keeps_the_place_of_a_records_keys_drops_its_unwritten_optional_ones_and_keeps_unknown_keys(tmp_path):
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps({"bleu": 20.0, "temperatures": [1.0], "nll": [3.0], "note": "old", "written_by": "v0"}))
    store = _store(path).load()
    store.put(Scores((1.0, 1.5), (3.0, 3.5)))  # no note: the old one goes
    store.put(Bleu(21.0))
    store.save()
    assert list(json.loads(path.read_text()).items()) == [
        ("bleu", 21.0),
        ("temperatures", [1.0, 1.5]),
        ("nll", [3.0, 3.5]),
        ("written_by", "v0"),
    ]
    store.drop(Scores)  # no longer done: its keys leave the file, the others stay
    store.save()
    assert json.loads(path.read_text()) == {"bleu": 21.0, "written_by": "v0"}
    assert _store(path).load().get(Scores) is None


@pytest.mark.parametrize("damage", ["truncated", "not JSON", "not an object"])
def test_a_half_written_or_garbled_file_is_an_input_error_naming_it_and_no_stage_is_taken_as_done(tmp_path, damage):
    path = tmp_path / "evaluation.json"
    store = _store(path)
    store.put(SCORES)
    store.put(Bleu(31.25))
    store.save()
    if damage == "truncated":
        truncate(path)
    elif damage == "not JSON":
        path.write_bytes(b"\xa5" * 40)
    else:
        path.write_text("[1, 2, 3]")
    store = _store(path)
    with pytest.raises(InputError, match=r"evaluation\.json") as info:
        store.load()
    assert not isinstance(info.value, StageRecordError)  # the file is damaged, not a record: set it aside
    assert store.get(Scores) is None and store.get(Bleu) is None and store.to_json() == {}


def test_a_save_cut_short_leaves_the_previous_file_and_its_records(tmp_path, monkeypatch):
    path = tmp_path / "evaluation.json"
    store = _store(path)
    store.put(SCORES)
    store.save()
    before = path.read_bytes()
    failing = FailingWrites(monkeypatch, ls_seq.io, "evaluation.json")
    store.put(Bleu(31.25))
    with pytest.raises(OSError, match="no space left on device writing"):
        store.save()
    assert failing.failures == 1
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    again = _store(path).load()
    assert again.get(Scores) == SCORES and again.get(Bleu) is None  # the stage whose save failed is not done


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"temperatures": [0.8, 1.0], "note": "x"}, r"stage 'scores' lacks the field 'nll'"),
        ({"temperatures": [0.8, 1.0], "nll": [2.5]}, r"stage 'scores' cannot be read \(1 NLLs for 2 temperatures\)"),
        ({"temperatures": [0.8, 1.0], "nll": None}, r"stage 'scores' cannot be read"),
        ({"bleu": "high"}, r"stage 'bleu' cannot be read"),
    ],
)
def test_a_record_that_is_there_but_does_not_parse_is_refused_naming_its_stage_and_the_file(tmp_path, doc, message):
    path = tmp_path / "run" / "evaluation.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    store = _store(path).load()  # the file itself is sound JSON
    record_type = Bleu if "bleu" in doc else Scores
    with pytest.raises(StageRecordError, match=message) as info:
        store.get(record_type)
    assert str(path) in str(info.value) and isinstance(info.value, InputError)


def test_read_record_names_its_source_and_a_store_refuses_stages_it_does_not_hold(tmp_path):
    assert read_record(Bleu, {"nll": [1.0]}, "fairseq's record") is None
    with pytest.raises(StageRecordError, match=r"^fairseq's record: the record of stage 'scores' lacks the field 'nll'"):
        read_record(Scores, {"temperatures": [1.0]}, "fairseq's record")
    store = StageStore(tmp_path / "e.json", [Bleu])
    with pytest.raises(ValueError, match=r"stage 'scores' is not one of this store's stages \['bleu'\]"):
        store.put(SCORES)

    @dataclass(frozen=True)
    class AlsoBleu(Bleu):
        stage = "also_bleu"

    with pytest.raises(ValueError, match=r"stages 'bleu' and 'also_bleu' both own the key 'bleu'"):
        StageStore(tmp_path / "e.json", [Bleu, AlsoBleu])
