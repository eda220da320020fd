"""The argument checks of ls-seq, public: for studies and scripts built on it (``vision/``, your own recipe).

Each raises ``ValueError`` (``TypeError`` for a wrong type) with a message that names the argument, what is
allowed and what was given, and returns the checked value:

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

from ls_seq._validation import (
    check_alpha,
    check_alphas,
    check_choice,
    check_nonnegative,
    check_positive_int,
    check_seeds,
    check_temperature,
    check_temperatures,
)

__all__ = [
    "check_alpha",
    "check_alphas",
    "check_choice",
    "check_nonnegative",
    "check_positive_int",
    "check_seeds",
    "check_temperature",
    "check_temperatures",
]
