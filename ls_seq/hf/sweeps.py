"""Temperature sweeps of a seq2seq model: teacher-forced NLL/ECE and beam-search BLEU, each in one pass.

* :func:`teacher_forced_sweep` runs the model once per batch and feeds the logits to
  ``TokenCalibration(temperatures=[...])``, which measures every temperature on the same logits: K
  temperatures cost one forward pass, not K.
* :func:`beam_search_sweep` runs the encoder once per batch, keeps its outputs, and decodes them with beam
  search at every temperature (:class:`ls_seq.hf.generation.BeamSearchTemperature`): K temperatures cost one
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
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from ls_seq._extras import require
from ls_seq.calibration.metric import TokenCalibration
from ls_seq.checks import check_positive_int, check_temperatures
from ls_seq.hf.distributed import dist_info
from ls_seq.hf.generation import BeamSearchTemperature
from ls_seq.hf.model_io import teacher_forced_logits

__all__ = [
    "beam_search_sweep",
    "best_temperature",
    "corpus_bleu",
    "dist_info",
    "distinct_share",
    "shard_indices",
    "teacher_forced_sweep",
]


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
    measures: Sequence[str] | None = None,
) -> TokenCalibration:
    """Token NLL/ECE/accuracy of a seq2seq model at every temperature, from one forward pass per batch.

    Args:
        model: an encoder-decoder taking ``input_ids, attention_mask, decoder_input_ids``.
        batches: this process's batches (see :func:`shard_indices`), each with ``labels`` (``ignore_index``
            at padding) and ``decoder_input_ids`` (``DataCollatorForSeq2Seq(tokenizer, model=model)``).
        temperatures: ``T > 0``; token ``t`` is scored with ``softmax(z_t / T)``.
        n_bins: confidence bins, as for :class:`ls_seq.calibration.metric.TokenCalibration`.
        ignore_index: label value of padding, as there.
        progress: show a tqdm bar over the batches.
        desc: the bar's label.
        measures: as for :class:`ls_seq.calibration.metric.TokenCalibration` (default: its default measures).

    Returns:
        The updated ``TokenCalibration``: ``compute()`` gives ``nll``, ``ece``, ``accuracy``, ... of shape
        ``(len(temperatures),)``, ``reliability()`` the per-bin curves; both sum over all processes.
    """
    temperatures = check_temperatures(temperatures)
    device = next(model.parameters()).device
    metric = TokenCalibration(n_bins=n_bins, ignore_index=ignore_index, temperatures=temperatures, measures=measures).to(device)
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
        return ordered  # type: ignore[return-value]  # one process: it decoded every index
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
    return ordered  # type: ignore[return-value]  # no None left (asserted)


class _BlockTemperatures(LogitsProcessor):
    """``log_softmax(scores / T_g)`` for ``G`` blocks of ``rows_per_block`` rows, block ``g`` at ``temperatures[g]``.

    The rows of one ``generate`` call that holds the same batch ``G`` times (``hidden.repeat(G, 1, 1)``): generate
    expands each of those ``G * B`` inputs into ``num_beams`` consecutive rows, so block ``g`` is rows
    ``g * B * num_beams ... (g + 1) * B * num_beams - 1``. Per row it computes exactly what
    :class:`~ls_seq.hf.generation.BeamSearchTemperature` computes (a division by ``T`` in float32 at least).
    """

    def __init__(self, temperatures: Sequence[float], rows_per_block: int, device: torch.device) -> None:
        self.temperatures = torch.tensor(list(temperatures), dtype=torch.float32, device=device)
        self.t_rows = self.temperatures.repeat_interleave(rows_per_block)[:, None]  # (G * rows_per_block, 1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != self.t_rows.shape[0]:
            raise RuntimeError(f"expected {self.t_rows.shape[0]} rows of scores (blocks x batch x beams), got {scores.shape[0]}")
        dtype = torch.promote_types(scores.dtype, torch.float32)
        return torch.log_softmax(scores.to(dtype) / self.t_rows.to(dtype), dim=-1).to(scores.dtype)


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
    sort_by_length: bool = True,
    temperatures_per_call: int = 1,
    on_temperature: Callable[[float, list[str]], None] | None = None,
    progress: bool = True,
) -> dict[float, list[str]]:
    """Translate ``sources`` with beam search at every temperature, running the encoder once per batch.

    The encoder outputs of all batches are kept (``len(sources) x length x d_model`` floats: 1000 Multi30k
    sentences at d_model 512 are ~40 MB) and handed to ``generate(encoder_outputs=...)`` for each
    temperature, with ``BeamSearchTemperature(T)`` rescoring every step as ``log_softmax(z / T)``.

    Two things make the sweep cheaper than one ``generate`` per temperature beyond the encoder reuse
    (``benchmarks/bench_sweep.py`` measures each):

    * ``sort_by_length``: batches are formed from sources of similar token length, longest first. Beam search
      decodes a batch until its slowest sentence is done, so a batch mixing a 5- and a 40-token sentence pays
      40 steps for both; fairseq's generation does the same. Outputs come back in the order of ``sources``.
    * ``temperatures_per_call``: ``G`` temperatures share one ``generate`` call: ``batch_size // G`` sentences,
      repeated ``G`` times, each copy scored at its own temperature (``batch_size`` stays the number of
      sequences per call). Each copy is decoded independently, so the translations are those of separate
      calls; what is shared is ``generate``'s per-step overhead, and the copies of one sentence finish at
      similar lengths. On the 2-core CPU with the tiny preset, 8 sentences x 4 temperatures per call were
      1.7x faster than the best batch size of separate calls (benchmarks/README.md); on a GPU, where large
      batches are cheap, keep ``G = 1`` and a large ``batch_size``.

    Args:
        model: a HF encoder-decoder with ``get_encoder`` and ``generate``.
        tokenizer: encodes ``sources`` and decodes the outputs (``skip_special_tokens=True``).
        sources: all sentences; this process translates its shard (:func:`shard_indices`).
        temperatures: done in the given order (in groups of ``temperatures_per_call``).
        batch_size: sequences per ``generate`` call: ``batch_size // temperatures_per_call`` sentences (at
            least one), each at ``temperatures_per_call`` temperatures; also the encoder's batch of sentences.
        sort_by_length: batch sources of similar length together (the results are the same up to floating
            point: batch composition changes the padding and so the last bits of the encoder's sums).
        temperatures_per_call: temperatures decoded in one ``generate`` call (1: one call per temperature).
        on_temperature: called as ``on_temperature(T, translations)`` on every process as soon as ``T`` is
            done (to write results as they come); translations are in the order of ``sources``.

    Returns:
        ``{T: translations}`` with ``len(translations) == len(sources)`` on every process.
    """
    temperatures = check_temperatures(temperatures)
    check_positive_int(num_beams, "num_beams")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(temperatures_per_call, "temperatures_per_call")
    if not isinstance(sort_by_length, bool):
        raise TypeError(f"`sort_by_length` must be a bool, got {type(sort_by_length).__name__} ({sort_by_length!r})")
    device = next(model.parameters()).device
    sentences_per_call = max(1, batch_size // temperatures_per_call)
    indices = shard_indices(len(sources))
    if sort_by_length and indices:
        lengths = tokenizer([sources[i] for i in indices], truncation=True, max_length=max_source_length)["input_ids"]
        # Longest first: the largest batch runs first, so an out-of-memory shows at once. Stable on ties.
        indices = [i for _, i in sorted(zip((-len(x) for x in lengths), indices), key=lambda p: p[0])]
    was_training = model.training
    model.eval()
    try:
        encoder = model.get_encoder()
        encoded = []
        for start in tqdm(range(0, len(indices), sentences_per_call), desc="encode", disable=not progress, leave=False):
            chunk = indices[start : start + sentences_per_call]
            enc = tokenizer(
                [sources[i] for i in chunk], padding=True, truncation=True, max_length=max_source_length, return_tensors="pt"
            ).to(device)
            hidden = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state  # (B, S, d)
            encoded.append((hidden, enc["attention_mask"]))
        results: dict[float, list[str]] = {}
        groups = [temperatures[g : g + temperatures_per_call] for g in range(0, len(temperatures), temperatures_per_call)]
        for group in groups:
            sequences: dict[float, list[list[int]]] = {t: [] for t in group}
            label = ", ".join(f"{t:g}" for t in group)
            for hidden, mask in tqdm(encoded, desc=f"beam search T={label}", disable=not progress, leave=False):
                n, k = hidden.shape[0], len(group)
                if k == 1:
                    processor: LogitsProcessor = BeamSearchTemperature(group[0])
                else:  # (k * B, S, d): copy g of the batch is decoded at temperature group[g]
                    hidden, mask = hidden.repeat(k, 1, 1), mask.repeat(k, 1)
                    processor = _BlockTemperatures(group, n * num_beams, device)
                # A fresh output object per call: generate expands encoder_outputs for the beams in place.
                out = model.generate(
                    encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                    attention_mask=mask,
                    num_beams=num_beams,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    logits_processor=LogitsProcessorList([processor]),
                )  # (k * B, L)
                for g, t in enumerate(group):
                    sequences[t].extend(out[g * n : (g + 1) * n].tolist())
            for t in group:
                ordered = _gather_in_order(sequences[t], indices, len(sources), device)
                results[t] = tokenizer.batch_decode(ordered, skip_special_tokens=True)
                if on_temperature is not None:
                    on_temperature(t, results[t])
    finally:
        model.train(was_training)
    return results


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """SacreBLEU (13a tokenization, as reported in papers) of detokenized ``hypotheses`` against ``references``."""
    # the library itself: `evaluate.load("sacrebleu")` would need the hub
    sacrebleu = require("sacrebleu", extra="bleu", feature="BLEU")

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
