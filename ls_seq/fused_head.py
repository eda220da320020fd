"""The fused loss inside the model's own forward: the output layer computes the loss instead of the logits.

A fused linear + cross-entropy saves memory only if the ``(tokens, V)`` logits are never built, so it must
take the output layer's input. Calling the base model and the head by hand (what ls-seq did before) bypasses
the DDP/FSDP wrapper around the model, whose forward is what synchronises gradients. Here the model is
called as usual, through its wrappers, and two hooks do the work inside that call:

* a forward pre-hook on the output layer (``get_output_embeddings()``) takes the hidden states it is given
  (after the final norm, after T5's ``d_model ** -0.5`` rescaling: whatever the model feeds its head),
  computes ls-seq's fused loss from them, and hands the layer an empty slice of them, so the model's
  logits come out with zero positions (``(B, 0, V)``) and everything the model does to them afterwards
  (``+ final_logits_bias``, soft-capping) costs nothing;
* a forward hook on the model puts the loss into its output (``outputs.loss``), so the loss is part of what
  the DDP wrapper's forward returns, as it expects. It runs ahead of the model's other forward hooks
  (``prepend=True``): FSDP2's post-forward hook, on the same module once it is sharded, registers FSDP's
  backward hooks on the output's tensors, and must see the loss among them. A causal LM sharded as a whole
  otherwise outputs only the empty logits, which the loss does not depend on: FSDP's backward never ran,
  its gradients were neither reduced nor resharded (``tests/distributed``: FSDP2 on gloo).

Gradient checkpointing and peft adapters work unchanged (the hooks sit on the head and on the base model).
:func:`check_fused_matches_model` verifies once, on one row, that the model's logits really are
``head(input) + final_logits_bias``; a model that transforms them further (soft-capping, scaling) is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ls_seq.loss_func import LabelSmoothingLossFunc
from ls_seq.model_io import ModelIO, logits_of

__all__ = ["check_fused_matches_model", "fused_output_layer"]


def _head_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["input"]


@contextlib.contextmanager
def fused_output_layer(
    io: ModelIO, labels: torch.Tensor, loss_fn: LabelSmoothingLossFunc, chunk_size: int | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """While active, one forward of ``io.model`` (through any wrapper) computes ``loss_fn``'s fused sums.

    Args:
        io: the model's :class:`~ls_seq.model_io.ModelIO`.
        labels: the scored labels (``io.scored_labels(...)``), shaped like the hidden states without ``d``.
        loss_fn: supplies the configuration (alpha, convention, prior, ignore_index).
        chunk_size: tokens per chunk of the fused kernel.

    Yields:
        A dict that, after the forward, holds ``loss_sum`` (with a graph), ``nll_sum`` and ``n_tokens``.
    """
    head, _ = io.output_layer()  # refuses a model without a plain nn.Linear head, before any work
    result: dict[str, torch.Tensor] = {}

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict):
        hidden = _head_input(args, kwargs)  # (..., T, d)
        if "loss_sum" in result:
            raise RuntimeError(f"{io.name} called its output layer twice in one forward; the fused loss cannot be used")
        if tuple(hidden.shape[:-1]) != tuple(labels.shape):
            raise ValueError(
                f"the fused loss pairs {io.name}'s output-layer input {tuple(hidden.shape)} with the labels "
                f"{tuple(labels.shape)}, which do not match (is logits_to_keep set?)"
            )
        _, bias = io.output_layer()  # read inside the forward: FSDP gathers the parameters for it
        result["loss_sum"], result["nll_sum"], result["n_tokens"] = loss_fn.fused_sums(
            hidden, module.weight, bias, labels, chunk_size
        )
        empty = hidden[..., :0, :]  # (..., 0, d): the head, and what follows it, computes nothing
        return ((empty, *args[1:]), kwargs) if args else ((), {**kwargs, "input": empty})

    def attach_loss(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any):
        if "loss_sum" not in result:
            raise RuntimeError(f"{io.name}'s forward never called its output layer {type(head).__name__}")
        if not isinstance(output, Mapping):
            raise TypeError(f"the fused loss needs {io.name} to return a ModelOutput (return_dict=True), got {type(output).__name__}")
        output["loss"] = result["loss_sum"]
        return output

    handles = [
        head.register_forward_pre_hook(pre_hook, with_kwargs=True),
        io.model.register_forward_hook(attach_loss, with_kwargs=True, prepend=True),
    ]
    try:
        yield result
    finally:
        for handle in handles:
            handle.remove()


def _first_row(inputs: Mapping[str, Any], n_rows: int) -> dict[str, Any]:
    """The first row of every per-row tensor of a batch (packed batches of one row stay whole)."""
    if n_rows <= 1:
        return dict(inputs)
    return {k: v[:1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n_rows else v for k, v in inputs.items()}


def check_fused_matches_model(
    io: ModelIO, inputs: Mapping[str, Any], n_rows: int, rtol: float = 1e-3, atol: float = 1e-3, positions: int = 16
) -> None:
    """Raise a ``ValueError`` unless ``io.model``'s logits equal ``head(input) + bias`` on the batch's first row.

    ``inputs`` are the model's teacher-forcing inputs (no labels). Runs one no-grad forward of the unwrapped
    model in eval mode (no dropout), so it needs no synchronisation with other processes; ``positions``
    evenly spread positions of the row are compared, so the check holds one row of logits and no more.
    """
    refusal = io.fused_refusal()
    if refusal:
        raise ValueError(f"fused_linear_loss=True: {refusal}, so the fused loss would differ from the model's; set fused_linear_loss=False")
    head, bias = io.output_layer()
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args, kwargs: seen.append(_head_input(args, kwargs)), with_kwargs=True)
    was_training = io.model.training
    io.model.eval()
    try:
        with torch.no_grad():
            logits = logits_of(io.model(**_first_row(inputs, n_rows)))  # (1, T, V)
            if len(seen) != 1:
                raise ValueError(f"fused_linear_loss=True: {io.name} called its output layer {len(seen)} times in one forward")
            if seen[0].shape[:-1] != logits.shape[:-1]:
                raise ValueError(f"fused_linear_loss=True: {io.name}'s output layer saw {tuple(seen[0].shape)} for logits {tuple(logits.shape)}")
            at = torch.linspace(0, logits.shape[-2] - 1, min(positions, logits.shape[-2]), device=logits.device).long()
            logits = logits.index_select(-2, at).float()  # (1, P, V)
            mine = torch.nn.functional.linear(
                seen[0].index_select(-2, at).float(), head.weight.float(), None if bias is None else bias.float()
            )
    finally:
        handle.remove()
        io.model.train(was_training)
    if mine.shape != logits.shape or not torch.allclose(logits, mine, rtol=rtol, atol=atol):
        raise ValueError(
            f"fused_linear_loss=True: {io.name}'s logits are not its output layer applied to the layer's input "
            "(+ final_logits_bias): it transforms them further, so the fused loss would differ from the model's; "
            "set fused_linear_loss=False"
        )
