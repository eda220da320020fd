"""Measurement that never changes the experiment: run a block without touching the random streams of training.

An evaluation during training draws random numbers without meaning to: creating a ``DataLoader`` iterator
draws its base seed from torch's global generator, samplers shuffle with it, and a callback may sample. Every
dropout mask and every shuffle after the first evaluation then differs from a run without it, so the same
seed trains a different model depending on whether it is watched. :func:`isolated_rng` saves the global
generators (Python's ``random``, numpy's, torch's CPU generator and every initialised CUDA device's) before
the block and restores them after it, whatever the block drew or raised.

:class:`IsolatedEvaluationMixin` puts HF ``Trainer.evaluate`` inside it; the studies' trainers use it, so
a run with ``--calibration_every`` trains bit for bit the model that a run without it trains (tests:
``tests/studies/en_de/test_calibration_along_training.py``, ``tests/test_rng.py``). The vision loop's
evaluations run inside it too (:mod:`vision.train`); fairseq reseeds its generators from the update number
before every training step, so its validations cannot reach training.

This module only saves and restores state: it never seeds anything, and code outside the block sees the
generators exactly as it left them.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # the mixin goes before a Trainer in the bases; a type checker sees that Trainer as its base
    from transformers import Trainer as _TrainerBase
else:
    _TrainerBase = object

__all__ = ["IsolatedEvaluationMixin", "isolated_rng"]


def _cuda_devices() -> list[int]:
    # Only devices whose generator exists: asking for the state of an uninitialised CUDA would initialise it.
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    return list(range(torch.cuda.device_count()))


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run the block with the global random generators restored afterwards to their state before it.

    Covers Python's :mod:`random`, numpy's global ``np.random`` (when numpy is importable), torch's CPU
    generator and the generator of every initialised CUDA device. Generators that the block creates itself
    (``torch.Generator()``) are its own business.

    Examples:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> with isolated_rng():
        ...     _ = torch.rand(3)  # an evaluation that draws
        >>> after = torch.rand(1)
        >>> _ = torch.manual_seed(0)
        >>> bool(torch.equal(after, torch.rand(1)))
        True
    """
    python_state = random.getstate()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        np = None  # type: ignore[assignment]  # checked below: numpy is optional here
    numpy_state = np.random.get_state() if np is not None else None
    try:
        with torch.random.fork_rng(devices=_cuda_devices()):
            yield
    finally:
        random.setstate(python_state)
        if np is not None:
            np.random.set_state(numpy_state)


class IsolatedEvaluationMixin(_TrainerBase):
    """A ``transformers.Trainer`` mixin whose ``evaluate`` leaves the training random streams untouched.

    Put it before the Trainer class: ``class MyTrainer(IsolatedEvaluationMixin, Seq2SeqTrainer)``. The
    evaluations that ``eval_strategy="steps"`` runs during training go through ``evaluate`` and so through
    :func:`isolated_rng`; the results of the evaluation are unchanged.
    """

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        with isolated_rng():
            return super().evaluate(*args, **kwargs)
