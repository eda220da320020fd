"""Temperature inside beam search: a ``LogitsProcessor`` and a ``generate`` helper.

HF's ``generate(temperature=T)`` only acts when sampling (``do_sample=True``): its temperature warper is not
added for greedy or beam search. And in beam search the processors receive log-probabilities
``log_softmax(z)``; dividing those by ``T`` alone multiplies every hypothesis score by the same ``1/T``, which
cannot change the search. :class:`BeamSearchTemperature` renormalises after scaling,
``log_softmax(log_softmax(z) / T) = log_softmax(z / T)``, so the beams are scored by the tempered model.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ls_seq.checks import check_temperature

__all__ = ["BeamSearchTemperature", "generate_with_temperature"]


class BeamSearchTemperature(LogitsProcessor):
    r"""Return ``log_softmax(scores / T)``: the tempered model's log-probabilities, for any decoding method.

    Args:
        temperature: ``T > 0``, finite. ``T > 1`` flattens the distribution, ``T < 1`` sharpens it; ``T = 1``
            returns ``log_softmax(scores)``, the identity on the log-probabilities beam search passes in.

    Raises:
        TypeError: ``temperature`` is not a real number.
        ValueError: ``temperature`` is not finite and positive.

    ``scores`` may be logits or log-probabilities: both give ``log_softmax(z / T)`` up to the constant that
    ``log_softmax`` removes. Computed in float32 at least; the input is not modified.

    Examples:
        >>> import torch
        >>> scores = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0]]), dim=-1)
        >>> out = BeamSearchTemperature(2.0)(torch.zeros(1, 1, dtype=torch.long), scores)
        >>> torch.allclose(out, torch.log_softmax(scores / 2.0, dim=-1))
        True
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = check_temperature(temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(scores.dtype, torch.float32)
        return torch.log_softmax(scores.to(dtype) / self.temperature, dim=-1).to(scores.dtype)  # (batch*beams, V)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(temperature={self.temperature})"


def generate_with_temperature(model: Any, temperature: float, **generate_kwargs: Any) -> Any:
    """``model.generate(**generate_kwargs)`` with :class:`BeamSearchTemperature` appended to the processors.

    Args:
        model: a HF model with ``generate``.
        temperature: ``T > 0``; applied in beam search, greedy search and sampling alike.
        **generate_kwargs: passed to ``generate`` (``num_beams``, ``max_new_tokens``, ``logits_processor``, ...).
            The temperature is this function's own argument, so HF's sampling-only ``temperature=`` warper
            cannot be passed a second time by mistake.

    Returns:
        What ``generate`` returns.

    Raises:
        TypeError: ``temperature`` is not a real number.
        ValueError: ``temperature`` is not finite and positive.

    Examples:
        >>> out = generate_with_temperature(model, 1.5, input_ids=ids, num_beams=4)  # doctest: +SKIP
    """
    processor = BeamSearchTemperature(temperature)
    processors = LogitsProcessorList(generate_kwargs.pop("logits_processor", None) or [])
    processors.append(processor)
    return model.generate(logits_processor=processors, **generate_kwargs)
