"""The unigram smoothing prior: label frequencies of a training set (Pereyra et al. 2017), or a saved vector."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ls_seq.checks import check_nonnegative, check_positive_int

__all__ = ["estimate_unigram_prior", "load_prior_file"]


def _label_sequences(data: Any, label_key: str) -> Iterable[Any]:
    """Yield label sequences from a ``datasets.Dataset``, an iterable of dicts, or an iterable of sequences."""
    column_names = getattr(data, "column_names", None)
    if isinstance(column_names, list) and hasattr(data, "iter"):
        if label_key not in column_names:
            raise ValueError(f"the dataset has no `{label_key}` column to estimate a unigram prior from; columns: {column_names}")
        for batch in data.iter(batch_size=1024):  # column access in batches: no per-row Python dicts
            yield from batch[label_key]
        return
    for item in data:
        if isinstance(item, Mapping):
            if label_key not in item:
                raise ValueError(f"a dataset item has no `{label_key}` key; keys: {sorted(item)}")
            yield item[label_key]
        else:
            yield item


def estimate_unigram_prior(
    dataset_or_label_iterable: Any,
    vocab_size: int,
    *,
    ignore_index: int = -100,
    smoothing: float = 1.0,
    label_key: str = "labels",
    progress: bool = True,
) -> torch.Tensor:
    r"""Unigram distribution of the target tokens, with additive smoothing, for ``prior=`` smoothing.

    Args:
        dataset_or_label_iterable: a ``datasets.Dataset`` with a ``labels`` column, an iterable of dicts with
            a ``labels`` key, or an iterable of label sequences (lists, arrays or tensors of token ids).
        vocab_size: V, the number of output classes (``lm_head`` rows).
        ignore_index: label value that is not a token (padding); not counted.
        smoothing: pseudo-count added to every class (Laplace smoothing for 1), so no class has zero mass.
        label_key: the key of the labels in dataset items / the column name.
        progress: show a tqdm progress bar (over sequences).

    Returns:
        A float64 tensor ``(V,)``, ``q_k = (c_k + smoothing) / (sum_j c_j + V * smoothing)`` where ``c_k``
        counts label ``k``.

    Raises:
        ValueError: a label is outside ``[0, vocab_size)`` and not ``ignore_index``, the dataset has no
            ``label_key`` column (an item no such key), or there is no label to count and ``smoothing`` is 0.

    Examples:
        >>> estimate_unigram_prior([[0, 0, 1, -100]], vocab_size=3, smoothing=1.0).tolist()
        [0.5, 0.3333333333333333, 0.16666666666666666]
    """
    from tqdm.auto import tqdm

    vocab_size = check_positive_int(vocab_size, "vocab_size")
    smoothing = check_nonnegative(smoothing, "smoothing")
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    chunk: list[torch.Tensor] = []

    def flush() -> None:
        if not chunk:
            return
        ids = torch.cat(chunk)
        chunk.clear()
        ids = ids[ids != ignore_index]
        bad = (ids < 0) | (ids >= vocab_size)
        if bool(bad.any()):
            raise ValueError(
                f"labels must be in [0, {vocab_size}) or ignore_index={ignore_index}; found {int(ids[bad][0])} "
                "(is `vocab_size` the size of the model's output layer?)"
            )
        counts.add_(torch.bincount(ids, minlength=vocab_size).to(torch.float64))

    sequences = _label_sequences(dataset_or_label_iterable, label_key)
    for seq in tqdm(sequences, desc="unigram prior", unit="seq", mininterval=2.0, disable=not progress):
        chunk.append(torch.as_tensor(seq, dtype=torch.long).reshape(-1))
        if len(chunk) >= 4096:
            flush()
    flush()
    total = counts.sum() + vocab_size * smoothing
    if float(total) == 0.0:
        raise ValueError("no labels to estimate a unigram prior from (all ignored or empty) and smoothing=0")
    return (counts + smoothing) / total


def load_prior_file(path: str) -> torch.Tensor:
    """A prior saved as a JSON list of V numbers or as a torch tensor (``.pt``, loaded with ``weights_only``)."""
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                return torch.tensor(json.load(f), dtype=torch.float64)
        return torch.as_tensor(torch.load(path, map_location="cpu", weights_only=True), dtype=torch.float64)
    except (OSError, ValueError, TypeError, RuntimeError) as err:  # json/pickle/shape errors name no file
        raise ValueError(f"cannot read the prior file {path!r}: {err}") from err
