"""How a model's logits line up with its labels: the one place ls-seq knows about model families.

Every part of ls-seq that scores tokens (the trainers, :func:`ls_seq.label_smoothing_loss_func`, the fused
loss, :class:`ls_seq.CalibrationCallback`, the sweeps, ``ls-seq evaluate``) asks :func:`model_io_of` instead
of looking at the model itself. For a model, wrapped (DDP, FSDP, DeepSpeed, ``torch.compile``) or not,
with a peft adapter or not, a :class:`ModelIO` knows

* whether it is an encoder-decoder (``config.is_encoder_decoder``) or a causal LM, and so how logits and
  labels align: an encoder-decoder's logits at ``t`` score the label at ``t`` (its decoder input is the
  labels shifted right); a causal LM's logits at ``t`` score the label at ``t + 1``. The shift is written
  once, in :meth:`ModelIO.scored_labels`, the way transformers' ``ForCausalLMLoss`` writes it: the labels
  move one step left and get ``ignore_index`` at the end, so the logits keep their shape (no copy);
* which labels count: :meth:`ModelIO.count` is the number of labels actually scored, the divisor that makes
  gradient accumulation and DDP exact. A ``shift_labels`` tensor in the batch (padding-free collators,
  sequence parallelism) is used as it is, as transformers does. Packed rows (``DataCollatorWithFlattening``,
  TRL's padding-free collator) put ``ignore_index`` at the first label of every packed sequence, so the
  shift never scores a token across two sequences;
* where the output layer and its bias are (``get_output_embeddings()``, plus Marian/BART's
  ``final_logits_bias``), for the fused loss;
* whether transformers' own ``Trainer`` counts the same labels in ``num_items_in_batch``: it counts
  ``labels[..., 1:]`` only for models whose ``loss_type`` maps to ``ForCausalLMLoss`` (``LlamaForCausalLM``,
  ``Qwen2ForCausalLM``, ...), and the unshifted labels for the others (``GPT2LMHeadModel`` has
  ``loss_type=None``), which scales their loss by about ``(N - B) / N``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "LogitTransform",
    "computes_router_loss",
    "ModelIO",
    "logit_transform",
    "logits_of",
    "model_io_of",
    "routes_loss_function",
    "scored_labels",
    "shift_from_output",
    "teacher_forced_logits",
    "unwrap_model",
]

# Output classes of transformers, by name: a causal LM's output scores the next token, a seq2seq one the same.
_CAUSAL_OUTPUT_MARKERS = ("CausalLM",)
_SEQ2SEQ_OUTPUT_MARKERS = ("Seq2Seq",)
# Heads whose logits score the label at the same position (no shift) and are not encoder-decoders.
_ALIGNED_LOSS_TYPES = ("ForMaskedLM", "ForTokenClassification")


def unwrap_model(model: nn.Module) -> nn.Module:
    """``model`` without DDP/FSDP/DeepSpeed/``torch.compile`` wrappers and without a peft adapter wrapper.

    The peft adapter layers stay in the returned model (they are modules inside it); only the
    ``PeftModel`` shell, which forwards to the base model, is removed.
    """
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model, keep_fp32_wrapper=True)
    if type(inner).__module__.startswith("peft.") and callable(getattr(inner, "get_base_model", None)):
        inner = inner.get_base_model()
    return inner


def logits_of(outputs: Any, where: str = "the model output") -> torch.Tensor:
    """Return ``outputs["logits"]`` or raise a ``ValueError`` that says how to get logits."""
    if isinstance(outputs, Mapping) and outputs.get("logits") is not None:
        return outputs["logits"]
    keys = list(outputs.keys()) if isinstance(outputs, Mapping) else type(outputs).__name__
    raise ValueError(
        f"{where} has no `logits` (got {keys}); ls-seq needs a model that returns a ModelOutput with `logits` "
        "(a ...ForConditionalGeneration / ...MTModel / ...ForCausalLM / ...LMHeadModel head, with return_dict=True)"
    )


def shift_from_output(outputs: Any) -> bool | None:
    """True for a causal-LM output class, False for a seq2seq one, None when the class does not say."""
    name = type(outputs).__name__
    if any(marker in name for marker in _CAUSAL_OUTPUT_MARKERS):
        return True
    if any(marker in name for marker in _SEQ2SEQ_OUTPUT_MARKERS):
        return False
    return None


@functools.cache
def _causal_lm_class_names() -> frozenset[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return frozenset(names)


def _shifts(model: nn.Module) -> bool:
    """Whether ``model``'s logits at t score the label at t + 1; refuses a model it cannot place."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return False
    name = type(model).__name__
    # A user's subclass of a transformers causal LM (a custom forward over LlamaForCausalLM) is one too.
    for cls in type(model).__mro__:
        if cls.__name__ in _causal_lm_class_names() or cls.__name__.endswith(("ForCausalLM", "LMHeadModel")):
            return True
    if getattr(model, "loss_type", None) in _ALIGNED_LOSS_TYPES:
        return False
    if routes_loss_function(model) and _default_loss_shifts(model):
        return True  # a decoder-only model whose own loss is transformers' ForCausalLMLoss (audio LLMs, ...)
    raise ValueError(
        f"ls-seq cannot tell how {name}'s logits align with its labels: it is neither an encoder-decoder "
        "(config.is_encoder_decoder) nor a causal LM (a ...ForCausalLM / ...LMHeadModel in transformers' "
        "causal-LM registry); pass shift_labels=True (logits at t score the label at t + 1) or False explicitly"
    )


def _default_loss_shifts(model: nn.Module) -> bool:
    """Whether the loss function transformers gives ``model`` (from its ``loss_type``) is ``ForCausalLMLoss``."""
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

    return LOSS_MAPPING.get(getattr(model, "loss_type", None) or "ForCausalLM") is ForCausalLMLoss


def _names_read(code: Any) -> set[str]:
    """Attribute and global names a function's code reads, nested code (comprehensions) included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names_read(const)
    return names


def _trainer_counts_shifted_labels(model: nn.Module, is_encoder_decoder: bool) -> bool:
    """Whether transformers' ``Trainer`` counts ``labels[..., 1:]`` (not all labels) in ``num_items_in_batch``.

    transformers 5.x (huggingface/transformers#46204) counts the shifted labels when the model's ``loss_type``
    maps to ``ForCausalLMLoss``; older releases count every label. Detected from the Trainer's own code (the
    attribute its counting reads), not from a version number.
    """
    from transformers import Trainer

    counter = getattr(Trainer, "_get_num_items_in_batch", None)
    if counter is None or "_loss_shifts_labels" not in _names_read(counter.__code__):
        return False
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

    loss_type = getattr(model, "loss_type", None)
    return loss_type is not None and LOSS_MAPPING.get(loss_type) is ForCausalLMLoss and not is_encoder_decoder


@dataclass(frozen=True, eq=False)
class ModelIO:
    """What ls-seq needs to know about one model; build it with :func:`model_io_of`.

    A frozen dataclass: each argument is also the attribute of that name.

    Args:
        model: the unwrapped model (no DDP/peft shell).
        is_encoder_decoder: ``config.is_encoder_decoder``.
        shifts_labels: logits at ``t`` score the label at ``t + 1`` (causal LMs).
    """

    model: nn.Module
    is_encoder_decoder: bool
    shifts_labels: bool

    @property
    def name(self) -> str:
        return type(self.model).__name__

    @property
    def routes_loss_function(self) -> bool:
        """The model computes its token loss through ``self.loss_function`` (see :func:`routes_loss_function`)."""
        return routes_loss_function(self.model)

    @property
    def trainer_counts_scored_labels(self) -> bool:
        """Whether transformers' ``Trainer`` counts exactly the scored labels in ``num_items_in_batch`` for this
        model (read from ``model.loss_type`` now, so setting ``model.loss_type = "ForCausalLM"`` counts)."""
        return (not self.shifts_labels) or _trainer_counts_shifted_labels(self.model, self.is_encoder_decoder)

    # ---- alignment ---------------------------------------------------------------------------------------

    def scored_labels(
        self, labels: torch.Tensor, shift_labels: torch.Tensor | None = None, ignore_index: int = -100
    ) -> torch.Tensor:
        """The label each logit position scores, shaped like ``labels``: ``ignore_index`` where none.

        A causal LM's labels move one step left (``labels[..., 1:]``, then ``ignore_index``); a
        ``shift_labels`` tensor from the batch is returned as it is.
        """
        return scored_labels(labels, self.shifts_labels, shift_labels, ignore_index)

    def count(self, labels: torch.Tensor, shift_labels: torch.Tensor | None = None, ignore_index: int = -100) -> torch.Tensor:
        """Number of scored labels (a 0-dim int64 tensor on the labels' device; no host sync)."""
        return self.scored_labels(labels, shift_labels, ignore_index).ne(ignore_index).sum()

    # ---- teacher forcing ---------------------------------------------------------------------------------

    def teacher_forcing_inputs(self, inputs: Mapping[str, Any], labels: torch.Tensor) -> dict[str, Any]:
        """``inputs`` plus ``decoder_input_ids`` built from ``labels`` when an encoder-decoder lacks them.

        An encoder-decoder builds them itself when it receives labels, which it no longer does once the
        caller pops them to compute the loss (or the metric) itself. Never edits ``inputs``.
        """
        inputs = dict(inputs)
        inputs.pop("shift_labels", None)  # consumed by ls-seq's alignment; the model must not see it
        if self.is_encoder_decoder and inputs.get("decoder_input_ids") is None and inputs.get("decoder_inputs_embeds") is None:
            prepare = getattr(self.model, "prepare_decoder_input_ids_from_labels", None)
            inputs["decoder_input_ids"] = prepare(labels=labels) if prepare is not None else self._shift_right(labels)
        return inputs

    def _shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """What an encoder-decoder without ``prepare_decoder_input_ids_from_labels`` (Whisper, M2M100, ...) does
        with labels in its forward: the decoder start token, then the labels, -100 read as the pad token."""
        config = self.model.config
        decoder = getattr(config, "decoder", None)
        generation = getattr(self.model, "generation_config", None)
        start = next(
            (
                v
                for v in (getattr(c, "decoder_start_token_id", None) for c in (config, decoder, generation))
                if isinstance(v, int)
            ),
            None,
        )
        pad = next(
            (v for v in (getattr(c, "pad_token_id", None) for c in (config, decoder, generation)) if isinstance(v, int)), None
        )
        if start is None or pad is None:
            raise ValueError(
                f"{self.name} is an encoder-decoder without prepare_decoder_input_ids_from_labels and without "
                "decoder_start_token_id / pad_token_id in its config: give the batch `decoder_input_ids` "
                "(e.g. DataCollatorForSeq2Seq(tokenizer, model=model))"
            )
        shifted = labels.new_full(labels.shape, start)
        shifted[..., 1:] = labels[..., :-1]
        return shifted.masked_fill(shifted == -100, pad)

    # ---- output layer ------------------------------------------------------------------------------------

    def output_layer(self) -> tuple[nn.Linear, torch.Tensor | None]:
        """The output projection and the total logit bias (its own bias plus ``final_logits_bias``, shape (V,)).

        Raises a ``ValueError`` naming the model when there is no plain ``nn.Linear`` output layer (a LoRA'd
        or quantised head cannot be fused: its logits are not ``weight @ h + bias``).
        """
        get = getattr(self.model, "get_output_embeddings", None)
        head = get() if callable(get) else None
        if head is None:
            raise ValueError(f"{self.name} has no output layer (get_output_embeddings() is None): the fused loss needs one")
        if type(head) is not nn.Linear or not head.weight.is_floating_point():
            raise ValueError(
                f"{self.name}'s output layer is a {type(head).__module__}.{type(head).__name__}, not a plain "
                "torch.nn.Linear (a LoRA'd, quantised or custom head): its logits are not weight @ h + bias, so "
                "the fused loss cannot be used; set fused_linear_loss=False"
            )
        bias: torch.Tensor | None = head.bias
        final = getattr(self.model, "final_logits_bias", None)  # Marian/BART/Pegasus: a (1, V) buffer
        if isinstance(final, torch.Tensor):
            bias = final.reshape(-1) if bias is None else bias + final.reshape(-1)
        return head, bias

    @property
    def output_size(self) -> int:
        """V: the rows of the output layer, or ``config.vocab_size`` when there is no layer to read."""
        get = getattr(self.model, "get_output_embeddings", None)
        head = get() if callable(get) else None
        weight = getattr(head, "weight", None)
        if isinstance(weight, torch.Tensor):
            return int(weight.shape[0])
        config: Any = self.model.config  # a PreTrainedModel's (nn.Module types unknown attributes as Tensor | Module)
        return int(config.vocab_size)


def scored_labels(
    labels: torch.Tensor, shifts: bool, shift_labels: torch.Tensor | None = None, ignore_index: int = -100
) -> torch.Tensor:
    """The label each logit position scores (see :meth:`ModelIO.scored_labels`), for a known alignment."""
    if shift_labels is not None:
        if shift_labels.shape != labels.shape:
            raise ValueError(
                f"`shift_labels` must have the shape of `labels` {tuple(labels.shape)}, got {tuple(shift_labels.shape)}"
            )
        return shift_labels
    if not shifts:
        return labels
    # transformers' ForCausalLMLoss: pad one ignored label at the end, drop the first.
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=ignore_index)


def model_io_of(model: nn.Module, *, shift_labels: bool | None = None) -> ModelIO:
    """The :class:`ModelIO` of ``model`` (wrapped or not, peft or not).

    Args:
        model: a transformers model, or any ``nn.Module`` with a ``config`` when ``shift_labels`` is given.
        shift_labels: override the alignment (True: logits at t score the label at t + 1). By default it
            comes from the model: encoder-decoders do not shift, causal LMs do, anything else is refused.

    Returns:
        The model's :class:`ModelIO`, holding the unwrapped model.

    Raises:
        ValueError: ``shift_labels`` is None and the model is neither an encoder-decoder nor a causal LM that
            ls-seq can recognise.
    """
    inner = unwrap_model(model)
    config = getattr(inner, "config", None)
    is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    shifts = _shifts(inner) if shift_labels is None else bool(shift_labels)
    return ModelIO(inner, is_encoder_decoder, shifts)


def teacher_forced_logits(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    labels_key: str = "labels",
    ignore_index: int = -100,
    shift_labels: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One teacher-forced forward pass: ``(logits (..., V), scored labels (...))``, aligned position by position.

    The labels are taken out of the batch, so the model does not compute a loss nobody reads; the alignment
    (a causal LM's shift, a batch's ``shift_labels``) is :mod:`ls_seq.hf.model_io`'s. ``model`` may be wrapped.
    ``shift_labels`` overrides the alignment (True: logits at t score the label at t + 1); by default it comes
    from the model and, for a model ls-seq cannot place (a custom wrapper), from its output's class
    (``CausalLMOutput...`` shifts, ``Seq2Seq...Output`` does not), as for :func:`ls_seq.label_smoothing_loss_func`.
    """
    batch = dict(batch)
    labels = batch.pop(labels_key, None)
    if labels is None:
        raise ValueError(
            f"a teacher-forced pass needs `{labels_key}` (TrainingArguments.label_names) in every batch; "
            f"this batch has {sorted(batch)}"
        )
    inner = unwrap_model(model)
    is_encoder_decoder = bool(getattr(getattr(inner, "config", None), "is_encoder_decoder", False))
    refusal = None
    try:
        shifts = _shifts(inner) if shift_labels is None else bool(shift_labels)
    except ValueError as err:
        shifts, refusal = None, err
    io = ModelIO(inner, is_encoder_decoder, bool(shifts))
    outputs = model(**io.teacher_forcing_inputs(batch, labels))
    if shifts is None:
        shifts = shift_from_output(outputs)
        if shifts is None:
            raise refusal  # type: ignore[misc]  # set: shifts is None only after _shifts refused
        io = ModelIO(inner, is_encoder_decoder, shifts)
    scored = io.scored_labels(labels, batch.get("shift_labels"), ignore_index)
    return logits_of(outputs, where=f"{io.name}'s output"), scored


# ---- how the model computes its loss and its logits --------------------------------------------------------


@functools.cache
def _forward_names(cls: type[Any]) -> frozenset[str]:
    import inspect

    forward = inspect.unwrap(cls.forward)
    code = getattr(forward, "__code__", None)
    return frozenset() if code is None else frozenset(_names_read(code))


def routes_loss_function(model: nn.Module) -> bool:
    """Whether ``model``'s forward computes its token loss through ``self.loss_function`` (read from its code).

    transformers 5 models (Llama, Qwen, Mixtral, GPT-2, Gemma, T5Gemma, Voxtral, ...) call
    ``self.loss_function(logits, labels, vocab_size, **kwargs)`` and then add their own terms (router losses);
    ``loss_function`` has a setter, so ls-seq's token loss can take its place and everything else the model
    computes is kept by construction. BART, Marian, T5, Whisper and a few others build a ``CrossEntropyLoss``
    themselves: they take ls-seq's explicit path (:class:`ls_seq.hf.model_loss.ModelLoss`).
    """
    if not isinstance(getattr(type(model), "loss_function", None), property):
        return False  # not a transformers model: nothing to hook
    # A subclass that overrides forward and calls super().forward() still computes through the parent's code.
    return any("forward" in vars(cls) and "loss_function" in _forward_names(cls) for cls in type(model).__mro__)


def computes_router_loss(model: nn.Module) -> bool:
    """Whether ``model``'s forward computes a router load-balancing loss (read from its code, as
    :func:`routes_loss_function`): Mixtral, Qwen-MoE, OLMoE, JetMoe, NLLB-MoE do; DeepSeek-V3 and Llama 4 return
    router logits and add nothing."""
    names = set().union(*(_forward_names(cls) for cls in type(model).__mro__ if "forward" in vars(cls)))
    return any("load_balancing" in name or name.endswith("aux_loss_coef") for name in names)


@dataclass(frozen=True)
class LogitTransform:
    """``z -> softcap(scale * z)`` with ``softcap(x) = cap * tanh(x / cap)`` (None: no cap): what a model does to
    its output layer's result before the loss, read from the autograd graph (:func:`logit_transform`)."""

    scale: float = 1.0
    softcap: float | None = None

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None


# Nodes that move or retype values without changing them (a cast to float32 keeps bf16 values exactly).
_VALUE_PRESERVING = frozenset(
    {"ToCopyBackward0", "CloneBackward0", "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "AliasBackward0"}
)


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 and value.dim() == 0 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def logit_transform(logits: torch.Tensor, head_output: torch.Tensor, io: ModelIO) -> LogitTransform | str:
    """How ``logits`` were computed from ``head_output`` (the output layer's result), from the autograd graph.

    Walks ``logits.grad_fn`` back to ``head_output.grad_fn`` and accepts only nodes whose effect is known
    exactly: multiplication or division by a number, ``tanh`` (at most once), casts and views, and the
    addition of the model's ``final_logits_bias`` right after the layer (already part of
    :meth:`ModelIO.output_layer`'s bias). Anything else (a clamp, a mask, a learned scale, a slice) returns a
    one-line reason instead: the fused loss then refuses rather than guess. This reads how the model
    computes, not what values it produced, so logits that grow during training cannot change the verdict.
    Needs a graph: call it on tensors built with grad enabled.
    """
    if logits is head_output:
        return LogitTransform()
    target = head_output.grad_fn
    node = logits.grad_fn
    if node is None or target is None:
        return "its logits carry no autograd graph here (the fused loss runs in training with gradients enabled)"
    # The walk goes from the loss's end towards the layer: factors met before tanh act after it (post).
    pre, post, tanh, biased = 1.0, 1.0, False, False
    ops: list[str] = []
    while node is not target:
        name = type(node).__name__
        inputs = [fn for fn, _ in node.next_functions if fn is not None]
        if not inputs:
            return f"its logits do not come from its output layer (the graph ends at {name})"
        if name in _VALUE_PRESERVING:
            node = inputs[0]
            continue
        if biased:
            return f"it transforms its output layer's result before adding final_logits_bias ({name})"
        if len(inputs) != 1 and name != "AddBackward0":
            return f"its logits depend on another tensor after the output layer ({name})"
        if name.startswith(("MulBackward", "DivBackward")):
            saved_self, saved_other = getattr(node, "_saved_self", None), getattr(node, "_saved_other", None)
            factor = _scalar(saved_other)
            if factor is None and name.startswith("Mul"):
                factor = _scalar(saved_self)  # number * logits
            if factor is None or factor == 0.0 or (name.startswith("Div") and _scalar(saved_self) is not None):
                return f"it multiplies its logits by a tensor after the output layer ({name})"
            factor = 1.0 / factor if name.startswith("Div") else factor
            if tanh:
                pre *= factor
            else:
                post *= factor
            ops.append(f"x{factor:g}")
        elif name == "TanhBackward0":
            if tanh:
                return "it applies tanh to its logits twice"
            tanh = True
            ops.append("tanh")
        elif name == "AddBackward0":
            final = getattr(io.model, "final_logits_bias", None)
            # an AccumulateGrad node holds its leaf in .variable, which torch's stub of Node does not declare
            own = all(
                type(fn).__name__ == "AccumulateGrad" and fn.variable is final  # type: ignore[attr-defined]
                for fn in inputs[1:]
            )
            if not isinstance(final, torch.Tensor) or not own:
                return "it adds a tensor to its logits after the output layer (AddBackward0)"
            biased = True
        else:
            return f"it transforms its logits with {name.removesuffix('Backward0')} after the output layer"
        node = inputs[0]
    if not tanh:
        return LogitTransform(scale=pre * post)
    if post <= 0 or pre <= 0:
        return f"it soft-caps its logits with a non-positive scale ({' '.join(reversed(ops))})"
    # post * tanh(pre * z) = cap * tanh(scale * z / cap) with cap = post, scale = pre * post
    return LogitTransform(scale=pre * post, softcap=post)


# Renamed in 0.2: ``ls_seq.model_io`` was both this function and this module.
from ls_seq._deprecation import moved_attributes  # noqa: E402

__getattr__ = moved_attributes(__name__, {}, renamed={"model_io": "model_io_of"})
