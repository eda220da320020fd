"""``ls_seq_label_smoothed_cross_entropy``: fairseq's criterion with ls-seq's losses and token calibration.

A minimal subclass of fairseq's ``label_smoothed_cross_entropy``: the same logging outputs, the same
``loss``/``nll_loss``/``ppl`` in the logs (base 2, as fairseq logs them), and

* the loss of :func:`ls_seq.label_smoothed_cross_entropy` (one fused pass over the decoder's logits) in either
  smoothing convention, with a uniform or unigram prior, plus an optional confidence penalty; or, with
  ``--ls-kernel fairseq``, fairseq's own ``label_smoothed_nll_loss`` on the log-probabilities, the same
  operations in the same order (bit-identical training with ``--ls-convention fairseq``; more memory);
* in validation, token calibration: per-bin sums in the logging outputs (``_calibration:*`` keys, float64,
  hidden from the log lines), summed across batches and workers by fairseq and turned into ``ece``, ``mce``,
  ``token_accuracy`` and ``mean_confidence`` (fractions, at T = 1) and, per temperature of ``--calibration-temperatures``, ``nll_T<t>`` (base 2, like ``nll_loss``) and
  ``ece_T<t>``, and ``best_nll_T`` / ``best_ece_T``, by ``log_derived``. The sums are exact under data
  parallelism and gradient accumulation: 2 workers log what 1 does.

This module is imported by fairseq through ``--user-dir`` (never write ``from __future__ import annotations``
here: fairseq reads the config's field types at runtime).
"""

import math
import os
from dataclasses import dataclass, field
from typing import List, Optional  # noqa: UP035  (the config's field: see below)

import torch
from fairseq import utils as fairseq_utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics

from ls_seq.checks import (
    check_alpha,
    check_choice,
    check_nonnegative,
    check_positive_int,
    check_prior,
    check_temperatures,
)
from ls_seq.functional.losses import CONVENTIONS, confidence_penalty_loss, label_smoothed_cross_entropy

from .calibration import STAT_NAMES, batch_sums, metrics_from_sums

__all__ = [
    "CRITERION_NAME",
    "LsSeqLabelSmoothedCrossEntropyConfig",
    "LsSeqLabelSmoothedCrossEntropyCriterion",
    "calibration_from_logging_outputs",
]

CRITERION_NAME = "ls_seq_label_smoothed_cross_entropy"
PRIOR_CHOICES = ("uniform", "unigram")
KERNELS = ("fused", "fairseq")
# Logging-output keys of the calibration sums: "_calibration:<stat>" for the scalars and
# "_calibration:<stat>@<T>" for the (n_bins,) sums and nll of temperature T. A leading "_" keeps fairseq
# from printing them; the temperature is in the key because fairseq calls reduce_metrics on the class.
_PREFIX = "_calibration:"
_PER_TEMPERATURE = ("bin_count", "bin_confidence", "bin_correct", "nll_sum")
_LOG2 = math.log(2.0)


@dataclass
class LsSeqLabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    """fairseq's ``label_smoothed_cross_entropy`` options (``--label-smoothing`` is ``alpha``) and ls-seq's."""

    # fairseq reads its choices from these ChoiceEnum(...) annotations, which are no types to a type checker
    ls_convention: ChoiceEnum(list(CONVENTIONS)) = field(  # type: ignore[valid-type]
        default="uniform",
        metadata={
            "help": "meaning of --label-smoothing a: 'uniform' (the paper, PyTorch): target (1 - a) onehot + a q; "
            "'fairseq': 1 - a on the true class, a / (V - 1) on each other class (fairseq's own criterion)"
        },
    )
    ls_kernel: ChoiceEnum(list(KERNELS)) = field(  # type: ignore[valid-type]
        default="fused",
        metadata={
            "help": "how the loss is computed: 'fused': ls-seq's single pass over the logits (the gradient "
            "softmax - target written once, no log-probabilities kept); 'fairseq': fairseq's own "
            "label_smoothed_nll_loss on the model's log-probabilities, the same operations in the same order, so "
            "with --ls-convention fairseq training is bit-identical to --criterion label_smoothed_cross_entropy "
            "(needs --ls-prior uniform)"
        },
    )
    ls_prior: str = field(
        default="uniform",
        metadata={
            "help": "distribution q the smoothing mass goes to: 'uniform', 'unigram' (token frequencies of the "
            "training split's targets) or the path of a JSON list / .pt tensor of V probabilities in the target "
            "dictionary's order; anything but 'uniform' needs --ls-convention uniform"
        },
    )
    ls_prior_smoothing: float = field(default=1.0, metadata={"help": "pseudo-count added to every class of the 'unigram' prior"})
    confidence_penalty: float = field(
        default=0.0, metadata={"help": "beta of the confidence penalty -beta * H(p) (Pereyra et al. 2017), >= 0"}
    )
    calibration_bins: int = field(default=15, metadata={"help": "equal-width confidence bins of the validation ECE"})
    # typing's Optional[List[...]], not `list[float] | None`: fairseq's argparse bridge recognises only those.
    calibration_temperatures: Optional[List[float]] = field(  # noqa: UP006, UP045
        default=None,
        metadata={
            "help": "comma-separated temperatures T > 0: validation logs nll_T<t> and ece_T<t> of softmax(z / T) "
            "at each (same pass) and best_nll_T / best_ece_T"
        },
    )


def _temperature_key(stat: str, temperature: float) -> str:
    return f"{_PREFIX}{stat}@{float(temperature)!r}"


@register_criterion(CRITERION_NAME, dataclass=LsSeqLabelSmoothedCrossEntropyConfig)
class LsSeqLabelSmoothedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """Label-smoothed cross-entropy computed by ls-seq, with token calibration in fairseq's validation logs.

    Every option is checked here, when fairseq builds the criterion, so bad input fails before training.
    Works on the decoder's output logits (``net_output[0]``); a decoder with an adaptive softmax has none
    and is refused.
    """

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        ls_convention="uniform",
        ls_kernel="fused",
        ls_prior="uniform",
        ls_prior_smoothing=1.0,
        confidence_penalty=0.0,
        calibration_bins=15,
        calibration_temperatures=None,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.alpha = check_alpha(label_smoothing, "label_smoothing", allow_one=False)
        self.convention = check_choice(str(ls_convention), "ls_convention", CONVENTIONS)
        self.confidence_penalty = check_nonnegative(confidence_penalty, "confidence_penalty")
        self.n_bins = check_positive_int(calibration_bins, "calibration_bins")
        grid = (
            [] if calibration_temperatures is None else check_temperatures(calibration_temperatures, "calibration_temperatures")
        )
        # T = 1 is always measured: it is the model's own calibration (ece, mce).
        self.temperatures = sorted(set(grid) | {1.0})
        self._temperatures = torch.tensor(self.temperatures, dtype=torch.float64)
        self.kernel = check_choice(str(ls_kernel), "ls_kernel", KERNELS)
        self.prior = self._build_prior(str(ls_prior), check_nonnegative(ls_prior_smoothing, "ls_prior_smoothing"))
        if self.kernel == "fairseq" and self.prior is not None:
            raise ValueError(f"`ls_kernel` 'fairseq' smooths towards the uniform distribution only; got --ls-prior {ls_prior!r}")
        # fairseq's formula puts eps / (V - 1) on every other class and 1 - eps on the label; the uniform
        # convention's alpha / V everywhere on top of (1 - alpha) onehot is the same target with eps = alpha (V - 1) / V.
        vocab = len(task.target_dictionary)
        self._fairseq_eps = self.alpha if self.convention == "fairseq" else self.alpha * (vocab - 1) / vocab
        self._prior_on: dict[torch.device, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------------------
    # Configuration

    def _build_prior(self, ls_prior: str, smoothing: float) -> torch.Tensor | None:
        """The smoothing distribution as a float64 ``(V,)`` tensor, or None for uniform."""
        if ls_prior == "uniform":
            return None
        if self.convention != "uniform":
            raise ValueError(
                f"`ls_prior` {ls_prior!r} needs --ls-convention uniform (a prior replaces its uniform q), "
                f"got --ls-convention {self.convention}"
            )
        vocab = len(self.task.target_dictionary)
        if ls_prior == "unigram":
            prior = self._unigram_prior(vocab, smoothing)
        else:
            from ls_seq.prior import load_prior_file

            if not os.path.isfile(ls_prior):
                raise ValueError(f"`ls_prior` must be one of {PRIOR_CHOICES} or the path of an existing file, got {ls_prior!r}")
            prior = load_prior_file(ls_prior)
        return check_prior(prior, vocab, name="ls_prior").double()

    def _unigram_prior(self, vocab: int, smoothing: float) -> torch.Tensor:
        """Token frequencies of the training split's targets (every token and ``</s>``), additively smoothed.

        Counted from the binarised training data (its first shard, when ``data`` lists several), not the
        dictionary: a ``--joined-dictionary`` counts the source side too, and fairseq's dictionary files do not
        keep the count of ``</s>``.
        """
        from ls_seq.prior import estimate_unigram_prior

        split = getattr(self.task.cfg, "train_subset", None) or "train"
        self.task.load_dataset(split, combine=False, epoch=1)
        targets = getattr(self.task.dataset(split), "tgt", None)
        if targets is None:
            raise ValueError(
                f"`ls_prior` 'unigram' needs a task whose '{split}' split has targets (a translation task); "
                "pass the path of a prior file instead"
            )
        pad = self.task.target_dictionary.pad()
        sequences = (targets[i] for i in range(len(targets)))
        return estimate_unigram_prior(sequences, vocab, ignore_index=pad, smoothing=smoothing, progress=False)

    def _prior_for(self, device: torch.device) -> torch.Tensor | None:
        if self.prior is None:
            return None
        if device not in self._prior_on:  # one host-to-device copy, not one per step
            self._prior_on[device] = self.prior.to(device=device, dtype=torch.float32)
        return self._prior_on[device]

    # ------------------------------------------------------------------------------------------------------
    # Loss

    def forward(self, model, sample, reduce=True):
        """``(loss, sample_size, logging_output)`` as fairseq's criterion returns them, plus calibration sums
        in evaluation mode."""
        net_output = model(**sample["net_input"])
        logits, target = self.logits_and_target(model, net_output, sample)  # (B, T, V), (B, T)
        loss, nll_loss = self.compute_loss_from_logits(logits, target, reduce=reduce, lprobs=self._lprobs(model, net_output))
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if self.report_accuracy:
            mask = target != self.padding_idx
            logging_output["n_correct"] = int(((logits.argmax(-1) == target) & mask).sum())
            logging_output["total"] = int(mask.sum())
        if not model.training:
            with torch.no_grad():
                logging_output.update(self.calibration_logging_output(logits.detach(), target))
        return loss, sample_size, logging_output

    def logits_and_target(self, model, net_output, sample):
        """The decoder's logits ``(B, T, V)`` and targets ``(B, T)``, after ``--ignore-prefix-size``."""
        if getattr(getattr(model, "decoder", None), "adaptive_softmax", None) is not None:
            raise ValueError(
                f"criterion {CRITERION_NAME} needs the decoder's logits; a decoder with an adaptive softmax "
                "has none (drop --adaptive-softmax-cutoff)"
            )
        logits = net_output[0]
        target = model.get_targets(sample, net_output)
        if self.ignore_prefix_size > 0:
            logits = logits[:, self.ignore_prefix_size :, :]
            target = target[:, self.ignore_prefix_size :]
        return logits, target

    def _lprobs(self, model, net_output):
        """The model's log-probabilities after ``--ignore-prefix-size`` (``--ls-kernel fairseq``), else None."""
        if self.kernel != "fairseq":
            return None
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        return lprobs[:, self.ignore_prefix_size :, :] if self.ignore_prefix_size > 0 else lprobs

    def compute_loss_from_logits(self, logits, target, reduce=True, lprobs=None):
        """Summed (``reduce``) or per-token smoothed loss and NLL, in nats, with the confidence penalty.

        ``lprobs``: the model's log-probabilities for ``--ls-kernel fairseq`` (default: fairseq's
        ``log_softmax`` of ``logits`` in float32, what its decoders return).
        """
        reduction = "sum" if reduce else "none"
        if self.kernel == "fairseq":
            if lprobs is None:
                lprobs = fairseq_utils.log_softmax(logits, dim=-1)
            loss, nll = label_smoothed_nll_loss(
                lprobs.view(-1, lprobs.size(-1)),
                target.reshape(-1),
                self._fairseq_eps,
                ignore_index=self.padding_idx,
                reduce=reduce,
            )
            if not reduce:
                loss, nll = loss.view(target.shape), nll.view(target.shape)
        else:
            loss, nll = label_smoothed_cross_entropy(
                logits,
                target,
                self.alpha,
                ignore_index=self.padding_idx,
                prior=self._prior_for(logits.device),
                convention=self.convention,
                reduction=reduction,
                return_nll=True,
            )
        if self.confidence_penalty:
            # confidence_penalty_loss is NLL - beta * H; subtracting the NLL leaves -beta * H.
            penalty = confidence_penalty_loss(
                logits, target, self.confidence_penalty, ignore_index=self.padding_idx, reduction=reduction
            )
            loss = loss + (penalty - nll)
        return loss, nll

    def compute_loss(self, model, net_output, sample, reduce=True):
        """fairseq's hook, for code that calls it directly (e.g. tasks computing a validation loss)."""
        logits, target = self.logits_and_target(model, net_output, sample)
        return self.compute_loss_from_logits(logits, target, reduce=reduce, lprobs=self._lprobs(model, net_output))

    # ------------------------------------------------------------------------------------------------------
    # Calibration

    def calibration_logging_output(self, logits, target) -> dict[str, torch.Tensor]:
        """The per-bin sums of one batch under their logging-output keys (float64)."""
        sums = batch_sums(logits, target, self.n_bins, self.padding_idx, self._temperatures)
        out = {f"{_PREFIX}{name}": sums[name] for name in ("n_tokens", "n_correct")}
        for i, t in enumerate(self.temperatures):
            for name in _PER_TEMPERATURE:
                out[_temperature_key(name, t)] = sums[name][i]
        return out

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """fairseq's loss, nll_loss, ppl (and accuracy), then the calibration metrics when the outputs hold sums."""
        super().reduce_metrics(logging_outputs)
        keys = sorted({k for log in logging_outputs for k in log if k.startswith(_PREFIX)})
        if not keys:
            return
        sums = {k: sum(log.get(k, 0) for log in logging_outputs) for k in keys}
        if float(sums[f"{_PREFIX}n_tokens"]) <= 0:
            return  # nothing but padding (a dummy batch): no calibration is defined
        for k, v in sums.items():
            metrics.log_scalar_sum(k, v)
        temperatures = _temperatures_in(keys)

        def calibration(meters) -> dict[str, torch.Tensor]:
            return metrics_from_sums(_stats_from({k: meters[k].sum for k in keys}, temperatures))

        i1 = temperatures.index(1.0)
        metrics.log_derived("ece", lambda meters: float(calibration(meters)["ece"][i1]))
        metrics.log_derived("mce", lambda meters: float(calibration(meters)["mce"][i1]))
        # fractions at T = 1 (fairseq's own `accuracy`, with --report-accuracy, is a percentage)
        metrics.log_derived("token_accuracy", lambda meters: float(calibration(meters)["accuracy"][i1]))
        metrics.log_derived("mean_confidence", lambda meters: float(calibration(meters)["mean_confidence"][i1]))
        for i, t in enumerate(temperatures):  # nll_T1 also alone: 6 digits, where nll_loss has 3 decimals
            metrics.log_derived(f"nll_T{t:g}", lambda meters, i=i: float(calibration(meters)["nll"][i]) / _LOG2)
        if len(temperatures) == 1:
            return
        for i, t in enumerate(temperatures):
            metrics.log_derived(f"ece_T{t:g}", lambda meters, i=i: float(calibration(meters)["ece"][i]))
        for name in ("nll", "ece"):
            metrics.log_derived(f"best_{name}_T", lambda meters, name=name: temperatures[int(calibration(meters)[name].argmin())])


def _temperatures_in(keys: list[str]) -> list[float]:
    return sorted({float(k.rsplit("@", 1)[1]) for k in keys if "@" in k})


def _stats_from(sums: dict[str, torch.Tensor], temperatures: list[float]) -> dict[str, torch.Tensor]:
    """Logging-output sums back into the calibration core's ``(T, n_bins)`` / ``(T,)`` layout."""
    stats = {
        name: torch.stack([torch.as_tensor(sums[_temperature_key(name, t)], dtype=torch.float64) for t in temperatures])
        for name in _PER_TEMPERATURE
    }
    for name in ("n_tokens", "n_correct"):
        stats[name] = torch.as_tensor(sums[f"{_PREFIX}{name}"], dtype=torch.float64)
    assert set(stats) == set(STAT_NAMES)
    return {name: value.cpu() for name, value in stats.items()}


def calibration_from_logging_outputs(logging_outputs) -> dict[str, torch.Tensor]:
    """The summed calibration statistics of a list of logging outputs, with their ``temperatures`` (``(T,)``).

    For code that runs validation itself (the fairseq study): ``metrics_from_sums`` and
    ``reliability_from_sums`` of :mod:`.calibration` turn the result into metrics.
    """
    keys = sorted({k for log in logging_outputs for k in log if k.startswith(_PREFIX)})
    if not keys:
        raise ValueError(
            f"the logging outputs hold no calibration sums: were they computed by {CRITERION_NAME} in "
            "evaluation mode (model.eval())?"
        )
    sums = {k: sum(log.get(k, 0) for log in logging_outputs) for k in keys}
    temperatures = _temperatures_in(keys)
    return {**_stats_from(sums, temperatures), "temperatures": torch.tensor(temperatures, dtype=torch.float64)}
