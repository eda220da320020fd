"""Evaluating one EN-DE model on the test split, in stages kept in ``evaluation.json`` for ``--resume``:
teacher-forced calibration over the temperature grid, the source check (sources deranged against the
targets), beam-search BLEU at T = 1 and over the grid, and the validation sweep that chooses a temperature."""

from __future__ import annotations

import dataclasses
import random
import warnings
from pathlib import Path
from typing import Any

import torch

from ls_seq.checkpoints import set_aside
from ls_seq.errors import InputError, LsSeqWarning
from ls_seq.hf.sweeps import beam_search_sweep, corpus_bleu, distinct_share, teacher_forced_sweep
from ls_seq.io import atomic_write_text
from ls_seq.studies import stage_boundary
from ls_seq.studies.en_de.data import ParallelCorpus, _batches
from ls_seq.studies.en_de.presets import Preset
from ls_seq.studies.en_de.records import (
    Evaluation,
    ShuffledSources,
    SweepBleu,
    TeacherForced,
    TestBleu,
    ValidationSweep,
    evaluation_store,
)
from ls_seq.studies.stages import StageRecord

__all__ = [
    "SOURCE_CHECK_MIN_SENTENCES",
    "SOURCE_DISTINCT_MIN",
    "SOURCE_NLL_GAP_MIN",
    "check_source_use",
    "evaluate_model",
    "source_check_skipped",
]

# A model "uses its source" when shuffling the sources raises its token NLL by at least this much (nats) and
# at least this share of its test translations differ. The collapsed reference run had a gap of 0.00 and
# 1/1000 distinct outputs; the healthy one a gap of 2.57 and nearly all distinct.
SOURCE_NLL_GAP_MIN = 0.25
SOURCE_DISTINCT_MIN = 0.5
# Below this many test sentences the shuffled-source NLL says nothing (one sentence cannot be shuffled).
SOURCE_CHECK_MIN_SENTENCES = 10


def _derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation without fixed points: ``perm[i] != i`` for every i (n >= 2)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = [0] * n
    for k in range(n):  # each element of the shuffled cycle takes the next one's place
        perm[order[k]] = order[(k + 1) % n]
    return perm


def check_source_use(nll: float, nll_shuffled: float, share_distinct: float) -> dict[str, Any]:
    """Does a model translate or ignore its input? Gap and distinct-output thresholds at the top of this module."""
    gap = nll_shuffled - nll
    return {
        "nll": nll,
        "nll_shuffled_sources": nll_shuffled,
        "nll_gap": gap,
        "share_distinct_outputs": share_distinct,
        "uses_source": bool(gap >= SOURCE_NLL_GAP_MIN and share_distinct >= SOURCE_DISTINCT_MIN),
    }


def source_check_skipped(sources: list[list[int]], perm: list[int]) -> str | None:
    """Why the source check cannot be trusted on this test split (None when it can).

    Shuffling the sources must change most of them: with fewer than ``SOURCE_CHECK_MIN_SENTENCES``
    sentences, or when repeated sources leave more than a tenth of them in place, the NLL gap would
    measure the split, not the model (one sentence: the "shuffled" source is the original, gap 0).
    """
    n = len(sources)
    moved = sum(sources[j] != sources[i] for i, j in enumerate(perm))
    if n < SOURCE_CHECK_MIN_SENTENCES:
        return f"the test split has {n} sentence(s); the source check needs at least {SOURCE_CHECK_MIN_SENTENCES}"
    if moved < 0.9 * n:
        return f"shuffling changed only {moved} of the {n} test sources (repeated sentences); it needs 90%"
    return None


def evaluate_model(
    model,
    tokenizer,
    test: ParallelCorpus,
    test_dataset,
    preset: Preset,
    model_dir: Path,
    *,
    n_bins: int,
    seed: int,
    state: Any,
    on_progress,
    validation_dataset,
) -> Evaluation:
    """Test metrics, source check and temperature sweep of one model; progress kept in ``evaluation.json``,
    one typed record per stage (:mod:`ls_seq.studies.en_de.records`); returns the records.

    Stages run in order and each is saved when done (main process, atomically), so a resumed run skips
    what is there: (1) one teacher-forced pass at all temperatures (and 1.0) gives NLL/ECE/accuracy and the
    T=1 reliability diagram; (2) the same with sources deranged; (3) beam search at T=1 on the test set gives
    BLEU and the distinct-output share; (4) the BLEU sweep, ``preset.temperatures_per_call`` temperatures per ``generate`` call, each point saved
    as soon as its group is done;
    (5) teacher-forced NLL/ECE over the grid on ``validation_dataset``, to choose a temperature without the
    test set. A stage saved for fewer temperatures than ``preset.temperatures`` (a resume that added some) is
    measured again over the whole grid; the BLEU sweep measures only the new points. A damaged
    ``evaluation.json`` (not JSON) is set aside with a warning and the stages run again; a record in it that
    lacks a field or holds the wrong type stops the run with a :class:`~ls_seq.studies.stages.StageRecordError`
    naming its stage and the file. After each saved stage comes a :func:`~ls_seq.studies.stage_boundary` named
    ``<model>/evaluated:<stage>``.
    """
    from transformers import DataCollatorForSeq2Seq

    from ls_seq.hf.sweeps import shard_indices

    store = evaluation_store(model_dir / "evaluation.json")
    if store.path.is_file():
        try:
            store.load()
        except InputError as exc:
            if state.is_main_process:
                moved = set_aside(store.path)
                warnings.warn(f"{exc}; set aside as {str(moved)!r}, evaluating again", LsSeqWarning, stacklevel=2)
        state.wait_for_everyone()
    done = Evaluation.from_store(store)  # a record there but unreadable stops here, naming its stage and the file
    grid = list(preset.temperatures)
    tf_grid = sorted(set(grid) | {1.0})
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    indices = shard_indices(len(test_dataset))
    bs = preset.eval_batch_size

    def save(record: StageRecord, stage: str) -> None:
        # Every process holds the same records (metrics are synced, translations gathered); one writes them,
        # and the others wait, so files the main process writes (translations) are there for all to read.
        store.put(record)
        if state.is_main_process:
            store.save()
        on_progress(Evaluation.from_store(store))
        state.wait_for_everyone()
        stage_boundary(f"{model_dir.name}/evaluated:{stage}")

    if done.teacher_forced is None or list(done.teacher_forced.temperatures) != tf_grid:
        metric = teacher_forced_sweep(model, _batches(test_dataset, indices, collator, bs), tf_grid, n_bins=n_bins)
        values = {k: torch.atleast_1d(v) for k, v in metric.compute().items()}
        rel = {k: v.reshape(len(tf_grid), -1) for k, v in metric.reliability().items()}
        at_1 = tf_grid.index(1.0)
        record = TeacherForced(
            temperatures=tuple(tf_grid),
            **{k: tuple(values[k].tolist()) for k in ("nll", "ece", "mce", "rms", "accuracy", "mean_confidence")},
            n_tokens=int(values["n_tokens"][at_1]),
            reliability={k: v[at_1].tolist() for k, v in rel.items()},
            # 95% token-level bootstrap intervals (ls_seq.calibration.measures, "bootstrap")
            intervals={
                k: tuple(values[k].tolist()) for k in ("ece_low", "ece_high", "accuracy_low", "accuracy_high") if k in values
            },
            # (R, T) bootstrap replicates: the same token resamples for every model (ls_seq.studies.intervals)
            replicates={k: v.T.tolist() for k, v in metric.bootstrap_replicates().items()},
        )
        save(record, "teacher_forced")

    if done.shuffled_sources is None:
        sources = test_dataset["input_ids"]
        perm = _derangement(len(sources), seed) if len(sources) >= 2 else list(range(len(sources)))
        skipped = source_check_skipped(sources, perm)
        if skipped is None:
            shuffled = test_dataset.remove_columns("input_ids").add_column("input_ids", [sources[j] for j in perm])
            metric = teacher_forced_sweep(
                model, _batches(shuffled, indices, collator, bs), [1.0], n_bins=n_bins, desc="shuffled sources"
            )
            save(ShuffledSources(nll=float(metric.compute()["nll"].reshape(-1)[0])), "shuffled_sources")
        else:
            save(ShuffledSources(nll=None, skipped=skipped), "shuffled_sources")

    gen: dict[str, Any] = {
        "num_beams": preset.num_beams,
        "batch_size": preset.generate_batch_size,
        "max_source_length": preset.max_length,
        "max_new_tokens": preset.max_length,
    }
    if done.test_bleu is None:
        hyps = beam_search_sweep(model, tokenizer, test.source, [1.0], **gen)[1.0]
        if state.is_main_process:
            atomic_write_text(model_dir / "test_translations.txt", "\n".join(hyps) + "\n")
        save(TestBleu(bleu=corpus_bleu(hyps, test.target), share_distinct_outputs=distinct_share(hyps)), "test_bleu")

    n_bleu = len(test) if preset.max_bleu_samples is None else min(preset.max_bleu_samples, len(test))
    sweep = SweepBleu(sentences=n_bleu) if done.sweep_bleu is None else dataclasses.replace(done.sweep_bleu, sentences=n_bleu)
    store.put(sweep)  # saved with the first point measured (or the next stage)
    todo = [t for t in grid if sweep.bleu(t) is None]
    if 1.0 in todo:  # beam search at T=1 already translated the test set: score its first n_bleu sentences
        hyps = (model_dir / "test_translations.txt").read_text(encoding="utf-8").split("\n")[:n_bleu]
        sweep = sweep.with_point(1.0, corpus_bleu(hyps, test.target[:n_bleu]))
        todo.remove(1.0)
        save(sweep, "sweep_bleu_1.0")
    if todo:

        def record_point(temperature: float, hyps: list[str]) -> None:
            nonlocal sweep
            sweep = sweep.with_point(temperature, corpus_bleu(hyps, test.target[:n_bleu]))
            save(sweep, f"sweep_bleu_{float(temperature)!r}")

        beam_search_sweep(
            model,
            tokenizer,
            test.source[:n_bleu],
            todo,
            on_temperature=record_point,
            temperatures_per_call=preset.temperatures_per_call,
            **gen,
        )

    if done.validation is None or list(done.validation.temperatures) != grid:
        val_indices = shard_indices(len(validation_dataset))
        metric = teacher_forced_sweep(
            model, _batches(validation_dataset, val_indices, collator, bs), grid, n_bins=n_bins, desc="validation sweep"
        )
        values = {k: torch.atleast_1d(v) for k, v in metric.compute().items()}
        save(ValidationSweep(tuple(grid), tuple(values["nll"].tolist()), tuple(values["ece"].tolist())), "validation")
    return Evaluation.from_store(store)
