"""Any model class of transformers' generation registries, built tiny from its default config, with a batch.

The registries (:func:`registry_classes`) are read from ``transformers.models.auto.modeling_auto``; the
builder (:func:`tiny_model`) shrinks the default config of a class generically (by the names of the sizes,
in every nested sub-config), sets every dropout to 0 and asks MoE configs for their router logits, and keeps
every logit transform (soft-capping, logit scales) at its default: those are what the census checks.
:func:`tiny_batch` makes the inputs from the model alone (``main_input_name``, the config's feature sizes).

Nothing here knows about ls-seq: the census (``census_core``) compares ls-seq against these models.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

REGISTRIES = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
)
SHORT = {
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "causal",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES": "seq2seq",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES": "speech",
}
VOCAB, HIDDEN, HEAD_DIM, LAYERS, FFN = 128, 32, 16, 2, 64
B, T, T_DEC = 2, 8, 6
PAD, EOS, BOS = 0, 1, 2
IGNORE = -100


@dataclass(frozen=True)
class Entry:
    """One class of the registries: its name, the registries (short names) and model types that list it."""

    name: str
    registries: tuple[str, ...]
    model_types: tuple[str, ...]


def registry_classes() -> dict[str, Entry]:
    """Every class name of the three registries (a value may be a str or a tuple of names), deduplicated."""
    from transformers.models.auto import modeling_auto

    regs: dict[str, list[str]] = {}
    types: dict[str, list[str]] = {}
    for reg in REGISTRIES:
        for model_type, value in getattr(modeling_auto, reg).items():
            for name in [value] if isinstance(value, str) else value:
                if SHORT[reg] not in regs.setdefault(name, []):
                    regs[name].append(SHORT[reg])
                if model_type not in types.setdefault(name, []):
                    types[name].append(model_type)
    return {n: Entry(n, tuple(regs[n]), tuple(types[n])) for n in sorted(regs)}


# ---- shrinking a config -------------------------------------------------------------------------------

# Sizes by the names configs give them. Values are small but consistent: HIDDEN = 2 heads x HEAD_DIM.
_SIZES: dict[str, int] = {
    **dict.fromkeys(
        [
            "hidden_size",
            "d_model",
            "n_embd",
            "embed_dim",
            "dim",
            "d_embed",
            "word_embed_proj_dim",
            "n_embed",
            "hidden_dim",
            "model_dim",
            "embedding_size",
            "projection_dim",
            "text_hidden_size",
            "d_hidden",
            "embedding_dim",
        ],
        HIDDEN,
    ),
    **dict.fromkeys(
        [
            "num_hidden_layers",
            "n_layer",
            "num_layers",
            "encoder_layers",
            "decoder_layers",
            "num_decoder_layers",
            "n_layers",
            "num_encoder_layers",
            "decoder_num_layers",
            "num_hidden_blocks",
            "depth",
            "num_blocks",
        ],
        LAYERS,
    ),
    **dict.fromkeys(
        [
            "num_attention_heads",
            "n_head",
            "encoder_attention_heads",
            "decoder_attention_heads",
            "num_heads",
            "n_heads",
            "attention_heads",
            "num_attn_heads",
            "decoder_num_attention_heads",
        ],
        2,
    ),
    **dict.fromkeys(["num_key_value_heads", "num_kv_heads", "multi_query_group_num", "n_kv_heads", "kv_heads"], 1),
    **dict.fromkeys(["head_dim", "d_kv", "kv_channels", "attention_head_dim", "d_head", "attention_head_size"], HEAD_DIM),
    **dict.fromkeys(
        [
            "intermediate_size",
            "ffn_dim",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "d_ff",
            "n_inner",
            "ffn_hidden_size",
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "expert_intermediate_size",
            "decoder_ffn_embed_dim",
            "encoder_ffn_embed_dim",
            "dense_intermediate_size",
            "mlp_dim",
            "ffn_size",
            "moe_ffn_hidden_size",
            "intermediate_size_mlp",
            "feed_forward_proj_dim",
            "hidden_size_per_layer_input",
            "moe_shared_expert_intermediate_size",
            "expert_dim",
            "shared_intermediate_size",
            "ffn_hidden_dim",
            "d_inner",
            "filter_size",
        ],
        FFN,
    ),
    **dict.fromkeys(
        [
            "vocab_size",
            "decoder_vocab_size",
            "target_vocab_size",
            "src_vocab_size",
            "tgt_vocab_size",
            "text_vocab_size",
            "vocab_size_per_layer_input",
        ],
        VOCAB,
    ),
    **dict.fromkeys(
        ["num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_routed", "n_experts"],
        4,
    ),
    **dict.fromkeys(
        [
            "num_experts_per_tok",
            "moe_topk",
            "top_k",
            "moe_k",
            "num_selected_experts",
            "expert_capacity_top_k",
            "num_experts_per_token",
            "router_top_k",
        ],
        2,
    ),
    **dict.fromkeys(["n_group", "topk_group", "num_expert_group", "topk_groups"], 1),
    **dict.fromkeys(
        [
            "max_position_embeddings",
            "n_positions",
            "max_target_positions",
            "n_ctx",
            "seq_length",
            "max_sequence_length",
            "max_length_positions",
            "max_window_layers",
        ],
        64,
    ),
    "max_source_positions": 8,  # Whisper-style encoders: 2 x 8 mel frames of input
    "num_mel_bins": 8,
    "q_lora_rank": 16,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": HEAD_DIM,
    "qk_head_dim": HEAD_DIM,
    "first_k_dense_replace": 1,
    "sliding_window": 4,
    "attention_window": 4,
    "state_size": 8,
    "mamba_d_state": 8,
    "ssm_state_size": 8,
    "mamba_n_heads": 4,
    "mamba_head_dim": 16,
    "mamba_d_head": 16,
    "time_step_rank": 4,
    "conv_kernel": 4,
    "n_groups": 1,
    "mamba_n_groups": 1,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 2,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "num_buckets": 8,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16,
    "max_relative_positions": 16,
    "num_nextn_predict_layers": 0,
    "rotary_dim": 8,
    "encoder_sparse_step": 1,
    "decoder_sparse_step": 1,
    "sparse_step": 1,
    "moe_layer_freq": 1,
    "attn_layer_period": 2,
    "attn_layer_offset": 1,
    "expert_layer_period": 2,
    "expert_layer_offset": 1,
    "full_attention_interval": 2,
    "hybrid_attention_interval": 2,
    "chunk_size": 8,
    "block_size": 4,
}
# Keys that are ids of tokens: kept inside the tiny vocabulary.
_TOKEN_IDS = {
    "pad_token_id": PAD,
    "eos_token_id": EOS,
    "bos_token_id": BOS,
    "decoder_start_token_id": PAD,
    "sep_token_id": EOS,
    "cls_token_id": BOS,
    "unk_token_id": 3,
    "mask_token_id": 4,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "decoder_pad_token_id": PAD,
    "decoder_bos_token_id": BOS,
    "decoder_eos_token_id": EOS,
}
_LAYER_KEYS = [k for k, v in _SIZES.items() if v == LAYERS]
_GENERATION_ONLY = ("suppress_tokens", "begin_suppress_tokens", "forced_decoder_ids", "bad_words_ids")


def _shrink_dict(d: dict[str, Any]) -> dict[str, Any]:
    """A shrunk copy of one (possibly nested) config dict."""
    out = dict(d)
    n_layers = {d[k] for k in _LAYER_KEYS if isinstance(d.get(k), int) and d[k] > 0}
    for key, value in d.items():
        if isinstance(value, dict) and (
            "model_type" in value or key.endswith(("_config", "config")) or key in ("encoder", "decoder")
        ):
            out[key] = _shrink_dict(value)
        elif isinstance(value, bool) or value is None and key not in _SIZES:
            continue
        elif key in ("head_dim", "num_key_value_heads") and value is None:
            out[key] = _SIZES[key]  # "derive it" would derive it from the default sizes in some configs
        elif key in _SIZES and isinstance(value, int):
            out[key] = _SIZES[key] if value > 0 else value
        elif key in _TOKEN_IDS and isinstance(value, int) and value >= 5:
            out[key] = _TOKEN_IDS[key]
        elif key in _TOKEN_IDS and isinstance(value, list):
            out[key] = [t if 0 <= t < 5 else EOS for t in value]
        elif key in _GENERATION_ONLY:
            out[key] = None
        elif isinstance(value, float) and (
            "dropout" in key
            or key.startswith(("mask_time_prob", "mask_feature_prob"))
            or "drop_prob" in key
            or key.endswith(("_pdrop", "layerdrop"))
            or "jitter" in key
        ):
            out[key] = 0.0
        elif isinstance(value, list) and len(value) in n_layers and len(value) > LAYERS:
            out[key] = _resize_per_layer(value)  # per-layer lists (layer_types, ...) follow the layer count
        elif (
            isinstance(value, list)
            and value
            and key.endswith(("_layers", "_idxs", "_indices", "_layer_ids"))
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            kept = [v for v in value if v < LAYERS]  # lists of layer indices (mlp_only_layers, full_attn_idxs, ...)
            out[key] = kept or [LAYERS - 1]
    if "output_router_logits" in d:
        out["output_router_logits"] = True
    if d.get("is_encoder_decoder") and d.get("decoder_start_token_id") is None:
        out["decoder_start_token_id"] = PAD
    if "pad_token_id" in d and d["pad_token_id"] is None:
        out["pad_token_id"] = PAD
    if "kv_lora_rank" in d and "num_key_value_heads" in d:  # multi-head latent attention: as many kv heads as heads
        out["num_key_value_heads"] = out.get("num_attention_heads", 2)
    for expand, heads, dim in (("expand", "num_heads", "head_dim"), ("mamba_expand", "mamba_n_heads", "mamba_d_head")):
        if isinstance(d.get(expand), int) and heads in d and dim in d:  # Mamba-2 heads: heads x dim = expand x hidden
            out[heads] = d[expand] * HIDDEN // out[dim]
    if "num_experts_per_tok" in d and d["num_experts_per_tok"] is None:
        out["num_experts_per_tok"] = 2
    if "qk_rope_head_dim" in d and "head_dim" in d:
        out["head_dim"] = _SIZES["qk_rope_head_dim"]
        out["qk_head_dim"] = _SIZES["qk_rope_head_dim"] + _SIZES["qk_nope_head_dim"]
    return out


def _resize_per_layer(value: list) -> list:
    """A per-layer list cut to LAYERS entries that keeps two different kinds when it has them (a hybrid model
    keeps an attention layer and a linear/mamba one)."""
    first = value[0]
    other = next((v for v in value if v != first), None)
    if other is None:
        return value[:LAYERS]
    return [first, other] + [first] * (LAYERS - 2)


# The few classes whose config needs more than the generic shrink (each value is why).
OVERRIDES: dict[str, dict[str, Any]] = {
    "DiffLlamaForCausalLM": {"num_key_value_heads": 2},  # differential attention splits the KV heads in two
}


def tiny_config(config_class: type, overrides: dict[str, Any] | None = None) -> Any:
    """The default config of ``config_class``, shrunk, re-built through its ``__init__`` (so derived fields
    such as ``layer_types`` follow the new sizes)."""
    default = config_class()
    shrunk = _shrink_dict(default.to_dict())
    for k in ("transformers_version", "_name_or_path", "architectures"):
        shrunk.pop(k, None)
    shrunk.update(overrides or {})
    try:
        config = config_class.from_dict(copy.deepcopy(shrunk))
    except Exception:  # a config whose __init__ rejects its own to_dict: set the fields on the default instead
        config = default
        for k, v in shrunk.items():
            if not isinstance(v, dict):
                setattr(config, k, v)
    return config


def config_class_of(model_class: type, entry: Entry | None = None) -> type:
    cfg = getattr(model_class, "config_class", None)
    if cfg is not None:
        return cfg
    from transformers import CONFIG_MAPPING

    return type(CONFIG_MAPPING[entry.model_types[0]]())


def model_class(name: str) -> type:
    import transformers

    return getattr(transformers, name)


def tiny_model(name: str, seed: int = 0, entry: Entry | None = None):
    """The tiny float32 model of class ``name`` (a fixed seed), in train mode; raises when it cannot be built."""
    cls = model_class(name)
    config = tiny_config(config_class_of(cls, entry), OVERRIDES.get(name))
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        config.is_decoder = True  # BERT-style and Reformer LM heads are causal only as decoders
    torch.manual_seed(seed)
    model = cls(config).float().train()
    if hasattr(model, "set_default_language"):  # X-MOD routes every row through a language adapter
        model.set_default_language(next(iter(config.languages)))
    return model


# ---- inputs -------------------------------------------------------------------------------------------


def _first(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def tiny_batch(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """A B=2 batch: the model's main input, an attention mask with padding on row 1 (right), and labels with
    the first 2 positions of row 0 masked (a prompt) and row 1's padding masked. Encoder-decoders get
    decoder labels of length T_DEC (no decoder_input_ids: the trainers build them from the labels)."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    vocab = model.get_output_embeddings().weight.shape[0] if _has_head(model) else config.vocab_size
    main = getattr(model, "main_input_name", "input_ids")
    enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    batch: dict[str, torch.Tensor] = {}
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -2:] = 0
    if main == "input_ids":
        ids = torch.randint(5, vocab, (B, T), generator=g)
        ids[mask == 0] = PAD
        batch["input_ids"] = ids
        batch["attention_mask"] = mask
    elif main == "input_features":
        enc = _first(config, "encoder_config", "audio_config", default=config)
        mel = _first(enc, "num_mel_bins", "feature_projection_input_dim", "feature_size", "input_feat_per_channel", default=8)
        if hasattr(enc, "max_source_positions") and hasattr(enc, "num_mel_bins"):  # Whisper: frames = 2 x positions
            frames = 2 * enc.max_source_positions
            batch["input_features"] = torch.randn(B, mel, frames, generator=g)
        else:  # Speech2Text-style (B, frames, features)
            channels = _first(enc, "input_channels", default=1)
            batch["input_features"] = torch.randn(B, 16, mel * channels, generator=g)
            batch["attention_mask"] = torch.ones(B, 16, dtype=torch.long)
    elif main == "input_values":
        batch["input_values"] = torch.randn(B, 1600, generator=g)
        batch["attention_mask"] = torch.ones(B, 1600, dtype=torch.long)
    else:
        raise NotImplementedError(f"main_input_name={main!r}")
    if enc_dec or main != "input_ids":
        labels = torch.randint(5, vocab, (B, T_DEC), generator=g)
        labels[1, -2:] = IGNORE
    else:
        labels = batch["input_ids"].clone()
        labels[mask == 0] = IGNORE
    labels[0, :2] = IGNORE
    batch["labels"] = labels
    return batch


def _has_head(model) -> bool:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return isinstance(getattr(head, "weight", None), torch.Tensor)
