"""``nn.Module`` wrappers over :mod:`ls_seq.functional.losses` (configuration in, the functional math called)."""

from __future__ import annotations

import torch
from torch import nn

from ls_seq.checks import check_alpha, check_choice, check_prior
from ls_seq.functional.losses import CONVENTIONS, REDUCTIONS, label_smoothed_cross_entropy

__all__ = ["LabelSmoothedCrossEntropy"]


class LabelSmoothedCrossEntropy(nn.Module):
    r"""Label-smoothed cross-entropy as a module; see :func:`ls_seq.label_smoothed_cross_entropy`.

    The prior (if any) is a non-persistent buffer, so it follows the module across devices. Calling the module,
    ``criterion(logits, labels, num_items_in_batch=None)``, returns what the function returns for these arguments.

    Args:
        alpha: smoothing mass in ``[0, 1]``; ``alpha=0`` is the plain negative log-likelihood.
        ignore_index: label value whose positions contribute nothing (loss and gradient 0).
        prior: optional length-V probability vector replacing the uniform ``1/V``; only with
            ``convention="uniform"``.
        convention: ``"uniform"`` (the paper, PyTorch) or ``"fairseq"`` (``alpha / (V - 1)`` on each wrong class).
        reduction: ``"mean"`` over non-ignored tokens, ``"sum"``, or ``"none"``.

    Raises:
        TypeError: ``alpha`` is not a real number, or ``prior`` not a tensor of probabilities.
        ValueError: ``alpha`` is outside ``[0, 1]``, ``convention`` or ``reduction`` is not one of the above,
            or ``prior`` is not a distribution or is given with ``convention="fairseq"``.

    Examples:
        >>> import torch
        >>> from ls_seq import LabelSmoothedCrossEntropy
        >>> criterion = LabelSmoothedCrossEntropy(alpha=0.1)
        >>> logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
        >>> torch.allclose(criterion(logits, labels),
        ...                torch.nn.functional.cross_entropy(logits.view(-1, 7), labels.view(-1), label_smoothing=0.1))
        True
    """

    prior: torch.Tensor | None  # a buffer (register_buffer in __init__)

    def __init__(
        self,
        alpha: float = 0.1,
        *,
        ignore_index: int = -100,
        prior: torch.Tensor | None = None,
        convention: str = "uniform",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        self.convention = check_choice(convention, "convention", CONVENTIONS)
        self.reduction = check_choice(reduction, "reduction", REDUCTIONS)
        self.ignore_index = ignore_index
        if prior is not None:
            prior = check_prior(prior, len(prior)).float()
            if convention != "uniform":
                raise ValueError(f"`prior` is only defined for convention='uniform', got convention={convention!r}")
        self.register_buffer("prior", prior, persistent=False)

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_nll: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return label_smoothed_cross_entropy(
            logits,
            labels,
            self.alpha,
            ignore_index=self.ignore_index,
            prior=self.prior,
            convention=self.convention,
            reduction=self.reduction,
            num_items_in_batch=num_items_in_batch,
            return_nll=return_nll,
        )

    def extra_repr(self) -> str:
        prior = ", prior=<unigram>" if self.prior is not None else ""
        return f"alpha={self.alpha}, convention={self.convention!r}, reduction={self.reduction!r}{prior}"
