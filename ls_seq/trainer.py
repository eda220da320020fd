"""HuggingFace Trainer integration: label smoothing with ls-seq's loss, exact under accumulation and DDP.

Three entry points, from least to most invasive:

* :func:`label_smoothing_loss_func` -- a callable for ``Trainer(compute_loss_func=...)``.
* :class:`LabelSmoothingSeq2SeqTrainer` -- a ``Seq2SeqTrainer`` whose alpha is the standard
  ``args.label_smoothing_factor``; it replaces HF's ``LabelSmoother`` and logs the plain token NLL
  (``nll_loss``) beside ``loss``.
* :class:`LabelSmoothingSeq2SeqTrainingArguments` -- ``Seq2SeqTrainingArguments`` plus the options that HF
  has no field for (smoothing convention, unigram prior, confidence penalty, fused linear loss).

Why the trainer computes the loss itself: Marian's and BART's own loss is a per-micro-batch mean, so with
``gradient_accumulation_steps > 1`` or padded batches of different lengths the tokens of short micro-batches
weigh more than those of long ones. Here every micro-batch returns ``sum of token losses / N`` where ``N`` is
HF's ``num_items_in_batch`` (the non-ignored tokens of the whole accumulated batch, on all ranks), so the
accumulated gradient is that of one big batch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from ls_seq._validation import check_alpha, check_choice, check_positive_int, check_prior
from ls_seq.functional.losses import CONVENTIONS, confidence_penalty_loss, label_smoothed_cross_entropy

__all__ = [
    "LabelSmoothingLossFunc",
    "LabelSmoothingSeq2SeqTrainer",
    "LabelSmoothingSeq2SeqTrainingArguments",
    "estimate_unigram_prior",
    "label_smoothing_loss_func",
    "logits_of",
    "teacher_forced_logits",
    "teacher_forcing_inputs",
]

PRIOR_CHOICES = ("uniform", "unigram")
# accelerate's plain data-parallel modes, where the training model must be a DistributedDataParallel.
_DDP_TYPES = {
    getattr(DistributedType, name)
    for name in ("MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA", "MULTI_HPU")
    if hasattr(DistributedType, name)
}


def _check_beta(beta: Any, name: str) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"`{name}` must be a real number >= 0, got {type(beta).__name__} ({beta!r})")
    if not (math.isfinite(beta) and beta >= 0.0):
        raise ValueError(f"`{name}` must be finite and >= 0, got {beta!r}")
    return float(beta)


def logits_of(outputs: Any, where: str = "the model output") -> torch.Tensor:
    """Return ``outputs["logits"]`` or raise a ``ValueError`` that says how to get logits."""
    if isinstance(outputs, Mapping) and "logits" in outputs and outputs["logits"] is not None:
        return outputs["logits"]
    keys = list(outputs.keys()) if isinstance(outputs, Mapping) else type(outputs).__name__
    raise ValueError(
        f"{where} has no `logits` (got {keys}); ls-seq needs a model that returns a ModelOutput with `logits` "
        "(a ...ForConditionalGeneration / ...MTModel / ...ForCausalLM head, called with return_dict=True)"
    )


def teacher_forcing_inputs(model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor) -> dict[str, Any]:
    """``inputs`` plus ``decoder_input_ids`` built from ``labels`` when an encoder-decoder lacks them.

    ``model`` is the unwrapped model. An encoder-decoder builds them itself when it receives labels, which it
    no longer does once the caller pops them to compute the loss (or the metric) itself.
    """
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return inputs
    if (
        inputs.get("decoder_input_ids") is None
        and inputs.get("decoder_inputs_embeds") is None
        and hasattr(model, "prepare_decoder_input_ids_from_labels")
    ):
        inputs = {**inputs, "decoder_input_ids": model.prepare_decoder_input_ids_from_labels(labels=labels)}
    return inputs


def teacher_forced_logits(model: nn.Module, batch: dict[str, Any], where: str = "the model output") -> tuple[torch.Tensor, torch.Tensor]:
    """One teacher-forced forward pass: ``(logits (..., V), labels (...))``, aligned token for token.

    The labels are taken out of the batch, so the model does not compute a loss nobody reads; a causal LM's
    logits at position t are paired with the label at t + 1. ``model`` may be wrapped (DDP).
    """
    batch = dict(batch)
    labels = batch.pop("labels", None)
    if labels is None:
        raise ValueError(f"a teacher-forced pass needs `labels` in every batch; this batch has only {sorted(batch)}")
    unwrapped = getattr(model, "module", model)
    logits = logits_of(model(**teacher_forcing_inputs(unwrapped, batch, labels)), where=where)
    if not getattr(getattr(unwrapped, "config", None), "is_encoder_decoder", True):
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    return logits, labels


# --------------------------------------------------------------------------------------------------------------
# Unigram prior


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
        float64 tensor ``(V,)``: ``q_k = (c_k + smoothing) / (sum_j c_j + V * smoothing)`` where ``c_k``
        counts label ``k``.

    Example:
        >>> estimate_unigram_prior([[0, 0, 1, -100]], vocab_size=3, smoothing=1.0).tolist()
        [0.5, 0.3333333333333333, 0.16666666666666666]
    """
    vocab_size = check_positive_int(vocab_size, "vocab_size")
    smoothing = _check_beta(smoothing, "smoothing")
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    from tqdm.auto import tqdm

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


def _load_prior_file(path: str) -> torch.Tensor:
    """A prior saved as a JSON list of V numbers or as a torch tensor (``.pt``)."""
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            return torch.tensor(json.load(f), dtype=torch.float64)
    return torch.as_tensor(torch.load(path, map_location="cpu", weights_only=True), dtype=torch.float64)


# --------------------------------------------------------------------------------------------------------------
# Loss callable (compute_loss_func / label_smoother)


class LabelSmoothingLossFunc:
    """The ls-seq loss with HF's ``compute_loss_func`` signature; build it with :func:`label_smoothing_loss_func`.

    ``__call__(outputs, labels, num_items_in_batch=None)`` returns ``sum of token losses / N`` with
    ``N = num_items_in_batch`` when given (HF's count over the accumulated batch), else the non-ignored tokens.
    The per-token loss is the label-smoothed cross-entropy of ``ls_seq.label_smoothed_cross_entropy`` minus
    ``confidence_penalty * H(p)``.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        *,
        convention: str = "uniform",
        prior: torch.Tensor | None = None,
        confidence_penalty: float = 0.0,
        ignore_index: int = -100,
        shift_labels: bool = False,
    ) -> None:
        self.alpha = check_alpha(alpha, "alpha", allow_one=False)
        self.convention = check_choice(convention, "convention", CONVENTIONS)
        if prior is not None:
            if convention != "uniform":
                raise ValueError(f"`prior` is only defined for convention='uniform', got convention={convention!r}")
            prior = torch.as_tensor(prior, dtype=torch.float64)
            if prior.dim() != 1:
                raise ValueError(f"`prior` must be a 1-D tensor of V probabilities, got shape {tuple(prior.shape)}")
            check_prior(prior, prior.numel())
        self.prior = prior
        self.confidence_penalty = _check_beta(confidence_penalty, "confidence_penalty")
        self.ignore_index = int(ignore_index)
        self.shift_labels = bool(shift_labels)
        self._prior_on: dict[torch.device, torch.Tensor] = {}

    def _prior_for(self, device: torch.device) -> torch.Tensor | None:
        if self.prior is None:
            return None
        if device not in self._prior_on:  # one host-to-device copy, not one per step
            self._prior_on[device] = self.prior.to(device=device, dtype=torch.float32)
        return self._prior_on[device]

    def sums(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(loss_sum, nll_sum, n_tokens)`` over the non-ignored tokens; only ``loss_sum`` has a graph."""
        if self.shift_labels:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        loss_sum, nll_sum = label_smoothed_cross_entropy(
            logits,
            labels,
            self.alpha,
            ignore_index=self.ignore_index,
            prior=self._prior_for(logits.device),
            convention=self.convention,
            reduction="sum",
            return_nll=True,
        )
        if self.confidence_penalty:
            # confidence_penalty_loss is NLL - beta * H; subtracting the NLL leaves the entropy term alone.
            penalty = confidence_penalty_loss(
                logits, labels, self.confidence_penalty, ignore_index=self.ignore_index, reduction="sum"
            )
            loss_sum = loss_sum + (penalty - nll_sum)
        n_tokens = (labels != self.ignore_index).sum()
        return loss_sum, nll_sum.detach(), n_tokens

    def __call__(
        self,
        outputs: Any,
        labels: torch.Tensor,
        num_items_in_batch: int | torch.Tensor | None = None,
        shift_labels: bool = False,
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError("the ls-seq loss needs `labels`; the batch has none (does the collator return them?)")
        logits = logits_of(outputs)
        if shift_labels and not self.shift_labels:  # HF's LabelSmoother interface, used for causal LMs
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        loss_sum, _, n_tokens = self.sums(logits, labels)
        denom = n_tokens.clamp_min(1) if num_items_in_batch is None else num_items_in_batch
        return loss_sum / torch.as_tensor(denom, device=loss_sum.device).clamp_min(1).to(loss_sum.dtype)

    def __repr__(self) -> str:
        prior = None if self.prior is None else f"tensor(V={self.prior.numel()})"
        return (
            f"{type(self).__name__}(alpha={self.alpha}, convention={self.convention!r}, prior={prior}, "
            f"confidence_penalty={self.confidence_penalty}, ignore_index={self.ignore_index})"
        )


def label_smoothing_loss_func(alpha: float = 0.1, **options: Any) -> LabelSmoothingLossFunc:
    """A loss for ``Trainer(compute_loss_func=...)``: ``(outputs, labels, num_items_in_batch=None) -> loss``.

    Args:
        alpha: smoothing mass in [0, 1).
        **options: ``convention`` ("uniform" | "fairseq"), ``prior`` (length-V probabilities),
            ``confidence_penalty`` (beta >= 0), ``ignore_index`` (-100), ``shift_labels`` (True for causal LMs,
            whose logits at t predict the label at t + 1).

    The returned loss is ``sum / num_items_in_batch`` so HF's gradient accumulation is exact. Seq2seq models
    need ``decoder_input_ids`` in the batch, because the Trainer removes ``labels`` before the forward pass:
    use ``DataCollatorForSeq2Seq(tokenizer, model=model)``.

    Example:
        >>> import torch
        >>> loss_func = label_smoothing_loss_func(0.1)
        >>> logits, labels = torch.randn(2, 3, 5), torch.tensor([[1, 2, -100], [0, 4, 3]])
        >>> loss = loss_func({"logits": logits}, labels)
        >>> ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), label_smoothing=0.1)
        >>> bool(torch.isclose(loss, ref))
        True
    """
    return LabelSmoothingLossFunc(alpha, **options)


# --------------------------------------------------------------------------------------------------------------
# Arguments


@dataclass
class LabelSmoothingSeq2SeqTrainingArguments(Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` plus ls-seq's loss options. Alpha stays ``label_smoothing_factor``."""

    label_smoothing_convention: str = field(
        default="uniform",
        metadata={
            "help": "'uniform': target (1 - a) onehot + a/V (paper, PyTorch); "
            "'fairseq': 1 - a on the true class, a/(V - 1) on each other class.",
            "choices": list(CONVENTIONS),
        },
    )
    label_smoothing_prior: str = field(
        default="uniform",
        metadata={
            "help": "Distribution the smoothing mass goes to: 'uniform', 'unigram' (estimated from the training "
            "labels) or a path to a JSON list / .pt tensor of V probabilities. Needs convention 'uniform'."
        },
    )
    unigram_prior_smoothing: float = field(
        default=1.0, metadata={"help": "Pseudo-count added to every class when estimating the unigram prior."}
    )
    confidence_penalty: float = field(
        default=0.0,
        metadata={"help": "beta of the confidence penalty -beta * H(p) (Pereyra et al. 2017) added to the loss."},
    )
    fused_linear_loss: bool = field(
        default=False,
        metadata={
            "help": "Compute lm_head and the loss in chunks (ls_seq.functional.fused) so the (tokens x V) logits "
            "are never stored. Single process only; `nll_loss` is not logged on this path."
        },
    )
    fused_chunk_size: int | None = field(
        default=None, metadata={"help": "Tokens per chunk of the fused loss (None: its default)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_alpha(self.label_smoothing_factor, "label_smoothing_factor", allow_one=False)
        check_choice(self.label_smoothing_convention, "label_smoothing_convention", CONVENTIONS)
        prior = self.label_smoothing_prior
        if prior not in PRIOR_CHOICES and not os.path.isfile(str(prior)):
            raise ValueError(
                f"`label_smoothing_prior` must be one of {PRIOR_CHOICES} or the path of an existing file, got {prior!r}"
            )
        if prior != "uniform" and self.label_smoothing_convention != "uniform":
            raise ValueError(
                "`label_smoothing_prior` other than 'uniform' needs label_smoothing_convention='uniform', "
                f"got {self.label_smoothing_convention!r}"
            )
        _check_beta(self.unigram_prior_smoothing, "unigram_prior_smoothing")
        _check_beta(self.confidence_penalty, "confidence_penalty")
        if self.fused_linear_loss and self.confidence_penalty:
            raise ValueError("`confidence_penalty` needs the full logits; it cannot be combined with fused_linear_loss=True")
        if self.fused_chunk_size is not None:
            check_positive_int(self.fused_chunk_size, "fused_chunk_size")


# --------------------------------------------------------------------------------------------------------------
# Trainer


def _output_size(model: nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


class LabelSmoothingSeq2SeqTrainer(Seq2SeqTrainer):
    """``Seq2SeqTrainer`` that trains with ls-seq's label-smoothed loss and logs ``nll_loss`` beside ``loss``.

    Alpha is ``args.label_smoothing_factor`` (in [0, 1)), so existing configs keep working. With
    :class:`LabelSmoothingSeq2SeqTrainingArguments` the convention, prior, confidence penalty and fused loss
    are configurable; plain ``Seq2SeqTrainingArguments`` means the uniform convention.

    Args:
        *args, **kwargs: those of ``Seq2SeqTrainer`` (``compute_loss_func`` is not allowed: this trainer is
            the loss).
        prior: an explicit length-V smoothing prior (tensor), for when it does not come from
            ``args.label_smoothing_prior`` (giving both is a ``ValueError``).

    The loss of a micro-batch is ``sum of token losses / num_items_in_batch`` (all tokens of the accumulated
    batch on all ranks), times the number of processes because DDP averages gradients over ranks -- the same
    scaling HF applies to losses normalised by ``num_items_in_batch``. One optimizer step with batch 16 then
    equals one with batch 4 and 4 accumulation steps.

    Example:
        >>> trainer = LabelSmoothingSeq2SeqTrainer(  # doctest: +SKIP
        ...     model=model, args=LabelSmoothingSeq2SeqTrainingArguments("out", label_smoothing_factor=0.1),
        ...     train_dataset=train, data_collator=DataCollatorForSeq2Seq(tok, model=model))
    """

    def __init__(self, *args: Any, prior: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.compute_loss_func is not None:
            raise ValueError(
                "LabelSmoothingSeq2SeqTrainer computes its own loss; drop `compute_loss_func`, or use a plain "
                "Seq2SeqTrainer with compute_loss_func=ls_seq.label_smoothing_loss_func(...)"
            )
        a = self.args
        alpha = check_alpha(a.label_smoothing_factor, "label_smoothing_factor", allow_one=False)
        self.fused_linear_loss = bool(getattr(a, "fused_linear_loss", False))
        loss = LabelSmoothingLossFunc(
            alpha,
            convention=getattr(a, "label_smoothing_convention", "uniform"),
            prior=self._resolve_prior(prior),
            confidence_penalty=getattr(a, "confidence_penalty", 0.0),
            shift_labels=False,
        )
        # Replaces HF's LabelSmoother: Seq2SeqTrainer.prediction_step (predict_with_generate) calls it for the
        # evaluation loss. Also set as compute_loss_func, the public switch that makes the Trainer count
        # num_items_in_batch for every model (it otherwise counts only for models taking **kwargs).
        self.label_smoother = loss
        self.compute_loss_func = loss
        self._fused_checked = False
        # Sum over the micro-batches since the last training log of nll_sum / (the loss's own divisor): the NLL
        # term of the logged loss, averaged the same way as HF averages `loss` (see `log`).
        self._nll_share: torch.Tensor | None = None
        self._nll_share_is_global = True
        self._nll_first_step = 0

    @property
    def loss_fn(self) -> LabelSmoothingLossFunc:
        """The :class:`LabelSmoothingLossFunc` this trainer trains with."""
        return self.label_smoother

    def _resolve_prior(self, prior: torch.Tensor | None) -> torch.Tensor | None:
        choice = getattr(self.args, "label_smoothing_prior", "uniform")
        if prior is not None and choice != "uniform":
            raise ValueError(
                f"give the prior once: either `prior=` or args.label_smoothing_prior (got {choice!r}), not both"
            )
        vocab = _output_size(self.model)
        if prior is not None:
            return check_prior(prior, vocab)
        if choice == "uniform":
            return None
        if choice == "unigram":
            if self.train_dataset is None:
                raise ValueError("label_smoothing_prior='unigram' is estimated from `train_dataset`, which is None")
            return estimate_unigram_prior(
                self.train_dataset,
                vocab,
                smoothing=getattr(self.args, "unigram_prior_smoothing", 1.0),
                progress=self.is_local_process_zero(),  # every process counts the same labels; one bar
            )
        return check_prior(_load_prior_file(choice), vocab, name="label_smoothing_prior")

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if inputs.get("labels") is None:
            raise ValueError("LabelSmoothingSeq2SeqTrainer needs `labels` in every batch; this batch has none")
        if model.training:
            self._check_ddp_wrapped(model)
        inputs = dict(inputs)  # never edit the caller's batch
        labels = inputs.pop("labels")
        unwrapped = self.accelerator.unwrap_model(model)
        inputs = teacher_forcing_inputs(unwrapped, inputs, labels)
        shift = not getattr(getattr(unwrapped, "config", None), "is_encoder_decoder", True)
        if self.fused_linear_loss and model.training:
            loss_sum, n_tokens, outputs = self._fused_loss_sum(model, unwrapped, inputs, labels)
            nll_sum = None
        else:
            outputs = model(**inputs)
            logits = logits_of(outputs)
            if shift:  # causal LM: logits at t predict the label at t + 1
                logits, labels = logits[..., :-1, :], labels[..., 1:]
            loss_sum, nll_sum, n_tokens = self.loss_fn.sums(logits, labels)
        denom = torch.as_tensor(n_tokens if num_items_in_batch is None else num_items_in_batch, device=loss_sum.device)
        denom = denom.clamp_min(1).to(loss_sum.dtype)
        loss = loss_sum / denom
        global_count = self.args.average_tokens_across_devices and num_items_in_batch is not None
        if model.training and nll_sum is not None:
            share = nll_sum.float() / denom
            if self._nll_share is None:  # first micro-batch since the last log: remember where the interval starts
                self._nll_share, self._nll_first_step = share, self.state.global_step
            else:
                self._nll_share = self._nll_share + share
            self._nll_share_is_global = global_count
        if global_count:
            # num_items_in_batch counted the tokens of every rank while DDP averages gradients over ranks;
            # the same correction as Trainer.compute_loss.
            scale = self.accelerator.num_processes // self.get_tp_size()
            loss = loss * (scale if self.args.n_gpu <= 1 else self.args.n_gpu)
        # Normalised by the whole accumulated batch: training_step must not divide by the accumulation steps again.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        return (loss, outputs) if return_outputs else loss

    def _check_ddp_wrapped(self, model: nn.Module) -> None:
        """Refuse to train an unwrapped model under DDP: its gradients would never be all-reduced.

        transformers 5.24 leaves the model unwrapped for training when ``evaluate()`` ran before ``train()``
        under several processes; the ranks then drift apart silently.
        """
        if self.accelerator.num_processes > 1 and self.accelerator.distributed_type in _DDP_TYPES:
            if not isinstance(model, nn.parallel.DistributedDataParallel):
                raise RuntimeError(
                    f"training step under {self.accelerator.num_processes} processes with a model not wrapped in "
                    "DistributedDataParallel, so gradients would not be synchronised (transformers does this when "
                    "evaluate() runs before train()); use eval_on_start=True instead of an evaluate() call before train()"
                )

    def _fused_loss_sum(
        self, model: nn.Module, unwrapped: nn.Module, inputs: dict[str, Any], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Loss sum with the output layer fused into the loss: the (tokens, V) logits are never stored.

        ``unwrapped`` is ``model`` without its accelerate/DDP wrapper."""
        from ls_seq.functional.fused import fused_linear_label_smoothed_cross_entropy

        if unwrapped is not model:
            # Calling a submodule bypasses DDP's forward, whose hooks all-reduce the gradients.
            raise ValueError(
                "fused_linear_loss=True runs the model's base without its lm_head, which bypasses the "
                f"{type(model).__name__} wrapper; it is supported in a single process only"
            )
        base = unwrapped.base_model
        head = unwrapped.get_output_embeddings()
        if base is unwrapped or head is None:
            raise ValueError(
                f"fused_linear_loss=True needs a model with a base model and an output layer; {type(unwrapped).__name__} has none"
            )
        outputs = base(**inputs)
        hidden = outputs[0]  # (B, T, d)
        bias = getattr(head, "bias", None)
        final_bias = getattr(unwrapped, "final_logits_bias", None)  # Marian/BART: (1, V) buffer
        if final_bias is not None:
            bias = final_bias.reshape(-1) if bias is None else bias + final_bias.reshape(-1)
        if not self._fused_checked:
            self._check_fused_head(unwrapped, inputs, head.weight, bias)
        fn = self.loss_fn
        loss_sum = fused_linear_label_smoothed_cross_entropy(
            hidden,
            head.weight,
            labels,
            fn.alpha,
            bias=bias,
            ignore_index=fn.ignore_index,
            prior=fn._prior_for(hidden.device),
            convention=fn.convention,
            reduction="sum",
            chunk_size=getattr(self.args, "fused_chunk_size", None),
        )
        return loss_sum, (labels != fn.ignore_index).sum(), outputs

    def _check_fused_head(self, model, inputs, weight, bias) -> None:
        """Once: the model's logits must be ``hidden @ W.T + b`` (T5, e.g., rescales hidden first)."""
        first = {k: v[:1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in inputs.items()}
        was_training = model.training
        model.eval()  # same (no) dropout in both passes
        try:
            with torch.no_grad():
                full = logits_of(model(**first)).float()  # (1, T, V)
                hidden = model.base_model(**first)[0].float()  # (1, T, d)
                mine = torch.nn.functional.linear(hidden, weight.float(), None if bias is None else bias.float())
        finally:
            model.train(was_training)
        if not torch.allclose(full, mine, rtol=1e-3, atol=1e-3):
            raise ValueError(
                f"fused_linear_loss=True: {type(model).__name__}'s logits are not output_layer(base_model(...)[0]) "
                "+ final_logits_bias, so the fused loss would differ from the model's; set fused_linear_loss=False"
            )
        self._fused_checked = True

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``nll_loss`` beside ``loss``, averaged exactly as HF averages ``loss``.

        Each optimizer step contributes its token-weighted mean NLL (the micro-batches' ``nll_sum`` over the
        step's token count on all ranks), and the log shows the mean over the steps since the last log, as
        for ``loss``. So with ``alpha = 0`` the two are equal, and ``loss - nll_loss`` is the smoothing term.
        """
        if "loss" in logs and self._nll_share is not None:
            share = self._nll_share
            self._nll_share = None
            if self.args.world_size > 1:  # every rank logs "loss" at the same step, so this collective matches
                # with a global token count each rank holds its part of the step mean; otherwise its own mean
                share = self.accelerator.reduce(share, reduction="sum" if self._nll_share_is_global else "mean")
            steps = max(self.state.global_step - self._nll_first_step, 1)
            logs["nll_loss"] = float(share) / steps
        super().log(logs, start_time)
