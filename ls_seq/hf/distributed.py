"""Which process this is, and which rows of an evaluation batch are real samples.

accelerate evens out the last evaluation batch across processes by repeating samples from the start of
the dataset (``even_batches=True``); ``accelerator.gather_for_metrics`` then drops the repeats from the
gathered, rank-major concatenation, keeping its first ``GradientState().remainder`` rows. A metric that
sums per process must drop the same rows *before* summing: :func:`real_rows` says which of this process's
rows survive that cut, from accelerate's own state and without communication.
"""

from __future__ import annotations

import torch

__all__ = ["dist_info", "drop_rows", "real_rows"]


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one.

    Read from ``torch.distributed`` itself: accelerate's ``PartialState`` reports one process on a CPU under
    ``torchrun`` (accelerate 1.15) while the process group, and the Trainer, have several.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def real_rows(n_rows: int, device: torch.device | str | None = None) -> torch.Tensor | None:
    """A ``(n_rows,)`` bool mask of this process's rows that are real samples, or None when all are.

    Call it for each batch of an accelerate-prepared evaluation dataloader, while iterating it. Only the last
    batch can hold repeats: then ``gather_for_metrics`` keeps the first ``remainder`` rows of the gathered
    batch, in which this process's rows are ``rank * n_rows ... rank * n_rows + n_rows - 1``.
    """
    rank, world = dist_info()
    if world == 1:
        return None
    from accelerate.state import GradientState

    state = GradientState()
    if not state.end_of_dataloader or state.remainder <= 0:
        return None  # not the last batch, or a dataset without length (accelerate cannot know either)
    first = rank * n_rows
    keep = torch.arange(first, first + n_rows, device=device) < state.remainder  # (n_rows,)
    return None if bool(keep.all()) else keep


def drop_rows(labels: torch.Tensor, keep: torch.Tensor | None, ignore_index: int = -100) -> torch.Tensor:
    """``labels`` with every row that ``keep`` (``(B,)`` bool, or None: all) does not keep set to ``ignore_index``."""
    if keep is None:
        return labels
    return labels.masked_fill(~keep.to(labels.device).view(-1, *([1] * (labels.dim() - 1))), ignore_index)
