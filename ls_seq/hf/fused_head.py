"""The fused loss inside the model's own forward: the output layer's input becomes the token loss, no logits.

A fused linear + cross-entropy saves memory only if the ``(tokens, V)`` logits are never built, so it must
take the output layer's input. The model is called as usual, through its wrappers (DDP, FSDP2, peft), and
hooks do the work inside that call:

* a forward pre-hook on the output layer (``get_output_embeddings()``) keeps the hidden states it is given
  (after the final norm, after T5's ``d_model ** -0.5`` rescaling: whatever the model feeds its head) and
  hands the layer an empty slice of them, so the model's logits come out with zero positions (``(B, 0, V)``)
  and everything the model does to them afterwards (``+ final_logits_bias``, soft-capping, scaling) costs
  nothing, while autograd still records it;
* where the model asks for its token loss (:class:`ls_seq.hf.model_loss.ModelLoss`: its ``loss_function``, or,
  for models that compute their own cross-entropy, a forward hook on the model that runs ahead of its other
  forward hooks, so FSDP2's post-forward hook sees the loss), the token term is computed from the kept hidden
  states by the chunked kernel (:func:`ls_seq.functional.fused.fused_smoothed_sums`).

**Exactness is decided from how the model computes, never from values.** The empty logits carry the autograd
graph of what the model did to the layer's result; :func:`ls_seq.hf.model_io.logit_transform` reads it (scalar
scales, one ``tanh`` soft-cap, casts, ``final_logits_bias``) and the kernel applies exactly that. Anything
else (a clamp, a mask, a learned scale) is refused with its name; so is a model that adds a term computed
from its logits to its loss (a z-loss of its own), which the fused path never builds: ls-seq's own ``z_loss``
option computes that term in the kernel. The checks read a few graph nodes every step, and the model's
loss graph once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import torch

from ls_seq.hf.model_io import LogitTransform, logit_transform

if TYPE_CHECKING:
    from ls_seq.hf.model_loss import ModelLoss, TokenLossRecord

__all__ = ["FusedHead", "fused_output_layer"]


def _head_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["input"]


class FusedHead:
    """One forward's fused output layer: the kept hidden states and the (empty) result of the layer."""

    def __init__(self, owner: ModelLoss, chunk_size: int | None) -> None:
        self.owner, self.chunk_size = owner, chunk_size
        self.hidden: torch.Tensor | None = None
        self.head_output: torch.Tensor | None = None
        self.transform: LogitTransform | None = None
        self.model_loss: torch.Tensor | None = None  # the model's own output loss, before any wrapper (DDP) sees it

    @property
    def name(self) -> str:
        return self.owner.io.name

    def sums(self, logits: torch.Tensor, scored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss_sum, nll_sum, n_tokens)`` of the kept hidden states, with the model's logit transform."""
        if self.hidden is None or self.head_output is None:
            raise RuntimeError(f"{self.name} asked for its loss before calling its output layer; the fused loss cannot be used")
        if tuple(self.hidden.shape[:-1]) != tuple(scored.shape):
            raise ValueError(
                f"fused_linear_loss=True: {self.name}'s output-layer input {tuple(self.hidden.shape)} does not match "
                f"its labels {tuple(scored.shape)} (is logits_to_keep set?); set fused_linear_loss=False"
            )
        transform = logit_transform(logits, self.head_output, self.owner.io)
        if isinstance(transform, str):
            raise ValueError(
                f"fused_linear_loss=True: {self.name}'s logits are not what the fused kernel computes: {transform}; "
                "set fused_linear_loss=False"
            )
        self.transform = transform
        head, bias = self.owner.io.output_layer()  # read inside the forward: FSDP gathers the parameters for it
        return self.owner.loss_fn.fused_sums(self.hidden, head.weight, bias, scored, self.chunk_size, transform)

    def check_extras(self, loss: torch.Tensor, token_loss: torch.Tensor) -> None:
        """Refuse a model whose loss uses its logits beyond the token term (they are empty when fused)."""
        target = None if self.head_output is None else self.head_output.grad_fn
        skip = token_loss.grad_fn
        if target is None or loss.grad_fn is None:
            return
        seen, stack = set(), [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node is skip or node in seen:
                continue
            if node is target:
                raise ValueError(
                    f"fused_linear_loss=True: {self.name} adds a term computed from its logits to its loss (a z-loss of "
                    "its own, say), and the fused loss never builds the logits; set fused_linear_loss=False, or "
                    "turn the model's term off and use ls-seq's z_loss, which the fused kernel computes"
                )
            seen.add(node)
            stack.extend(fn for fn, _ in node.next_functions if fn is not None)


@contextlib.contextmanager
def fused_output_layer(owner: ModelLoss, record: TokenLossRecord, chunk_size: int | None = None) -> Iterator[FusedHead]:
    """While active, ``owner.io.model``'s output layer computes nothing and the token term is fused.

    Args:
        owner: the :class:`~ls_seq.hf.model_loss.ModelLoss` whose token loss is being computed.
        record: this forward's record (its labels; it receives the sums).
        chunk_size: tokens per chunk of the fused kernel.
    """
    io = owner.io
    head, _ = io.output_layer()  # refuses a model without a plain nn.Linear head, before any work
    fused = FusedHead(owner, chunk_size)

    def keep_input(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = _head_input(args, kwargs)  # (..., T, d)
        if fused.hidden is not None:
            raise RuntimeError(f"{io.name} called its output layer twice in one forward; the fused loss cannot be used")
        fused.hidden = hidden
        empty = hidden[..., :0, :]  # (..., 0, d): the head, and what follows it, computes nothing
        return ((empty, *args[1:]), kwargs) if args else ((), {**kwargs, "input": empty})

    def keep_output(module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        fused.head_output = output

    def attach_loss(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if fused.hidden is None:
            raise RuntimeError(f"{io.name}'s forward never called its output layer {type(head).__name__}")
        if not isinstance(output, MutableMapping):
            raise TypeError(
                f"the fused loss needs {io.name} to return a ModelOutput (return_dict=True), got {type(output).__name__}"
            )
        if record.calls == 0:  # a model that computes its own cross-entropy: the token term is ours alone
            output["loss"] = owner.token_loss(record, output["logits"], record.labels)
        return output

    def keep_loss(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        # DDP passes every output tensor through one autograd node, which would join the loss to the logits.
        fused.model_loss = output.get("loss") if isinstance(output, Mapping) else None

    handles = [
        head.register_forward_pre_hook(keep_input, with_kwargs=True),
        head.register_forward_hook(keep_output, with_kwargs=True, prepend=True),  # the layer's own result
    ]
    if owner.path == "explicit":
        handles.append(io.model.register_forward_hook(attach_loss, with_kwargs=True, prepend=True))
    else:
        handles.append(io.model.register_forward_hook(keep_loss, with_kwargs=True, prepend=True))
    try:
        yield fused
    finally:
        for handle in handles:
            handle.remove()
