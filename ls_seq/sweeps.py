"""Temperature sweeps of a seq2seq model: teacher-forced NLL/ECE and beam-search BLEU, each in one pass.

* :func:`teacher_forced_sweep` runs the model once per batch and feeds the logits to
  ``TokenCalibration(temperatures=[...])``, which measures every temperature on the same logits: K
  temperatures cost one forward pass, not K.
* :func:`beam_search_sweep` runs the encoder once per batch, keeps its outputs, and decodes them with beam
  search at every temperature (:class:`ls_seq.generation.BeamSearchTemperature`): K temperatures cost one
  encoder pass and K decoder searches.

Both are distributed-correct without padding tricks: each process takes the samples ``rank, rank + W, ...``
(:func:`shard_indices`), so every sample is counted exactly once, whatever ``len % W``. The calibration state
is summed across processes by ``TokenCalibration``; translations are gathered as padded id tensors
(``all_gather``, no pickling) and put back in the original order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from ls_seq._validation import check_positive_int, check_temperatures
from ls_seq.generation import BeamSearchTemperature
from ls_seq.metrics import TokenCalibration
from ls_seq.trainer import teacher_forced_logits

__all__ = [
    "beam_search_sweep",
    "best_temperature",
    "corpus_bleu",
    "dist_info",
    "distinct_share",
    "shard_indices",
    "teacher_forced_sweep",
]


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_indices(n: int, rank: int | None = None, world_size: int | None = None) -> list[int]:
    """The samples of process ``rank``: ``rank, rank + W, rank + 2W, ... < n``.

    The shards are disjoint and cover ``range(n)``, so no sample is duplicated to even them out (which is
    what a padded ``DistributedSampler`` would do, counting the duplicates in every sum).
    """
    if rank is None or world_size is None:
        rank, world_size = dist_info()
    return list(range(rank, n, world_size))


@torch.no_grad()
def teacher_forced_sweep(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    temperatures: Sequence[float],
    *,
    n_bins: int = 15,
    ignore_index: int = -100,
    progress: bool = True,
    desc: str = "teacher-forced sweep",
) -> TokenCalibration:
    """Token NLL/ECE/accuracy of a seq2seq model at every temperature, from one forward pass per batch.

    Args:
        model: an encoder-decoder taking ``input_ids, attention_mask, decoder_input_ids``.
        batches: this process's batches (see :func:`shard_indices`), each with ``labels`` (``ignore_index``
            at padding) and ``decoder_input_ids`` (``DataCollatorForSeq2Seq(tokenizer, model=model)``).
        temperatures: ``T > 0``; token ``t`` is scored with ``softmax(z_t / T)``.
        n_bins, ignore_index: of :class:`ls_seq.metrics.TokenCalibration`.

    Returns:
        The updated ``TokenCalibration``: ``compute()`` gives ``nll``, ``ece``, ``accuracy``, ... of shape
        ``(len(temperatures),)``, ``reliability()`` the per-bin curves; both sum over all processes.
    """
    temperatures = check_temperatures(temperatures)
    device = next(model.parameters()).device
    metric = TokenCalibration(n_bins=n_bins, ignore_index=ignore_index, temperatures=temperatures).to(device)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            logits, labels = teacher_forced_logits(model, batch)  # (B, L, V), (B, L)
            metric.update(logits, labels)
    finally:
        model.train(was_training)
    return metric


def _gather_in_order(sequences: list[list[int]], indices: list[int], n_total: int, device: torch.device) -> list[list[int]]:
    """All processes' ``(index, token ids)`` pairs, as one list ordered by index (every process gets it)."""
    _, world = dist_info()
    if world == 1:
        ordered: list[list[int] | None] = [None] * n_total
        for i, seq in zip(indices, sequences):
            ordered[i] = seq
        return ordered  # type: ignore[return-value]
    # Equal shapes for all_gather: rows = the largest shard, columns = index + the longest sequence; -1 pads
    # (any id, pad included, can be a real token).
    size = torch.tensor([len(indices), max((len(s) for s in sequences), default=0)], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    torch.distributed.all_gather(sizes, size)
    rows, cols = int(max(s[0] for s in sizes)), int(max(s[1] for s in sizes)) + 1
    local = torch.full((rows, cols), -1, dtype=torch.long, device=device)
    for r, (i, seq) in enumerate(zip(indices, sequences)):
        local[r, 0] = i
        local[r, 1 : 1 + len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
    gathered = [torch.empty_like(local) for _ in range(world)]
    torch.distributed.all_gather(gathered, local)
    ordered = [None] * n_total
    for block in gathered:
        for row in block.tolist():
            if row[0] >= 0:
                ordered[row[0]] = [t for t in row[1:] if t >= 0]
    assert all(s is not None for s in ordered), "every sample must be decoded by exactly one process"
    return ordered  # type: ignore[return-value]


@torch.no_grad()
def beam_search_sweep(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    temperatures: Sequence[float],
    *,
    num_beams: int = 4,
    batch_size: int = 64,
    max_source_length: int = 128,
    max_new_tokens: int = 128,
    on_temperature: Callable[[float, list[str]], None] | None = None,
    progress: bool = True,
) -> dict[float, list[str]]:
    """Translate ``sources`` with beam search at every temperature, running the encoder once per batch.

    The encoder outputs of all batches are kept (``len(sources) x length x d_model`` floats: 1000 Multi30k
    sentences at d_model 512 are ~40 MB) and handed to ``generate(encoder_outputs=...)`` for each
    temperature, with ``BeamSearchTemperature(T)`` rescoring every step as ``log_softmax(z / T)``.

    Args:
        model: a HF encoder-decoder with ``get_encoder`` and ``generate``.
        tokenizer: encodes ``sources`` and decodes the outputs (``skip_special_tokens=True``).
        sources: all sentences; this process translates its shard (:func:`shard_indices`).
        temperatures: done in the given order.
        on_temperature: called as ``on_temperature(T, translations)`` on every process as soon as ``T`` is
            done (to write results as they come); translations are in the order of ``sources``.

    Returns:
        ``{T: translations}`` with ``len(translations) == len(sources)`` on every process.
    """
    temperatures = check_temperatures(temperatures)
    check_positive_int(num_beams, "num_beams")
    check_positive_int(batch_size, "batch_size")
    device = next(model.parameters()).device
    indices = shard_indices(len(sources))
    was_training = model.training
    model.eval()
    try:
        encoder = model.get_encoder()
        encoded = []
        for start in tqdm(range(0, len(indices), batch_size), desc="encode", disable=not progress, leave=False):
            chunk = indices[start : start + batch_size]
            enc = tokenizer(
                [sources[i] for i in chunk], padding=True, truncation=True, max_length=max_source_length, return_tensors="pt"
            ).to(device)
            hidden = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state  # (B, S, d)
            encoded.append((hidden, enc["attention_mask"]))
        results: dict[float, list[str]] = {}
        for temperature in temperatures:
            sequences: list[list[int]] = []
            for hidden, mask in tqdm(encoded, desc=f"beam search T={temperature:g}", disable=not progress, leave=False):
                # A fresh output object per call: generate expands encoder_outputs for the beams in place.
                out = model.generate(
                    encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                    attention_mask=mask,
                    num_beams=num_beams,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    logits_processor=LogitsProcessorList([BeamSearchTemperature(temperature)]),
                )
                sequences.extend(out.tolist())
            ordered = _gather_in_order(sequences, indices, len(sources), device)
            results[temperature] = tokenizer.batch_decode(ordered, skip_special_tokens=True)
            if on_temperature is not None:
                on_temperature(temperature, results[temperature])
    finally:
        model.train(was_training)
    return results


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """SacreBLEU (13a tokenization, as reported in papers) of detokenized ``hypotheses`` against ``references``."""
    import sacrebleu  # `evaluate.load("sacrebleu")` needs the hub; the library itself does not

    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} hypotheses for {len(references)} references")
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def distinct_share(outputs: Sequence[str]) -> float:
    """``#distinct outputs / #outputs``: near 1 for a translator, ``1/n`` for a model that ignores its input."""
    if not outputs:
        raise ValueError("`outputs` is empty")
    return len(set(outputs)) / len(outputs)


def best_temperature(points: Sequence[dict[str, float]], key: str) -> float:
    """The temperature of the sweep point with the lowest ``key`` (e.g. ``"nll"``, ``"ece"``); ties: the first."""
    if not points:
        raise ValueError("`points` is empty")
    return float(min(points, key=lambda p: p[key])["temperature"])
