"""The EN-DE evaluation's stage records: ``evaluation.json`` in the layout the study has always written
(so older run directories resume), each record round-tripping, and a damaged record refused by name."""

from __future__ import annotations

import json
import shutil

import pytest

from ls_seq.io import json_bytes, read_json
from ls_seq.studies.en_de.records import (
    EVALUATION_RECORDS,
    Evaluation,
    ShuffledSources,
    SweepBleu,
    evaluation_store,
)
from ls_seq.studies.en_de.summary import summarize_model
from ls_seq.studies.stages import StageRecordError

# evaluation.json as the study wrote it before the records (the keys and their order are the format).
LEGACY = {
    "teacher_forced": {
        "temperatures": [0.8, 1.0, 1.5],
        "nll": [2.1, 2.0, 2.2],
        "ece": [0.08, 0.05, 0.03],
        "mce": [0.2, 0.2, 0.2],
        "rms": [0.1, 0.1, 0.1],
        "accuracy": [0.5, 0.5, 0.5],
        "mean_confidence": [0.55, 0.5, 0.45],
        "ece_low": [0.07, 0.04, 0.02],
        "ece_high": [0.09, 0.06, 0.04],
        "accuracy_low": [0.4, 0.4, 0.4],
        "accuracy_high": [0.6, 0.6, 0.6],
        "n_tokens": 100,
        "replicates": {"ece": [[0.07, 0.08], [0.05, 0.06], [0.03, 0.02]]},
    },
    "reliability": {"count": [60.0, 40.0], "accuracy": [0.4, 0.65]},
    "nll_shuffled_sources": 5.0,
    "test_bleu": 20.0,
    "share_distinct_outputs": 0.9,
    "sweep_bleu": {"1.0": 21.0, "0.8": 20.0},  # in the order measured: T = 1 first
    "sweep_bleu_sentences": 24,
    "validation_teacher_forced": {"temperatures": [0.8, 1.0, 1.5], "nll": [2.0, 2.1, 2.2], "ece": [0.01, 0.02, 0.03]},
}


def _rewritten(store):
    """The file a store holding only ``store``'s records would write."""
    fresh = evaluation_store("unused")
    for record_type in EVALUATION_RECORDS:
        record = store.get(record_type)
        if record is not None:
            fresh.put(record)
    return json_bytes(fresh.to_json())


def test_the_legacy_layout_reads_into_records_and_writes_back_byte_for_byte(tmp_path):
    path = tmp_path / "evaluation.json"
    path.write_bytes(json_bytes(LEGACY))
    store = evaluation_store(path).load()
    assert _rewritten(store) == path.read_bytes()
    evaluation = Evaluation.from_store(store)
    tf = evaluation.teacher_forced
    assert tf.nll[tf.at(1.0)] == 2.0 and tf.intervals["ece_high"] == (0.09, 0.06, 0.04) and tf.n_tokens == 100
    assert evaluation.shuffled_sources == ShuffledSources(nll=5.0)
    assert evaluation.sweep_bleu == SweepBleu(sentences=24, points=((1.0, 21.0), (0.8, 20.0)))
    assert evaluation.sweep_bleu.bleu(1.5) is None  # not measured yet
    assert evaluation.validation.ece == (0.01, 0.02, 0.03)
    for record_type in EVALUATION_RECORDS:
        record = store.get(record_type)
        assert record_type.from_json(record.to_json()) == record
    # summarize_model reads the records and the content of a file alike (the fairseq study passes the latter)
    assert summarize_model(0.0, evaluation, None, [0.8, 1.0, 1.5]) == summarize_model(0.0, LEGACY, None, [0.8, 1.0, 1.5])


def test_a_skipped_source_check_and_a_sweep_point_added_keep_their_keys_and_order():
    skipped = ShuffledSources(nll=None, skipped="the test split has 3 sentence(s)")
    assert skipped.to_json() == {"nll_shuffled_sources": None, "source_check_skipped": "the test split has 3 sentence(s)"}
    assert ShuffledSources.from_json(skipped.to_json()) == skipped
    sweep = SweepBleu(sentences=24).with_point(1.0, 21.0).with_point(0.8, 20.0).with_point(1.0, 22.0)
    assert list(sweep.to_json()["sweep_bleu"].items()) == [("1.0", 22.0), ("0.8", 20.0)]  # replaced in place


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda doc: doc["teacher_forced"].pop("ece"), r"stage 'teacher_forced' lacks the field 'ece'"),
        (lambda doc: doc.pop("reliability"), r"stage 'teacher_forced' lacks the field 'reliability'"),
        (lambda doc: doc["teacher_forced"]["nll"].pop(), r"`teacher_forced.nll` holds 2 values for 3 temperatures"),
        (lambda doc: doc.pop("sweep_bleu_sentences"), r"stage 'sweep_bleu' lacks the field 'sweep_bleu_sentences'"),
        (lambda doc: doc.update(test_bleu="n/a"), r"stage 'test_bleu' cannot be read"),
    ],
)
def test_a_record_missing_a_field_is_refused_naming_the_stage_and_the_file(tmp_path, change, message):
    doc = json.loads(json.dumps(LEGACY))
    change(doc)
    path = tmp_path / "alpha_0.1" / "evaluation.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    with pytest.raises(StageRecordError, match=message) as info:
        Evaluation.from_store(evaluation_store(path).load())
    assert repr(str(path)) in str(info.value)


@pytest.mark.slow
def test_the_reference_runs_evaluation_files_are_records_that_rebuild_its_results(reference_run):
    """Every stage of each model's evaluation.json parses, rewriting the records gives the same bytes, and
    the records alone rebuild the model's entry of results.json."""
    out, results = reference_run["out"], read_json(reference_run["out"] / "results.json")
    grid = results["config"]["preset"]["temperatures"]
    for entry in results["models"]:
        model_dir = out / f"alpha_{entry['alpha']}"
        store = evaluation_store(model_dir / "evaluation.json").load()
        evaluation = Evaluation.from_store(store)
        assert all(getattr(evaluation, name) is not None for name in evaluation.__dataclass_fields__)
        assert _rewritten(store) == (model_dir / "evaluation.json").read_bytes()
        assert list(evaluation.teacher_forced.temperatures) == sorted(set(grid) | {1.0})
        assert len(evaluation.teacher_forced.replicates["ece"]) == len(evaluation.teacher_forced.temperatures)
        assert summarize_model(entry["alpha"], evaluation, read_json(model_dir / "train_summary.json"), grid) == entry


@pytest.mark.slow
def test_a_resume_over_a_record_missing_a_field_stops_in_one_line_naming_it(reference_run, tmp_path, capsys):
    """Not a crash (the file is whole JSON) but a record another version wrote: refused, not guessed at."""
    from _helpers.ende_runs import error_lines, one_thread, recipe, slice_args

    from ls_seq.cli.runner import run_main

    out = tmp_path / "run"
    shutil.copytree(reference_run["out"], out)
    path = out / "alpha_0.1" / "evaluation.json"
    doc = read_json(path)
    del doc["teacher_forced"]["mce"]
    path.write_text(json.dumps(doc))
    capsys.readouterr()
    with one_thread():
        code = run_main(recipe().main, slice_args(reference_run["data"], out, "--resume"), prog="wmt_en_de.py")
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1, lines
    assert "alpha_0.1/evaluation.json" in lines[0] and "stage 'teacher_forced' lacks the field 'mce'" in lines[0]
    assert read_json(path) == doc  # left as it was, for the user to look at
