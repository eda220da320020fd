"""HuggingFace Trainers that train with ls-seq's label-smoothed loss, exact for every model family.

* :class:`LabelSmoothingTrainer` (a ``Trainer``): causal LMs (GPT-2, Llama, Qwen, Mistral, ...) and any
  model with logits; :class:`LabelSmoothingSeq2SeqTrainer` (a ``Seq2SeqTrainer``): encoder-decoders (Marian,
  BART, T5). Both are :class:`LabelSmoothingTrainerMixin` over the HF class, so one implementation.
* :class:`LabelSmoothingTrainingArguments` / :class:`LabelSmoothingSeq2SeqTrainingArguments`: HF's
  arguments plus the options HF has no field for. Alpha stays ``label_smoothing_factor``.

What the trainers do that HF's do not:

* **The loss of every family, exactly.** How logits align with labels comes from
  :mod:`ls_seq.hf.model_io` (one shift, written once). Each micro-batch returns ``sum of token losses / N``,
  where ``N`` is the number of labels *scored* in the whole accumulated batch on all ranks, recounted by
  the trainer: transformers' own ``num_items_in_batch`` counts the unshifted labels for models whose
  ``loss_type`` is not ``ForCausalLM`` (``GPT2LMHeadModel``), which scales their loss by ``(N - B) / N``.
  So one optimizer step over batch 16 equals one over 4 x 4 accumulation steps, or 2 processes x 8.
* **The fused loss inside the model's forward** (``fused_linear_loss=True``, :mod:`ls_seq.hf.fused_head`):
  the ``(tokens, V)`` logits are never built, under DDP too, with gradient checkpointing and peft.
* **``nll_loss``** is logged beside ``loss``, averaged the same way.
* **Calibration inside the evaluation pass**: a :class:`ls_seq.CalibrationCallback` among the trainer's
  callbacks is fed the logits of the Trainer's own evaluation loop (no second forward), and its metrics
  (``eval_ece``, ...) are part of the evaluation metrics every logger receives.
* **A non-finite training loss stops the run** with an error naming the step (HF's
  ``logging_nan_inf_filter`` would only hide it from the log).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

from ls_seq.checks import check_alpha, check_choice, check_nonnegative, check_positive_int, check_prior
from ls_seq.errors import NonFiniteLossError
from ls_seq.functional.losses import CONVENTIONS
from ls_seq.hf.callbacks import CalibrationCallback
from ls_seq.hf.compute_metrics import require_tokens
from ls_seq.hf.distributed import drop_rows, real_rows
from ls_seq.hf.loss_func import LabelSmoothingLossFunc
from ls_seq.hf.model_io import ModelIO, logits_of, model_io_of
from ls_seq.hf.model_loss import ModelLoss, plain_cross_entropy
from ls_seq.prior import estimate_unigram_prior, load_prior_file
from ls_seq.rng import isolated_rng

__all__ = [
    "LabelSmoothingArgumentsMixin",
    "LabelSmoothingSeq2SeqTrainer",
    "LabelSmoothingSeq2SeqTrainingArguments",
    "LabelSmoothingTrainer",
    "LabelSmoothingTrainerMixin",
    "LabelSmoothingTrainingArguments",
    "NonFiniteLossError",
]

PRIOR_CHOICES = ("uniform", "unigram")
# accelerate's plain data-parallel modes, where the training model must be a DistributedDataParallel.
_DDP_TYPES = {
    getattr(DistributedType, name)
    for name in ("MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA", "MULTI_HPU")
    if hasattr(DistributedType, name)
}


# The mixins are used before an HF class in the bases; a type checker sees that class as their base, so that
# `self.args`, `super().evaluate()`, ... are checked against it (at run time the base is `object`).
if TYPE_CHECKING:
    _ArgumentsBase = TrainingArguments
    _TrainerBase = Trainer
else:
    _ArgumentsBase = _TrainerBase = object


# --------------------------------------------------------------------------------------------------------------
# Arguments


@dataclass
class LabelSmoothingArgumentsMixin(_ArgumentsBase):
    """The ls-seq fields of :class:`LabelSmoothingTrainingArguments` and :class:`LabelSmoothingSeq2SeqTrainingArguments`."""

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
    z_loss: float = field(
        default=0.0,
        metadata={"help": "z-loss coefficient: adds z_loss * logsumexp(logits)**2 per token (PaLM, OLMo), fused or not."},
    )
    fused_linear_loss: bool = field(
        default=False,
        metadata={
            "help": "Compute the output layer and the loss in chunks inside the model's forward "
            "(ls_seq.hf.fused_head), so the (tokens x V) logits are never stored; any number of processes."
        },
    )
    fused_chunk_size: int | None = field(
        default=None, metadata={"help": "Tokens per chunk of the fused loss (None: its default)."}
    )
    stop_on_nonfinite_loss: bool = field(
        default=True,
        metadata={"help": "Raise ls_seq.errors.NonFiniteLossError, naming the step, when a training loss is NaN or infinite."},
    )

    def _check_label_smoothing_arguments(self) -> None:
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
        check_nonnegative(self.unigram_prior_smoothing, "unigram_prior_smoothing")
        check_nonnegative(self.confidence_penalty, "confidence_penalty")
        check_nonnegative(self.z_loss, "z_loss")
        if self.fused_linear_loss and self.confidence_penalty:
            raise ValueError("`confidence_penalty` needs the full logits; it cannot be combined with fused_linear_loss=True")
        if self.fused_chunk_size is not None:
            check_positive_int(self.fused_chunk_size, "fused_chunk_size")


@dataclass
class LabelSmoothingTrainingArguments(LabelSmoothingArgumentsMixin, TrainingArguments):
    """``TrainingArguments`` plus ls-seq's loss options (see :class:`LabelSmoothingArgumentsMixin`).

    Args:
        label_smoothing_convention: ``"uniform"``: target ``(1 - a) onehot + a/V`` (the paper, PyTorch);
            ``"fairseq"``: ``1 - a`` on the true class, ``a/(V - 1)`` on each other class.
        label_smoothing_prior: where the smoothing mass goes: ``"uniform"``, ``"unigram"`` (estimated from the
            training labels, :func:`ls_seq.estimate_unigram_prior`) or the path of a JSON list / ``.pt`` tensor
            of V probabilities. Anything but ``"uniform"`` needs ``label_smoothing_convention="uniform"``.
        unigram_prior_smoothing: pseudo-count added to every class when estimating the unigram prior.
        confidence_penalty: ``beta >= 0`` of the confidence penalty ``-beta * H(p)`` (Pereyra et al. 2017).
        z_loss: ``>= 0``, adds ``z_loss * logsumexp(logits)**2`` per token (PaLM, OLMo), fused or not.
        fused_linear_loss: compute the output layer and the loss in chunks inside the model's forward
            (:mod:`ls_seq.hf.fused_head`), so the ``(tokens, V)`` logits are never stored.
        fused_chunk_size: tokens per chunk of the fused loss (None: its default).
        stop_on_nonfinite_loss: raise :class:`ls_seq.NonFiniteLossError`, naming the step, when a training loss
            is NaN or infinite.

    Every field of ``TrainingArguments`` is accepted as well (documented there); alpha is its
    ``label_smoothing_factor``, in ``[0, 1)``.

    Raises:
        ValueError: ``label_smoothing_factor`` is outside ``[0, 1)``, the convention is unknown, the prior is
            neither a choice nor an existing file (or is not uniform under the fairseq convention), a weight is
            negative, or ``confidence_penalty`` is combined with ``fused_linear_loss`` (it needs the full logits).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_label_smoothing_arguments()


@dataclass
class LabelSmoothingSeq2SeqTrainingArguments(LabelSmoothingArgumentsMixin, Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` plus ls-seq's loss options (see :class:`LabelSmoothingArgumentsMixin`).

    Args:
        label_smoothing_convention: ``"uniform"``: target ``(1 - a) onehot + a/V`` (the paper, PyTorch);
            ``"fairseq"``: ``1 - a`` on the true class, ``a/(V - 1)`` on each other class.
        label_smoothing_prior: where the smoothing mass goes: ``"uniform"``, ``"unigram"`` (estimated from the
            training labels, :func:`ls_seq.estimate_unigram_prior`) or the path of a JSON list / ``.pt`` tensor
            of V probabilities. Anything but ``"uniform"`` needs ``label_smoothing_convention="uniform"``.
        unigram_prior_smoothing: pseudo-count added to every class when estimating the unigram prior.
        confidence_penalty: ``beta >= 0`` of the confidence penalty ``-beta * H(p)`` (Pereyra et al. 2017).
        z_loss: ``>= 0``, adds ``z_loss * logsumexp(logits)**2`` per token (PaLM, OLMo), fused or not.
        fused_linear_loss: compute the output layer and the loss in chunks inside the model's forward
            (:mod:`ls_seq.hf.fused_head`), so the ``(tokens, V)`` logits are never stored.
        fused_chunk_size: tokens per chunk of the fused loss (None: its default).
        stop_on_nonfinite_loss: raise :class:`ls_seq.NonFiniteLossError`, naming the step, when a training loss
            is NaN or infinite.

    Every field of ``Seq2SeqTrainingArguments`` is accepted as well (documented there); alpha is its
    ``label_smoothing_factor``, in ``[0, 1)``.

    Raises:
        ValueError: ``label_smoothing_factor`` is outside ``[0, 1)``, the convention is unknown, the prior is
            neither a choice nor an existing file (or is not uniform under the fairseq convention), a weight is
            negative, or ``confidence_penalty`` is combined with ``fused_linear_loss`` (it needs the full logits).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_label_smoothing_arguments()


_OPTION_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LabelSmoothingArgumentsMixin)}


def _option(args: Any, name: str) -> Any:
    """An ls-seq option from any TrainingArguments: its value, or the default for plain HF arguments."""
    return getattr(args, name, _OPTION_DEFAULTS[name])


# --------------------------------------------------------------------------------------------------------------
# Trainer


class _GenerateEvalLoss:
    """What ``Seq2SeqTrainer.prediction_step`` calls as ``label_smoother(outputs, labels)`` when it generates:
    ls-seq's loss on the teacher-forced logits (which also feed the in-loop calibration and the evaluation
    loss). The model was given the labels there, so a model that adds router losses has them in its loss."""

    def __init__(self, trainer: LabelSmoothingTrainerMixin) -> None:
        self._trainer = trainer

    def __call__(self, outputs: Any, labels: torch.Tensor, shift_labels: bool = False, **_: Any) -> torch.Tensor:
        trainer = self._trainer
        logits = logits_of(outputs)
        scored = trainer.io.scored_labels(labels, None, trainer.loss_fn.ignore_index)
        scored = drop_rows(scored, real_rows(scored.shape[0], scored.device), trainer.loss_fn.ignore_index)
        loss_sum, _nll_sum, n_tokens = trainer.loss_fn.sums(logits, scored)
        loss = loss_sum / n_tokens.clamp_min(1).to(loss_sum.dtype)
        own = outputs.get("loss") if isinstance(outputs, Mapping) else None
        extras = torch.zeros((), device=loss.device)
        if own is not None:  # the model's other terms: its loss minus the plain cross-entropy of its logits
            ce = plain_cross_entropy(logits, scored, trainer.loss_fn.ignore_index)
            if not torch.equal(own, ce):
                extras = (own - ce).detach().to(loss.device)
        trainer._feed_calibration(logits, scored)
        trainer._add_eval_sums(loss_sum, extras, n_tokens)
        return loss + extras


class LabelSmoothingTrainerMixin(_TrainerBase):
    """The label-smoothing implementation shared by :class:`LabelSmoothingTrainer` and
    :class:`LabelSmoothingSeq2SeqTrainer`; put it before a ``Trainer`` class in the bases of your own.

    Args:
        *args: those of the HF trainer (``compute_loss_func`` is not allowed: this trainer is the loss).
        prior: an explicit length-V smoothing prior (tensor), for when it does not come from
            ``args.label_smoothing_prior`` (giving both is a ``ValueError``).
        shift_labels: how the logits align with the labels, for a model ls-seq cannot place from its class
            (True: logits at t score the label at t + 1), the same word as every other entry point.
        **kwargs: the keyword arguments of the HF trainer.

    The loss of a micro-batch is ``sum of token losses / N`` with ``N`` the scored labels of the accumulated
    batch on all ranks (:meth:`get_batch_samples`), times the number of processes because DDP averages
    gradients over ranks (HF's own scaling for losses normalised by ``num_items_in_batch``).
    """

    io: ModelIO
    loss_fn: LabelSmoothingLossFunc

    def __init__(self, *args: Any, prior: torch.Tensor | None = None, shift_labels: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.compute_loss_func is not None:
            raise ValueError(
                f"{type(self).__name__} computes its own loss; drop `compute_loss_func`, or use a plain Trainer "
                "with compute_loss_func=ls_seq.label_smoothing_loss_func(..., model=model)"
            )
        if len(self.label_names) != 1:
            raise ValueError(f"`label_names` must name exactly one label tensor (the token labels), got {self.label_names}")
        self.label_key = self.label_names[0]
        # compute_loss normalises by num_items_in_batch itself (loss_is_scaled_for_ga for transformers 5);
        # transformers 4.x's training_step reads this flag instead, and would divide by the accumulation steps again.
        self.model_accepts_loss_kwargs = True
        a = self.args
        alpha = check_alpha(a.label_smoothing_factor, "label_smoothing_factor", allow_one=False)
        assert self.model is not None  # Trainer.__init__ built it (or model_init did), or raised
        self.io = model_io_of(self.model, shift_labels=shift_labels)
        self.loss_fn = LabelSmoothingLossFunc(
            alpha,
            convention=_option(a, "label_smoothing_convention"),
            prior=self._resolve_prior(prior),
            confidence_penalty=_option(a, "confidence_penalty"),
            z_loss=_option(a, "z_loss"),
            shift_labels=shift_labels,
            model=self.model,
        )
        self.fused_linear_loss = bool(_option(a, "fused_linear_loss"))
        if self.fused_linear_loss:
            self.io.output_layer()  # a model without a fusable head is refused here, not at the first step
        self.model_loss = ModelLoss(self.io, self.loss_fn)
        # Inside evaluation_loop: (loss sum, tokens, batches) over the evaluation set so far, float64; else None.
        self._eval_sums: torch.Tensor | None = None
        # Replaces HF's LabelSmoother, which Seq2SeqTrainer.prediction_step calls when it generates.
        self.label_smoother = _GenerateEvalLoss(self)  # type: ignore[assignment]  # called like a LabelSmoother, not one
        # Sum over the micro-batches since the last training log of nll_sum / (the loss's own divisor): the NLL
        # term of the logged loss, averaged the same way as HF averages `loss` (see `log`).
        self._nll_share: torch.Tensor | None = None
        self._nll_share_is_global = True
        self._nll_first_step = 0
        self._evaluating = False
        self._calibration_meters: list[Any] = []

    def _resolve_prior(self, prior: torch.Tensor | None) -> torch.Tensor | None:
        choice = _option(self.args, "label_smoothing_prior")
        if prior is not None and choice != "uniform":
            raise ValueError(f"give the prior once: either `prior=` or args.label_smoothing_prior (got {choice!r}), not both")
        vocab = self.io.output_size
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
                smoothing=_option(self.args, "unigram_prior_smoothing"),
                label_key=self.label_names[0],
                progress=self.is_local_process_zero(),  # every process counts the same labels; one bar
            )
        return check_prior(load_prior_file(choice), vocab, name="label_smoothing_prior")

    # ---- the token count ---------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        """HF's micro-batches of one optimizer step, with ``num_items_in_batch`` recounted as the labels the
        loss scores (summed over ranks when ``average_tokens_across_devices``, as HF does)."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = [
            self.io.count(batch[self.label_key], batch.get("shift_labels"), self.loss_fn.ignore_index).to(device)
            for batch in batch_samples
            if batch.get(self.label_key) is not None
        ]
        if not counts:
            return batch_samples, None
        n_items = torch.stack(counts).sum()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            n_items = self.accelerator.gather(n_items).sum()
        elif self.args.n_gpu > 1:  # torch DataParallel: HF's approximation, kept for parity
            n_items = n_items // self.args.n_gpu
        for size in ("get_tp_size", "get_cp_size", "get_sp_size"):  # ranks that share one batch count it once
            ranks = getattr(self, size)() if hasattr(self, size) else 1
            if ranks != 1:
                n_items = n_items / ranks
        return batch_samples, n_items

    # ---- the loss ----------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)  # never edit the caller's batch
        labels = inputs.pop(self.label_key, None)
        if labels is None:
            raise ValueError(
                f"{type(self).__name__} needs `{self.label_key}` (TrainingArguments.label_names) in every batch; "
                f"this batch has {sorted(inputs)}"
            )
        training = model.training
        if training:
            self._check_ddp_wrapped(model)
        shift_labels = inputs.get("shift_labels")
        forward_inputs = self.io.teacher_forcing_inputs(inputs, labels)
        # In the evaluation loop each batch is scored by its own tokens: HF's prediction_step passes a count of its
        # own (the unshifted labels for GPT-2), and evaluation_loop sums the whole set (the exact token mean).
        in_eval_loop = self._eval_sums is not None
        denominator = None if in_eval_loop else num_items_in_batch
        keep = real_rows(labels.shape[0], labels.device) if in_eval_loop else None
        fused = self.fused_linear_loss and training and torch.is_grad_enabled()
        chunk_size = _option(self.args, "fused_chunk_size")
        if self.model_loss.needs_probe(fused):
            self.model_loss.probe(model, forward_inputs, labels, shift_labels)
        with self.model_loss.forward(
            labels, shift_labels=shift_labels, denominator=denominator, keep_rows=keep, fused=fused, chunk_size=chunk_size
        ) as record:
            outputs = model(**self.model_loss.model_inputs(forward_inputs, record))
        loss = self.model_loss.total(outputs, record)
        assert record.loss_sum is not None and record.nll_sum is not None and record.n_tokens is not None  # total() scored
        if training:
            denom = torch.as_tensor(record.n_tokens if denominator is None else denominator, device=loss.device)
            share = record.nll_sum.float() / denom.clamp_min(1).float()
            if self._nll_share is None:  # first micro-batch since the last log: remember where the interval starts
                self._nll_share, self._nll_first_step = share, self.state.global_step
            else:
                self._nll_share = self._nll_share + share
            self._nll_share_is_global = self.args.average_tokens_across_devices and num_items_in_batch is not None
        if in_eval_loop:
            assert record.logits is not None and record.scored is not None  # evaluation is never fused
            self._feed_calibration(record.logits, record.scored)
            self._add_eval_sums(record.loss_sum, record.extras, record.n_tokens)
        elif self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counted the tokens of every rank while DDP averages gradients over ranks;
            # the same correction as Trainer.compute_loss (which applies it to the model's whole loss, too).
            scale = self.accelerator.num_processes // self.get_tp_size()
            loss = loss * (scale if self.args.n_gpu <= 1 else self.args.n_gpu)
        # Normalised by the whole accumulated batch: training_step must not divide by the accumulation steps again.
        self.loss_is_scaled_for_ga = denominator is not None
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        # One host read per micro-batch; HF's logging_nan_inf_filter (on by default) already reads it.
        if _option(self.args, "stop_on_nonfinite_loss") and not bool(torch.isfinite(loss).all()):
            step = self.state.global_step + 1
            raise NonFiniteLossError(
                f"non-finite training loss {float(loss)} at step {step} (epoch {self.state.epoch or 0:.3f}); "
                "stopped before the optimizer applied it. Lower the learning rate, check the data of this step, "
                "or set stop_on_nonfinite_loss=False",
                step=step,
            )
        return loss

    def _check_ddp_wrapped(self, model: nn.Module) -> None:
        """Refuse to train an unwrapped model under DDP: its gradients would never be all-reduced.

        transformers 5.24 leaves the model unwrapped for training when ``evaluate()`` ran before ``train()``
        under several processes; the ranks then drift apart silently.
        """
        distributed = self.accelerator.num_processes > 1 and self.accelerator.distributed_type in _DDP_TYPES
        if distributed and not isinstance(model, nn.parallel.DistributedDataParallel):
            raise RuntimeError(
                f"training step under {self.accelerator.num_processes} processes with a model not wrapped in "
                "DistributedDataParallel, so gradients would not be synchronised (transformers does this when "
                "evaluate() runs before train()); use eval_on_start=True instead of an evaluate() call before train()"
            )

    # ---- calibration inside the evaluation loop ---------------------------------------------------------

    def _calibration_callbacks(self) -> list[CalibrationCallback]:
        return [cb for cb in self.callback_handler.callbacks if isinstance(cb, CalibrationCallback)]

    def _feed_calibration(self, logits: torch.Tensor, scored: torch.Tensor) -> None:
        """Add an evaluation batch to the calibration callbacks' metrics; ``scored`` already has accelerate's
        repeated rows dropped (:func:`ls_seq.hf.distributed.drop_rows`), as the evaluation loss does."""
        for meter in self._calibration_meters:
            meter.update(logits.detach(), scored)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """HF's ``evaluate``, leaving the training random streams untouched (:func:`ls_seq.rng.isolated_rng`):
        a run that evaluates during training trains bit for bit the model a run without evaluation trains."""
        self._evaluating = True
        try:
            with isolated_rng():
                return super().evaluate(*args, **kwargs)
        finally:
            self._evaluating = False

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        self._evaluating = True
        try:
            return super().predict(*args, **kwargs)
        finally:
            self._evaluating = False

    def _add_eval_sums(self, loss_sum: torch.Tensor, extras: torch.Tensor | None, n_tokens: torch.Tensor) -> None:
        """Add one evaluation batch to the loop's sums: its token losses, plus the model's other terms weighted
        by the batch's tokens (so the loss is the token-weighted mean of the per-batch losses, and exactly the
        token mean of the smoothed loss for a model with no other terms)."""
        if self._eval_sums is None:
            return
        loss_sum = loss_sum.detach().double()
        if extras is not None:
            loss_sum = loss_sum + extras.double() * n_tokens
        self._eval_sums += torch.stack([loss_sum, n_tokens.double(), torch.ones_like(loss_sum)]).to(self._eval_sums.device)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """HF's loop, with ``<prefix>_loss`` the exact token mean over the whole set (HF averages per-batch means,
        which moves with the batch size), summed over processes without accelerate's repeated rows. With
        calibration callbacks (``evaluate()``, ``predict()``) its logits also feed their metrics, and their
        results join the loop's metrics, so the Trainer logs them with the rest."""
        callbacks = self._calibration_callbacks() if self._evaluating else []
        self._calibration_meters = [cb.begin_in_loop(self) for cb in callbacks]
        self._eval_sums = torch.zeros(3, dtype=torch.float64, device=self.args.device)  # filled by _add_eval_sums
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        finally:
            meters, self._calibration_meters = self._calibration_meters, []
            sums, self._eval_sums = self._eval_sums, None
        assert output.metrics is not None  # HF's evaluation_loop always returns a metrics dict
        if self.args.world_size > 1:  # every process runs the loop: a collective
            sums = self.accelerator.reduce(sums, reduction="sum")
        loss_sum, n_tokens, batches = (float(v) for v in sums.cpu())
        if not output.num_samples or (batches and not n_tokens):
            require_tokens(0, metric_key_prefix)
        if batches:
            output.metrics[f"{metric_key_prefix}_loss"] = loss_sum / n_tokens
        for cb, meter in zip(callbacks, meters):
            output.metrics.update(cb.end_in_loop(meter, metric_key_prefix, self.state))  # every process: a collective
        return output

    # ---- logging -----------------------------------------------------------------------------------------

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


class LabelSmoothingTrainer(LabelSmoothingTrainerMixin, Trainer):
    """A ``Trainer`` that trains with ls-seq's label-smoothed loss: causal LMs and any model with logits.

    Alpha is ``args.label_smoothing_factor`` (in [0, 1)); with :class:`LabelSmoothingTrainingArguments` the
    convention, prior, confidence penalty and fused loss are configurable (plain ``TrainingArguments`` mean
    the uniform convention). See :class:`LabelSmoothingTrainerMixin` and the module docstring.

    Args:
        *args: those of ``Trainer`` (``model``, ``args``, ``data_collator``, ``train_dataset``, ...);
            ``compute_loss_func`` is not allowed: this trainer is the loss.
        prior: an explicit length-V smoothing prior (tensor), for when it does not come from
            ``args.label_smoothing_prior`` (giving both is a ``ValueError``).
        shift_labels: how the logits align with the labels, for a model ls-seq cannot place from its class
            (True: logits at t score the label at t + 1), the same word as every other entry point.
        **kwargs: the keyword arguments of ``Trainer``.

    Raises:
        ValueError: ``compute_loss_func`` is given, ``label_names`` does not name exactly one tensor, the prior
            is given twice, does not match the model's output size or cannot be estimated (no ``train_dataset``),
            or the model's alignment cannot be told; with ``fused_linear_loss``, a model without a fusable head.

    Examples:
        >>> trainer = LabelSmoothingTrainer(  # doctest: +SKIP
        ...     model=AutoModelForCausalLM.from_pretrained("gpt2"),
        ...     args=LabelSmoothingTrainingArguments("out", label_smoothing_factor=0.1, fused_linear_loss=True),
        ...     train_dataset=train, eval_dataset=val, data_collator=collator,
        ...     callbacks=[CalibrationCallback(temperatures=[0.8, 1.0, 1.25])])
    """


class LabelSmoothingSeq2SeqTrainer(LabelSmoothingTrainerMixin, Seq2SeqTrainer):
    """A ``Seq2SeqTrainer`` that trains with ls-seq's label-smoothed loss (Marian, BART, T5, ...).

    Same implementation as :class:`LabelSmoothingTrainer`; ``predict_with_generate`` evaluation scores the
    teacher-forced logits with the same loss. Use ``DataCollatorForSeq2Seq(tokenizer, model=model)``.

    Args:
        *args: those of ``Seq2SeqTrainer`` (``model``, ``args``, ``data_collator``, ``train_dataset``, ...);
            ``compute_loss_func`` is not allowed: this trainer is the loss.
        prior: an explicit length-V smoothing prior (tensor), for when it does not come from
            ``args.label_smoothing_prior`` (giving both is a ``ValueError``).
        shift_labels: how the logits align with the labels, for a model ls-seq cannot place from its class
            (True: logits at t score the label at t + 1), the same word as every other entry point.
        **kwargs: the keyword arguments of ``Seq2SeqTrainer``.

    Raises:
        ValueError: ``compute_loss_func`` is given, ``label_names`` does not name exactly one tensor, the prior
            is given twice, does not match the model's output size or cannot be estimated (no ``train_dataset``),
            or the model's alignment cannot be told; with ``fused_linear_loss``, a model without a fusable head.

    Examples:
        >>> trainer = LabelSmoothingSeq2SeqTrainer(  # doctest: +SKIP
        ...     model=model, args=LabelSmoothingSeq2SeqTrainingArguments("out", label_smoothing_factor=0.1),
        ...     train_dataset=train, data_collator=DataCollatorForSeq2Seq(tok, model=model))
    """
