"""``evaluate`` metric modules shipped inside ls-seq, loadable offline by path.

Examples:
    >>> import evaluate  # doctest: +SKIP
    >>> from ls_seq.evaluate_metrics import token_ece_path
    >>> token_ece = evaluate.load(token_ece_path())  # doctest: +SKIP
    >>> token_ece.compute(predictions=logits, references=labels, n_bins=15)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from ls_seq._extras import require_extra

__all__ = ["token_ece_path"]


def token_ece_path() -> str:
    """Directory of the ``token_ece`` metric (holds ``token_ece.py``), for ``evaluate.load(token_ece_path())``.

    The metric runs inside HF ``evaluate`` (``pip install 'ls-seq[datasets]'``).

    Returns:
        The absolute path of the directory, as a string (``evaluate.load`` takes a path, not a module).

    Raises:
        MissingExtraError: ``evaluate`` is not installed; the message names the extra.
    """
    require_extra("datasets", feature="the token_ece metric")
    return str(Path(__file__).resolve().parent / "token_ece")
