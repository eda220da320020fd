"""ls-seq's token loss computed where the model computes its own, so everything else the model does is kept.

A model's loss is more than its token cross-entropy: mixture-of-experts models add ``router_aux_loss_coef *
aux_loss`` (Mixtral, Qwen-MoE, OLMoE, ...), some add a z-loss; and before the loss some transform their
logits (Gemma 2/3 soft-cap them, Cohere and Granite scale them). ls-seq replaces the token cross-entropy and
nothing else. How depends on how the model's forward is written (:func:`ls_seq.hf.model_io.routes_loss_function`),
read once from its code:

* **hook** (most causal LMs of transformers 5 and the encoder-decoders that follow them: Llama, Qwen, Mixtral,
  GPT-2, Gemma, T5Gemma, Voxtral, ...): the forward computes ``self.loss_function(logits, labels, vocab_size,
  **kwargs)`` and then adds its own terms. For one forward, ``model.loss_function`` is ls-seq's token loss
  (the property's setter, restored afterwards); the model gets the labels and returns its own total, with
  ls-seq's term where its cross-entropy was. What the model adds or does to its logits is kept by
  construction, not by a list of known cases.
* **explicit** (BART, Marian, T5, Whisper, Pegasus, ...: they build a ``CrossEntropyLoss`` themselves): the
  first forward gives the model the labels and asks whether its loss is, bit for bit, the plain cross-entropy
  of its logits (:meth:`ModelLoss.decide`; before a first fused forward, in a no-gradient forward of its own). If it is, the labels are withheld from then on (the model computes no
  loss) and the loss is ls-seq's token loss of its logits. If not (NLLB-MoE's router losses, ProphetNet's
  n-gram loss), the model gets the labels and ls-seq keeps ``its loss - the cross-entropy of the same logits``.

The fused loss (``fused_linear_loss=True``, :mod:`ls_seq.hf.fused_head`) runs on both paths: the model's output
layer receives an empty slice, and the token term is computed from the layer's input where the model asks
for its loss, with the logit transform read from the autograd graph of the model's (empty) logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ls_seq.hf.distributed import drop_rows
from ls_seq.hf.loss_func import LabelSmoothingLossFunc
from ls_seq.hf.model_io import ModelIO, logits_of

__all__ = ["ModelLoss", "TokenLossRecord", "plain_cross_entropy"]


@dataclass
class TokenLossRecord:
    """What one forward's token loss measured; filled during the forward, read after it.

    Attributes:
        loss_sum: summed smoothed token loss (with a graph in training).
        nll_sum: summed token NLL (no graph).
        n_tokens: scored tokens (0-dim int tensor).
        token_loss: the token term as the model received it (``loss_sum / denominator``).
        logits, scored: the aligned logits and labels (unfused forwards), for calibration.
        extras: the model's other terms (its loss minus the token term; 0-dim, no graph), after :meth:`total`.
    """

    labels: torch.Tensor
    shift_labels: torch.Tensor | None = None
    denominator: Any = None
    keep_rows: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    nll_sum: torch.Tensor | None = None
    n_tokens: torch.Tensor | None = None
    token_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    scored: torch.Tensor | None = None
    extras: torch.Tensor | None = None
    calls: int = 0
    fused: Any = field(default=None, repr=False)


class ModelLoss:
    """ls-seq's token loss inside ``io.model``'s own loss (see the module docstring for the two paths).

    Args:
        io: the model's :class:`~ls_seq.hf.model_io.ModelIO`.
        loss_fn: the configured token loss.
    """

    def __init__(self, io: ModelIO, loss_fn: LabelSmoothingLossFunc) -> None:
        self.io, self.loss_fn = io, loss_fn
        self.path = "hook" if io.routes_loss_function else "explicit"
        # Explicit path: whether the model's own loss is more than its plain cross-entropy (router losses, an
        # n-gram loss), decided on the first forward (decide()); None until then.
        self.model_adds_terms: bool | None = None if self.path == "explicit" and _takes_labels(io.model) else False
        self._fused_extras_checked = False

    def needs_probe(self, fused: bool) -> bool:
        """A fused forward builds no logits to compare with: the explicit path then probes in a forward of its own."""
        return self.model_adds_terms is None and fused

    def probe(
        self, model: torch.nn.Module, inputs: Mapping[str, Any], labels: torch.Tensor, shift_labels: torch.Tensor | None = None
    ) -> None:
        """One forward without gradients (the training random streams untouched) to :meth:`decide` before the
        first fused forward of an explicit-path model."""
        from ls_seq.rng import isolated_rng

        record = TokenLossRecord(labels, shift_labels)
        with torch.no_grad(), isolated_rng():
            outputs = model(**{**inputs, "labels": labels})
        self.decide(outputs, record, fused=True)

    def decide(self, outputs: Any, record: TokenLossRecord, fused: bool = False) -> None:
        """Once, on the explicit path: does the model's loss hold more than its plain cross-entropy?

        The model adds nothing when its loss *is*, bit for bit, ``F.cross_entropy`` of its logits against the
        aligned labels (the same operation on the same numbers: an identity, not a tolerance); the labels are
        then withheld from later forwards. Otherwise ls-seq keeps ``its loss - that cross-entropy`` on every
        step. A causal LM whose own loss does not shift its labels is refused (it expects shifted labels).
        """
        own = outputs.get("loss") if isinstance(outputs, Mapping) else None
        if own is None or torch.equal(own, self._own_cross_entropy(outputs, record)):
            self.model_adds_terms = False
            return
        if self.io.shifts_labels and torch.equal(own, self._own_cross_entropy(outputs, record, aligned=False)):
            raise ValueError(
                f"{self.io.name}'s own loss scores the logits at t against the label at t (it expects labels shifted "
                "by the caller), while ls-seq scores a causal LM's logits at t against the label at t + 1, as "
                "transformers' ForCausalLMLoss does; give it unshifted labels through a model that shifts them"
            )
        if fused:
            raise ValueError(
                f"fused_linear_loss=True: {self.io.name} adds terms to its own cross-entropy (router losses, an n-gram "
                "loss) computed together with it from the full logits, which the fused loss never builds; set "
                "fused_linear_loss=False"
            )
        self.model_adds_terms = True

    @contextlib.contextmanager
    def forward(
        self,
        labels: torch.Tensor,
        *,
        shift_labels: torch.Tensor | None = None,
        denominator: Any = None,
        keep_rows: torch.Tensor | None = None,
        fused: bool = False,
        chunk_size: int | None = None,
    ) -> Iterator[TokenLossRecord]:
        """While active, one forward of the model (through any wrapper) computes ls-seq's token loss.

        Args:
            labels: the batch's labels, unshifted (the model and ls-seq align them).
            shift_labels: the batch's ``shift_labels`` (padding-free collators), used as they are.
            denominator: divides the token loss sum (the accumulated batch's scored tokens); None: this
                forward's own count.
            keep_rows: ``(B,)`` bool, rows whose tokens count (accelerate's repeated evaluation rows do not).
            fused: compute the token term from the output layer's input (:mod:`ls_seq.hf.fused_head`).
            chunk_size: tokens per chunk of the fused kernel.
        """
        record = TokenLossRecord(labels, shift_labels, denominator, keep_rows)
        with contextlib.ExitStack() as stack:
            if fused:
                from ls_seq.hf.fused_head import fused_output_layer

                record.fused = stack.enter_context(fused_output_layer(self, record, chunk_size))
            if self.path == "hook":
                stack.enter_context(_loss_function_of(self.io.model, _TokenLossHook(self, record)))
            yield record

    def model_inputs(self, inputs: Mapping[str, Any], record: TokenLossRecord) -> dict[str, Any]:
        """The model's keyword arguments: ``inputs`` plus ``labels`` when the model computes its loss."""
        inputs = dict(inputs)
        # A fused forward builds no logits to decide from: the explicit path decides in probe() beforehand.
        undecided = self.model_adds_terms is None and record.fused is None
        if self.path == "hook" or self.model_adds_terms or undecided:
            inputs["labels"] = record.labels
        return inputs

    # ---- the token term ----------------------------------------------------------------------------------

    def token_loss(
        self, record: TokenLossRecord, logits: torch.Tensor, labels: torch.Tensor, shift_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The token term for the model's logits (or, fused, for its output layer's input): ``sum / denominator``."""
        ignore = self.loss_fn.ignore_index
        given = record.shift_labels if record.shift_labels is not None else shift_labels
        scored = self.io.scored_labels(labels.to(logits.device), given, ignore)
        scored = drop_rows(scored, record.keep_rows, ignore)
        if record.fused is not None:
            loss_sum, nll_sum, n_tokens = record.fused.sums(logits, scored)
        else:
            loss_sum, nll_sum, n_tokens = self.loss_fn.sums(logits, scored)
            record.logits, record.scored = logits, scored
        record.calls += 1
        if record.calls > 1:
            raise RuntimeError(f"{self.io.name} computed its token loss {record.calls} times in one forward; ls-seq replaces one")
        denom = n_tokens if record.denominator is None else record.denominator
        denom = torch.as_tensor(denom, device=loss_sum.device).clamp_min(1).to(loss_sum.dtype)
        record.loss_sum, record.nll_sum, record.n_tokens = loss_sum, nll_sum, n_tokens
        record.token_loss = loss_sum / denom
        return record.token_loss

    def total(self, outputs: Any, record: TokenLossRecord) -> torch.Tensor:
        """The loss to train on: the model's own total with ls-seq's token term, after the forward."""
        own = outputs.get("loss") if isinstance(outputs, Mapping) else None
        if self.model_adds_terms is None and record.fused is None:  # the first forward of an explicit-path model got the labels
            with torch.no_grad():
                self.decide(outputs, record)
        asked = record.calls > 0
        if not asked:  # the model never asked for its token loss: its logits are ours to score
            self.token_loss(record, logits_of(outputs, where=f"{self.io.name}'s output"), record.labels)
        token = record.token_loss
        if self.path == "hook" and asked:
            loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs[0]
            own_loss = None if record.fused is None else record.fused.model_loss
            if own_loss is not None and own_loss is not token and not self._fused_extras_checked:
                record.fused.check_extras(own_loss, token)
                self._fused_extras_checked = True
        elif own is not None and (self.model_adds_terms or self.path == "hook"):
            # The model computed its loss with its own cross-entropy (a custom forward on the hook path, or an
            # explicit-path model that adds terms): keep what it adds beyond that cross-entropy.
            if record.fused is not None:
                raise ValueError(
                    f"fused_linear_loss=True: {self.io.name} computed its loss without calling self.loss_function, from "
                    "logits the fused loss never builds; set fused_linear_loss=False"
                )
            loss = token + (own - self._own_cross_entropy(outputs, record))
        else:
            loss = token
        record.extras = (loss - token).detach()
        if isinstance(outputs, MutableMapping):
            outputs["loss"] = loss
        return loss

    def _own_cross_entropy(self, outputs: Any, record: TokenLossRecord, aligned: bool = True) -> torch.Tensor:
        """The model's plain mean token cross-entropy, computed as transformers' models compute it."""
        logits = logits_of(outputs, where=f"{self.io.name}'s output")
        labels = record.labels.to(logits.device)
        if aligned:
            labels = self.io.scored_labels(labels, record.shift_labels, self.loss_fn.ignore_index)
        return plain_cross_entropy(logits, labels, self.loss_fn.ignore_index)


def plain_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean token cross-entropy of aligned ``logits`` (..., V) and ``labels`` (...), the operation transformers'
    models run (``CrossEntropyLoss()(logits.view(-1, V), labels.view(-1))``), so that it equals theirs bit for bit."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index)


def _takes_labels(model: torch.nn.Module) -> bool:
    """Whether the model's forward accepts ``labels`` (a custom wrapper may not: it then computes no loss)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "labels" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class _TokenLossHook:
    """What ``model.loss_function`` is during one forward on the hook path: transformers' loss signature."""

    def __init__(self, owner: ModelLoss, record: TokenLossRecord) -> None:
        self.owner, self.record = owner, record

    def __call__(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        vocab_size: int | None = None,
        num_items_in_batch: Any = None,
        ignore_index: int = -100,
        shift_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if labels is None:  # Moonshine passes its already aligned labels as shift_labels alone
            if shift_labels is None:
                raise ValueError(f"{self.owner.io.name} called its loss function without labels")
            labels = shift_labels
        return self.owner.token_loss(self.record, logits, labels, shift_labels)


@contextlib.contextmanager
def _loss_function_of(model: torch.nn.Module, function: Any) -> Iterator[None]:
    """Set ``model.loss_function`` (transformers' setter: an instance attribute) and restore it afterwards."""
    had, previous = "_loss_function" in model.__dict__, model.__dict__.get("_loss_function")
    model.loss_function = function
    try:
        yield
    finally:
        if had:
            model.__dict__["_loss_function"] = previous
        else:
            model.__dict__.pop("_loss_function", None)
