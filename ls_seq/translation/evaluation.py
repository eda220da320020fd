"""Evaluating one EN-DE model on the test split, in stages kept in ``evaluation.json`` for ``--resume``:
teacher-forced calibration over the temperature grid, the source check (sources deranged against the
targets), beam-search BLEU at T = 1 and over the grid, and the validation sweep that chooses a temperature."""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import torch

from ls_seq.checkpoints import set_aside
from ls_seq.errors import InputError, LsSeqWarning
from ls_seq.io import atomic_write_json, atomic_write_text, read_json
from ls_seq.study import stage_boundary
from ls_seq.sweeps import beam_search_sweep, corpus_bleu, distinct_share, teacher_forced_sweep
from ls_seq.translation.data import ParallelCorpus, _batches
from ls_seq.translation.presets import Preset

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
) -> dict[str, Any]:
    """Test metrics, source check and temperature sweep of one model; progress kept in ``evaluation.json``.

    Stages run in order and each is saved when done (main process, atomically), so a resumed run skips
    what is there: (1) one teacher-forced pass at all temperatures (and 1.0) gives NLL/ECE/accuracy and the
    T=1 reliability diagram; (2) the same with sources deranged; (3) beam search at T=1 on the test set gives
    BLEU and the distinct-output share; (4) the BLEU sweep, ``preset.temperatures_per_call`` temperatures per ``generate`` call, each point saved
    as soon as its group is done;
    (5) teacher-forced NLL/ECE over the grid on ``validation_dataset``, to choose a temperature without the
    test set. A stage saved for fewer temperatures than ``preset.temperatures`` (a resume that added some) is
    measured again over the whole grid; the BLEU sweep measures only the new points. A damaged
    ``evaluation.json`` is set aside with a warning and the stages run again. After each saved stage comes
    a :func:`~ls_seq.study.stage_boundary` named ``<model>/evaluated:<stage>``.
    """
    from transformers import DataCollatorForSeq2Seq

    from ls_seq.sweeps import shard_indices

    path = model_dir / "evaluation.json"
    ev: dict[str, Any] = {}
    if path.is_file():
        try:
            ev = read_json(path)
        except InputError as exc:
            if state.is_main_process:
                moved = set_aside(path)
                warnings.warn(f"{exc}; set aside as {str(moved)!r}, evaluating again", LsSeqWarning, stacklevel=2)
        state.wait_for_everyone()
    grid = list(preset.temperatures)
    tf_grid = sorted(set(grid) | {1.0})
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    indices = shard_indices(len(test_dataset))
    bs = preset.eval_batch_size

    def save(stage: str):
        # Every process holds the same ev (metrics are synced, translations gathered); one writes it, and
        # the others wait, so files the main process writes (translations) are there for all to read.
        if state.is_main_process:
            atomic_write_json(path, ev)
        on_progress(ev)
        state.wait_for_everyone()
        stage_boundary(f"{model_dir.name}/evaluated:{stage}")

    if ev.get("teacher_forced", {}).get("temperatures") != tf_grid:
        metric = teacher_forced_sweep(model, _batches(test_dataset, indices, collator, bs), tf_grid, n_bins=n_bins)
        values = {k: torch.atleast_1d(v) for k, v in metric.compute().items()}
        rel = {k: v.reshape(len(tf_grid), -1) for k, v in metric.reliability().items()}
        i1 = tf_grid.index(1.0)
        ev["teacher_forced"] = {
            "temperatures": tf_grid,
            **{k: values[k].tolist() for k in ("nll", "ece", "mce", "rms", "accuracy", "mean_confidence")},
            # 95% token-level bootstrap intervals (ls_seq.functional.measures, "bootstrap")
            **{k: values[k].tolist() for k in ("ece_low", "ece_high", "accuracy_low", "accuracy_high") if k in values},
            "n_tokens": int(values["n_tokens"][i1]),
            # (R, T) bootstrap replicates: the same token resamples for every model (ls_seq.study.intervals)
            "replicates": {k: v.T.tolist() for k, v in metric.bootstrap_replicates().items()},
        }
        ev["reliability"] = {k: v[i1].tolist() for k, v in rel.items()}
        save("teacher_forced")

    if "nll_shuffled_sources" not in ev:
        sources = test_dataset["input_ids"]
        perm = _derangement(len(sources), seed) if len(sources) >= 2 else list(range(len(sources)))
        skipped = source_check_skipped(sources, perm)
        if skipped is None:
            shuffled = test_dataset.remove_columns("input_ids").add_column("input_ids", [sources[j] for j in perm])
            metric = teacher_forced_sweep(
                model, _batches(shuffled, indices, collator, bs), [1.0], n_bins=n_bins, desc="shuffled sources"
            )
            ev["nll_shuffled_sources"] = float(metric.compute()["nll"].reshape(-1)[0])
        else:
            ev["nll_shuffled_sources"], ev["source_check_skipped"] = None, skipped
        save("shuffled_sources")

    gen = {
        "num_beams": preset.num_beams, "batch_size": preset.generate_batch_size,
        "max_source_length": preset.max_length, "max_new_tokens": preset.max_length,
    }  # fmt: skip
    if "test_bleu" not in ev:
        hyps = beam_search_sweep(model, tokenizer, test.source, [1.0], **gen)[1.0]
        if state.is_main_process:
            atomic_write_text(model_dir / "test_translations.txt", "\n".join(hyps) + "\n")
        ev["test_bleu"] = corpus_bleu(hyps, test.target)
        ev["share_distinct_outputs"] = distinct_share(hyps)
        save("test_bleu")

    n_bleu = len(test) if preset.max_bleu_samples is None else min(preset.max_bleu_samples, len(test))
    ev.setdefault("sweep_bleu", {})
    ev["sweep_bleu_sentences"] = n_bleu
    todo = [t for t in grid if repr(float(t)) not in ev["sweep_bleu"]]
    if 1.0 in todo:  # beam search at T=1 already translated the test set: score its first n_bleu sentences
        hyps = (model_dir / "test_translations.txt").read_text(encoding="utf-8").split("\n")[:n_bleu]
        ev["sweep_bleu"][repr(1.0)] = corpus_bleu(hyps, test.target[:n_bleu])
        todo.remove(1.0)
        save("sweep_bleu_1.0")
    if todo:
        def record(temperature: float, hyps: list[str]) -> None:
            ev["sweep_bleu"][repr(float(temperature))] = corpus_bleu(hyps, test.target[:n_bleu])
            save(f"sweep_bleu_{float(temperature)!r}")

        beam_search_sweep(
            model, tokenizer, test.source[:n_bleu], todo, on_temperature=record,
            temperatures_per_call=preset.temperatures_per_call, **gen,
        )  # fmt: skip

    if ev.get("validation_teacher_forced", {}).get("temperatures") != grid:
        val_indices = shard_indices(len(validation_dataset))
        metric = teacher_forced_sweep(
            model, _batches(validation_dataset, val_indices, collator, bs), grid, n_bins=n_bins, desc="validation sweep"
        )
        values = {k: torch.atleast_1d(v) for k, v in metric.compute().items()}
        ev["validation_teacher_forced"] = {"temperatures": grid, "nll": values["nll"].tolist(), "ece": values["ece"].tolist()}
        save("validation")
    return ev
