"""The argument checks of ls-seq, public: for studies and scripts built on it (``vision/``, your own recipe).

Each raises ``ValueError`` (``TypeError`` for a wrong type) with a message that names the argument, what is
allowed and what was given, and returns the checked value, so a user can fix the call without reading the
source. Checks run once, at the boundary; inner helpers trust their inputs.

Examples:
    >>> from ls_seq.checks import check_alpha, check_choice
    >>> check_alpha(0.1, "alpha")
    0.1
    >>> check_choice("tiny", "preset", ["tiny", "small"])
    'tiny'
    >>> check_alpha(1.5, "alpha")
    Traceback (most recent call last):
    ...
    ValueError: `alpha` must be in [0, 1], got 1.5
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "check_alpha",
    "check_alphas",
    "check_choice",
    "check_finite_tensor",
    "check_logits_labels",
    "check_nonnegative",
    "check_positive_int",
    "check_prior",
    "check_seeds",
    "check_temperature",
    "check_temperatures",
]


def _is_real_number(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, torch.Tensor):
        return x.numel() == 1 and (x.is_floating_point() or not x.is_complex())
    # numbers.Real covers numpy's scalars (np.float32 is no float subclass) but not numpy's bool
    return isinstance(x, numbers.Real) and type(x).__name__ != "bool_"


def check_alpha(alpha: Any, name: str = "alpha", allow_one: bool = True) -> float:
    """Return ``alpha`` as a float after checking it is a number in [0, 1] (or [0, 1) when ``allow_one`` is False)."""
    if not _is_real_number(alpha):
        raise TypeError(f"`{name}` must be a real number, got {type(alpha).__name__} ({alpha!r})")
    value = float(alpha)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if math.isnan(value) or value < 0.0 or not upper_ok:
        allowed = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"`{name}` must be in {allowed}, got {value!r}")
    return value


def check_temperature(temperature: Any, name: str = "temperature") -> float:
    """Return ``temperature`` as a float after checking it is finite and > 0."""
    if not _is_real_number(temperature):
        raise TypeError(f"`{name}` must be a real number, got {type(temperature).__name__} ({temperature!r})")
    value = float(temperature)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"`{name}` must be finite and > 0, got {value!r}")
    return value


def check_temperatures(temperatures: Any, name: str = "temperatures") -> list[float]:
    """Return a non-empty list of finite, positive temperatures."""
    if isinstance(temperatures, torch.Tensor):
        temperatures = temperatures.flatten().tolist()
    if isinstance(temperatures, (str, bytes)) or not isinstance(temperatures, Iterable):
        raise TypeError(f"`{name}` must be a sequence of positive numbers, got {type(temperatures).__name__}")
    values = list(temperatures)
    if not values:
        raise ValueError(f"`{name}` must hold at least one temperature, got an empty sequence")
    return [check_temperature(t, name=f"{name}[{i}]") for i, t in enumerate(values)]


def check_nonnegative(value: Any, name: str) -> float:
    """Return ``value`` as a float after checking it is a finite real number >= 0."""
    if not _is_real_number(value):
        raise TypeError(f"`{name}` must be a real number >= 0, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"`{name}` must be finite and >= 0, got {value!r}")
    return value


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` after checking it is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= {minimum}, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` after checking it is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")
    return value


def check_finite_tensor(tensor: torch.Tensor, name: str) -> None:
    """Raise if ``tensor`` holds NaN or an infinity (one reduction; callers use it where NaN would poison a sum)."""
    if not bool(torch.isfinite(tensor).all()):
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"`{name}` must be finite; it holds {n_bad} NaN or infinite value(s)")


def check_logits_labels(
    logits: Any,
    labels: Any,
    ignore_index: int = -100,
    logits_name: str = "logits",
    labels_name: str = "labels",
    check_range: bool = True,
) -> None:
    """Check that logits are (..., V) floats and labels (...) integers in [0, V) or ``ignore_index``.

    ``check_range=False`` checks only types, dtypes and shapes (tensor metadata: no device sync), for hot
    paths that check the label range on the device instead.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"`{logits_name}` must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`{labels_name}` must be a torch.Tensor, got {type(labels).__name__}")
    if not logits.is_floating_point():
        raise TypeError(
            f"`{logits_name}` must be a floating-point tensor (float16, bfloat16, float32 or float64), got {logits.dtype}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"`{labels_name}` must be an integer tensor (e.g. torch.long), got {labels.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"`{logits_name}` must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    if tuple(logits.shape[:-1]) != tuple(labels.shape):
        raise ValueError(
            f"`{labels_name}` must have the shape of `{logits_name}` without its last (class) dimension: "
            f"expected {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}"
        )
    if check_range and labels.numel():
        vocab = logits.shape[-1]
        valid = (labels == ignore_index) | ((labels >= 0) & (labels < vocab))
        if not bool(valid.all()):
            bad = labels[~valid]
            raise ValueError(
                f"`{labels_name}` must be in [0, {vocab}) or equal ignore_index={ignore_index}; "
                f"got {bad.numel()} value(s) outside, e.g. {int(bad[0])}"
            )


def check_prior(prior: Any, vocab_size: int, name: str = "prior", atol: float = 1e-4) -> torch.Tensor:
    """Return ``prior`` as a float tensor after checking it is a length-V probability vector."""
    if not isinstance(prior, torch.Tensor):
        try:
            prior = torch.as_tensor(prior, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` must be a 1-D tensor of {vocab_size} probabilities, got {type(prior).__name__}") from err
    if not prior.is_floating_point():
        prior = prior.to(torch.float64)
    if prior.dim() != 1 or prior.shape[0] != vocab_size:
        raise ValueError(f"`{name}` must have shape ({vocab_size},) to match the logits, got {tuple(prior.shape)}")
    if not bool(torch.isfinite(prior).all()) or bool((prior < 0).any()):
        raise ValueError(f"`{name}` must be finite and non-negative, got min {float(prior.min())}")
    total = float(prior.double().sum())
    if abs(total - 1.0) > atol:
        raise ValueError(f"`{name}` must sum to 1 (within {atol}), got a sum of {total:.6g}")
    return prior


def check_alphas(alphas: Any, name: str = "alphas") -> list[float]:
    """A non-empty list of distinct smoothing weights in ``[0, 1)`` (``--alphas 0 0.1``), as a list of floats."""
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of numbers in [0, 1), got {type(alphas).__name__}")
    if not alphas:
        raise ValueError(f"`{name}` must hold at least one value in [0, 1)")
    alphas = [check_alpha(a, f"{name}[{i}]", allow_one=False) for i, a in enumerate(alphas)]
    if len(set(alphas)) != len(alphas):
        raise ValueError(f"`{name}` must be distinct, got {alphas}")
    return alphas


def check_seeds(seeds: Any, name: str = "seeds") -> list[int]:
    """A non-empty list of distinct non-negative int seeds (``--seeds 42 43 44``), as a list."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of ints, got {type(seeds).__name__}")
    if not seeds:
        raise ValueError(f"`{name}` must hold at least one seed, got none")
    seeds = [check_positive_int(s, f"{name}[{i}]", minimum=0) for i, s in enumerate(seeds)]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"`{name}` must be distinct, got {seeds}")
    return seeds
