"""The ls-seq loss as a HuggingFace ``compute_loss_func``: configured and checked once, cheap on every step.

``Trainer(compute_loss_func=label_smoothing_loss_func(0.1, model=model))`` trains any model with logits with
ls-seq's label-smoothed cross-entropy. The trainers (:mod:`ls_seq.hf.trainer`) use the same object through
:meth:`LabelSmoothingLossFunc.sums` and :meth:`LabelSmoothingLossFunc.fused_sums`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ls_seq.checks import check_alpha, check_choice, check_logits_labels, check_nonnegative, check_prior
from ls_seq.functional.losses import CONVENTIONS, entropy_sum, smoothed_sums, smoothing_weights
from ls_seq.hf.model_io import (
    LogitTransform,
    ModelIO,
    computes_router_loss,
    logits_of,
    model_io_of,
    scored_labels,
    shift_from_output,
)

__all__ = ["LabelSmoothingLossFunc", "label_smoothing_loss_func", "use_label_smoothing"]


def _assert_labels_in_range(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Device-side check (no host sync): an out-of-range label raises here, named, not deep in a gather."""
    ok = ((labels >= 0) & (labels < vocab)) | (labels == ignore_index)
    torch._assert_async(ok.all(), f"`labels` must be in [0, {vocab}) (the model's output size) or ignore_index={ignore_index}")


class LabelSmoothingLossFunc:
    """The ls-seq loss with HF's ``compute_loss_func`` signature; build it with :func:`label_smoothing_loss_func`.

    ``__call__(outputs, labels, num_items_in_batch=None)`` returns ``sum of token losses / N`` over the scored
    tokens, with ``N = num_items_in_batch`` when given (HF's count over the accumulated batch, all ranks),
    else the scored tokens of this batch. The per-token loss is the label-smoothed cross-entropy of
    :func:`ls_seq.label_smoothed_cross_entropy` minus ``confidence_penalty * H(p)``.

    The configuration is checked once, here; a step runs no argument check that needs a host sync (labels
    outside ``[0, V)`` are caught on the device).

    Args:
        alpha: smoothing mass in ``[0, 1)``.
        convention: ``"uniform"`` (the paper, PyTorch) or ``"fairseq"`` (``alpha / (V - 1)`` on each wrong class).
        prior: optional length-V probabilities replacing the uniform ``1/V`` (``convention="uniform"`` only).
        confidence_penalty: ``beta >= 0`` of the confidence penalty ``-beta * H(p)`` (Pereyra et al. 2017).
        z_loss: weight ``>= 0`` of ``lse(z)**2`` per scored token (PaLM, OLMo).
        ignore_index: label value of padding and masked prompt tokens.
        shift_labels: how logits align with labels (True: logits at t score the label at t + 1); by default
            from ``model``, else from the class of each output (``...CausalLMOutput...`` shifts,
            ``Seq2Seq...Output`` does not).
        model: the model being trained: ls-seq then knows its alignment, its output size (checked against
            ``prior``) and whether the Trainer's ``num_items_in_batch`` counts exactly the scored labels.

    Raises:
        TypeError: an argument has the wrong type (``shift_labels`` not a bool or None, ``ignore_index`` not
            an int, ...).
        ValueError: a value is out of range, ``prior`` is not a distribution over the model's classes or is
            given with ``convention="fairseq"``, or ``model`` is one whose alignment ls-seq cannot tell.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        *,
        convention: str = "uniform",
        prior: torch.Tensor | None = None,
        confidence_penalty: float = 0.0,
        z_loss: float = 0.0,
        ignore_index: int = -100,
        shift_labels: bool | None = None,
        model: nn.Module | None = None,
    ) -> None:
        self.alpha = check_alpha(alpha, "alpha", allow_one=False)
        self.convention = check_choice(convention, "convention", CONVENTIONS)
        if shift_labels is not None and not isinstance(shift_labels, bool):
            raise TypeError(f"`shift_labels` must be True, False or None, got {type(shift_labels).__name__}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"`ignore_index` must be an int, got {type(ignore_index).__name__}")
        self.io: ModelIO | None = None if model is None else model_io_of(model, shift_labels=shift_labels)
        if prior is not None:
            if convention != "uniform":
                raise ValueError(f"`prior` is only defined for convention='uniform', got convention={convention!r}")
            prior = torch.as_tensor(prior, dtype=torch.float64)
            if prior.dim() != 1:
                raise ValueError(f"`prior` must be a 1-D tensor of V probabilities, got shape {tuple(prior.shape)}")
            size = prior.numel() if self.io is None else self.io.output_size
            prior = check_prior(prior, size)
        self.prior = prior
        self.confidence_penalty = check_nonnegative(confidence_penalty, "confidence_penalty")
        self.z_loss = check_nonnegative(z_loss, "z_loss")
        self.ignore_index = ignore_index
        self.shift_labels = shift_labels if self.io is None else self.io.shifts_labels
        self._prior_on: dict[torch.device, torch.Tensor] = {}
        self._weights: dict[int, tuple[float, float]] = {}

    # ---- the math, on aligned logits and labels ---------------------------------------------------------

    def weights(self, vocab: int) -> tuple[float, float]:
        """``(w_hot, w_q)`` of the smoothed target for ``vocab`` classes (checked once per V)."""
        if vocab not in self._weights:
            if self.prior is not None and self.prior.numel() != vocab:
                raise ValueError(f"`prior` has {self.prior.numel()} entries but the model has {vocab} output classes")
            self._weights[vocab] = smoothing_weights(self.alpha, vocab, self.convention)
        return self._weights[vocab]

    def prior_on(self, device: torch.device) -> torch.Tensor | None:
        """The prior as float32 on ``device`` (one host-to-device copy, not one per step)."""
        if self.prior is None:
            return None
        if device not in self._prior_on:
            self._prior_on[device] = self.prior.to(device=device, dtype=torch.float32)
        return self._prior_on[device]

    def sums(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss_sum, nll_sum, n_tokens)`` over the non-ignored ``labels``, which ``logits`` already score
        position by position (see :meth:`ls_seq.hf.model_io.ModelIO.scored_labels`). Only ``loss_sum`` has a graph."""
        check_logits_labels(logits, labels, self.ignore_index, check_range=False)  # metadata only: no sync
        vocab = logits.shape[-1]
        w_hot, w_q = self.weights(vocab)
        _assert_labels_in_range(labels, vocab, self.ignore_index)
        loss_sum, nll_sum = smoothed_sums(
            logits, labels, w_hot, w_q, self.prior_on(logits.device), self.ignore_index, z_loss=self.z_loss
        )
        if self.confidence_penalty:
            loss_sum = loss_sum - self.confidence_penalty * entropy_sum(logits, labels, self.ignore_index)
        return loss_sum, nll_sum.detach(), labels.ne(self.ignore_index).sum()

    def fused_sums(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        chunk_size: int | None = None,
        transform: LogitTransform | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`sums` for ``logits = softcap(scale * (hidden @ weight.T + bias))`` (``transform``), without
        ever holding those logits."""
        from ls_seq.functional.fused import fused_smoothed_sums

        if self.confidence_penalty:
            raise ValueError("`confidence_penalty` needs the full logits; it cannot be combined with the fused loss")
        vocab = weight.shape[0]
        w_hot, w_q = self.weights(vocab)
        _assert_labels_in_range(labels, vocab, self.ignore_index)
        transform = transform or LogitTransform()
        loss_sum, nll_sum = fused_smoothed_sums(
            hidden,
            weight,
            labels,
            w_hot,
            w_q,
            self.prior_on(hidden.device),
            bias=bias,
            ignore_index=self.ignore_index,
            chunk_size=chunk_size,
            logit_scale=transform.scale,
            softcap=transform.softcap,
            z_loss=self.z_loss,
        )
        return loss_sum, nll_sum.detach(), labels.ne(self.ignore_index).sum()

    # ---- compute_loss_func --------------------------------------------------------------------------------

    def _shift_for(self, outputs: Any, label_smoother_shift: bool | None) -> bool:
        if self.shift_labels is not None:
            return self.shift_labels
        if label_smoother_shift:  # HF's LabelSmoother interface: the Trainer says the model is a causal LM
            return True
        shift = shift_from_output(outputs)
        if shift is None:
            raise ValueError(
                f"label_smoothing_loss_func cannot tell from a {type(outputs).__name__} whether the logits at t score "
                "the label at t (seq2seq) or at t + 1 (causal LM); build it with model=model, or with "
                "shift_labels=True / False"
            )
        return shift

    def _check_count(self, labels: torch.Tensor) -> None:
        """Refuse a ``num_items_in_batch`` that counted labels no logit scores (see :mod:`ls_seq.hf.model_io`).

        A causal LM never scores the first label of a row. transformers' Trainer leaves it out of its count
        only for models whose ``loss_type`` is ``ForCausalLM``; for the others (``GPT2LMHeadModel``) the
        count is too large by one per row whose first label is not ignored. One host read per step, and
        only when the count cannot be trusted.
        """
        if self.io is not None and self.io.trainer_counts_scored_labels:
            return
        first = labels[..., 0] != self.ignore_index  # (B,): labels the count may hold and no logit scores
        if not bool(first.any()):
            return  # the first label of every row is masked (prompt tokens, packing): both counts agree
        if self.io is None:
            reason = (
                "it cannot tell whether the Trainer counted them: build the loss with label_smoothing_loss_func(..., model=model)"
            )
        else:
            reason = (
                f"transformers' Trainer counts them for {self.io.name} (loss_type={getattr(self.io.model, 'loss_type', None)!r}), "
                f"which would scale the loss by about (N - B) / N: train with ls_seq.LabelSmoothingTrainer (it counts "
                f"the scored labels), or set model.loss_type = 'ForCausalLM' before building the Trainer"
            )
        raise ValueError(
            f"label_smoothing_loss_func: {int(first.sum())} row(s) of this causal-LM batch have a first label that "
            f"no logit scores, and `num_items_in_batch` may count it; {reason}"
        )

    def __call__(
        self,
        outputs: Any = None,
        labels: torch.Tensor | None = None,
        *args: Any,
        num_items_in_batch: int | torch.Tensor | None = None,
        shift_labels: bool | torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``compute_loss_func(outputs, labels, num_items_in_batch=None)``, or, given logits (first, or as
        ``logits=``), a model's ``loss_function(logits, labels, vocab_size, num_items_in_batch=None, ...)``."""
        if logits is not None:
            outputs = logits
        if labels is None and isinstance(outputs, torch.Tensor) and isinstance(shift_labels, torch.Tensor):
            labels = shift_labels  # a model that passes its aligned labels as shift_labels alone (Moonshine)
        if labels is None:
            raise ValueError("the ls-seq loss needs `labels`; the batch has none (does the collator return them?)")
        if isinstance(outputs, torch.Tensor):
            if args and num_items_in_batch is None and len(args) > 1:
                num_items_in_batch = args[1]  # loss_function(logits, labels, vocab_size, num_items_in_batch, ...)
            given = shift_labels if isinstance(shift_labels, torch.Tensor) else None
            return self._as_loss_function(outputs, labels, num_items_in_batch, given)
        if args and num_items_in_batch is None:
            num_items_in_batch = args[0]
        logits = logits_of(outputs)
        shift = self._shift_for(outputs, shift_labels if isinstance(shift_labels, bool) else None)
        if shift:
            if num_items_in_batch is not None:
                self._check_count(labels)
            labels = scored_labels(labels, True, ignore_index=self.ignore_index)
        loss_sum, _, n_tokens = self.sums(logits, labels)
        denom = n_tokens if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, device=loss_sum.device)
        loss = loss_sum / denom.clamp_min(1).to(loss_sum.dtype)
        return loss + self._router_terms(outputs, loss)

    def _as_loss_function(
        self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Any, shift_labels: torch.Tensor | None
    ) -> torch.Tensor:
        """As ``model.loss_function``: the model computes its loss with this token term and adds its own terms."""
        if self.shift_labels is None:
            raise ValueError(
                "label_smoothing_loss_func as a model's loss_function needs to know how the logits align with the "
                "labels: build it with model=model (or shift_labels=True / False)"
            )
        labels = labels.to(logits.device)
        if self.shift_labels and shift_labels is None and num_items_in_batch is not None:
            self._check_count(labels)
        scored = scored_labels(labels, self.shift_labels, shift_labels, self.ignore_index)
        loss_sum, _, n_tokens = self.sums(logits, scored)
        denom = n_tokens if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, device=loss_sum.device)
        return loss_sum / denom.clamp_min(1).to(loss_sum.dtype)

    def _router_terms(self, outputs: Any, loss: torch.Tensor) -> torch.Tensor | float:
        """The router loss an MoE model would add to its loss, which it cannot when the Trainer withholds the labels.

        transformers' MoE causal LMs (Mixtral, Qwen-MoE, OLMoE, ...) return ``aux_loss`` and add
        ``router_aux_loss_coef * aux_loss`` to their loss only when they compute it; with ``compute_loss_func``
        they do not, so it is added here. Other loss terms in the output are refused: they need the model to
        compute its loss (:func:`use_label_smoothing`, or ls-seq's trainers).
        """
        if not isinstance(outputs, Mapping):
            return 0.0
        terms = {k: v for k, v in outputs.items() if k != "loss" and k.endswith("_loss") and v is not None}
        routers = [k for k, v in outputs.items() if k.endswith("router_logits") and v is not None]
        others = [k for k, v in outputs.items() if "logits" in k and k != "logits" and k not in routers and v is not None]
        if others:
            raise ValueError(
                f"the model's output carries further logits {sorted(others)} that its own loss uses (ProphetNet's n-gram "
                "streams), which compute_loss_func cannot combine the way the model does; use "
                "ls_seq.LabelSmoothingSeq2SeqTrainer / LabelSmoothingTrainer, which keep the model's own terms"
            )
        router_loss = self.io is None or computes_router_loss(self.io.model)  # without model=, assume it might
        if routers and router_loss and "aux_loss" not in terms:
            raise ValueError(
                f"the model's output carries {sorted(routers)} but no aux_loss: it computes its router losses only when it "
                "computes its own loss (NLLB-MoE), which compute_loss_func prevents; use ls_seq.LabelSmoothingSeq2SeqTrainer "
                "/ LabelSmoothingTrainer (or ls_seq.use_label_smoothing(model) where the model calls self.loss_function)"
            )
        if not terms:
            return 0.0
        if set(terms) != {"aux_loss"}:
            raise ValueError(
                f"the model's output carries loss terms {sorted(terms)} that compute_loss_func cannot combine the way the "
                "model does; let the model compute its loss with ls-seq's token term instead: "
                "ls_seq.use_label_smoothing(model, alpha) and no compute_loss_func, or "
                "ls_seq.LabelSmoothingTrainer"
            )
        coef = None if self.io is None else _router_aux_loss_coef(self.io.model)
        if coef is None:
            raise ValueError(
                "the model's output carries a router `aux_loss` (a mixture-of-experts model with output_router_logits): "
                "build the loss with label_smoothing_loss_func(..., model=model) so that ls-seq adds "
                "router_aux_loss_coef * aux_loss as the model does"
            )
        return coef * terms["aux_loss"].to(loss.device)

    def __repr__(self) -> str:
        prior = None if self.prior is None else f"tensor(V={self.prior.numel()})"
        return (
            f"{type(self).__name__}(alpha={self.alpha}, convention={self.convention!r}, prior={prior}, "
            f"confidence_penalty={self.confidence_penalty}, ignore_index={self.ignore_index}, "
            f"shift_labels={self.shift_labels})"
        )


def use_label_smoothing(model: nn.Module, alpha: float = 0.1, **options: Any) -> LabelSmoothingLossFunc:
    """Make ls-seq's token loss ``model.loss_function``, so that any Trainer trains the model's own loss with
    its token cross-entropy smoothed (everything else the model adds, router losses included, is kept).

    transformers 5 models compute ``self.loss_function(logits, labels, vocab_size, **kwargs)`` and add their own
    terms; ``loss_function`` has a setter. A model whose forward never calls it (BART, Marian, T5, Whisper,
    ...) would silently ignore the assignment, so it is refused here, naming the routes that work for it.

    Args:
        model: the transformers model (peft-wrapped or not) that the Trainer will train.
        alpha: smoothing mass in ``[0, 1)``.
        **options: the other options of :class:`LabelSmoothingLossFunc` (``convention``, ``prior``,
            ``confidence_penalty``, ``z_loss``, ``ignore_index``, ``shift_labels``); ``model`` is this one.

    Returns:
        The installed :class:`LabelSmoothingLossFunc`.

    Raises:
        ValueError: the model's forward never calls ``self.loss_function`` (the message names the routes that
            work for it), or an option is out of range as for :class:`LabelSmoothingLossFunc`.

    Examples:
        >>> ls_seq.use_label_smoothing(model, 0.1)  # doctest: +SKIP
        >>> SFTTrainer(model=model, args=config, train_dataset=data).train()  # doctest: +SKIP
    """
    loss_fn = LabelSmoothingLossFunc(alpha, model=model, **options)
    assert loss_fn.io is not None
    if not loss_fn.io.routes_loss_function:
        raise ValueError(
            f"{loss_fn.io.name} computes its own cross-entropy (its forward never calls self.loss_function), so it "
            "would ignore ls-seq as its loss_function: use ls_seq.LabelSmoothingSeq2SeqTrainer / LabelSmoothingTrainer, "
            "or Trainer(compute_loss_func=ls_seq.label_smoothing_loss_func(..., model=model))"
        )
    unwrapped: Any = loss_fn.io.model  # nn.Module types attributes as Tensor | Module; HF's loss_function is a callable
    unwrapped.loss_function = loss_fn
    return loss_fn


def _router_aux_loss_coef(model: nn.Module) -> float | None:
    """``router_aux_loss_coef`` as the model reads it (itself, its config, or its text config)."""
    for owner in (model, getattr(model, "config", None), getattr(getattr(model, "config", None), "text_config", None)):
        for name in ("router_aux_loss_coef", "aux_loss_coef"):  # JetMoe names it aux_loss_coef
            value = getattr(owner, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return None


def label_smoothing_loss_func(alpha: float = 0.1, **options: Any) -> LabelSmoothingLossFunc:
    """A loss for ``Trainer(compute_loss_func=...)``: ``(outputs, labels, num_items_in_batch=None) -> loss``.

    Args:
        alpha: smoothing mass in [0, 1).
        **options: ``model`` (the model being trained: ls-seq then knows its alignment and whether the
            Trainer's ``num_items_in_batch`` counts exactly the scored labels), ``convention`` ("uniform" |
            "fairseq"), ``prior`` (length-V probabilities), ``confidence_penalty`` (beta >= 0), ``z_loss``
            (>= 0), ``ignore_index`` (-100), ``shift_labels`` (True: logits at t score the label at t + 1);
            each as for :class:`LabelSmoothingLossFunc`.

    Returns:
        The :class:`LabelSmoothingLossFunc`, to pass as ``compute_loss_func``.

    Raises:
        TypeError: an option has the wrong type or is not one of the above.
        ValueError: an option is out of range (see :class:`LabelSmoothingLossFunc`).

    The alignment comes from ``shift_labels``, else from ``model``, else from the output's class (a
    ``...CausalLMOutput...`` shifts, a ``Seq2Seq...Output`` does not); anything else is refused. The loss is
    ``sum / num_items_in_batch`` so HF's gradient accumulation is exact. Seq2seq models need
    ``decoder_input_ids`` in the batch, because the Trainer removes ``labels`` before the forward pass: use
    ``DataCollatorForSeq2Seq(tokenizer, model=model)``.

    Examples:
        >>> import torch
        >>> from transformers.modeling_outputs import Seq2SeqLMOutput
        >>> loss_func = label_smoothing_loss_func(0.1)
        >>> logits, labels = torch.randn(2, 3, 5), torch.tensor([[1, 2, -100], [0, 4, 3]])
        >>> loss = loss_func(Seq2SeqLMOutput(logits=logits), labels)
        >>> ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), label_smoothing=0.1)
        >>> bool(torch.isclose(loss, ref))
        True
    """
    return LabelSmoothingLossFunc(alpha, **options)
