"""Presets: flags override fields, bad names are refused, the Marian config follows the preset."""

from __future__ import annotations

import pytest

from ls_seq.studies.en_de.presets import (
    PRESETS,
    apply_overrides,
    build_model_config,
    get_preset,
)


def test_every_preset_builds_a_consistent_config_and_sweeps_through_one():
    for name, preset in PRESETS.items():
        cfg = build_model_config(preset, vocab_size=preset.vocab_size, pad_token_id=0, eos_token_id=1)
        assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_ffn_dim) == (preset.d_model, preset.encoder_layers, preset.ffn_dim)
        assert cfg.decoder_start_token_id == 0 and cfg.share_encoder_decoder_embeddings and cfg.scale_embedding
        assert 1.0 in preset.temperatures, name  # the T=1 point is the untouched model
        assert preset.warmup_steps < preset.max_steps


def test_base_is_vaswani_base():
    base = get_preset("base")
    assert (base.d_model, base.encoder_layers, base.decoder_layers, base.ffn_dim, base.attention_heads, base.dropout) == (
        512,
        6,
        6,
        2048,
        8,
        0.1,
    )


def test_overrides_replace_given_fields_only():
    tiny = get_preset("tiny")
    new = apply_overrides(tiny, d_model=64, max_steps=None, temperatures=[1.0, 2.0])
    assert new.d_model == 64 and new.max_steps == tiny.max_steps and new.temperatures == (1.0, 2.0)
    with pytest.raises(ValueError, match="unknown preset field"):
        apply_overrides(tiny, width=3)


def test_unknown_preset_and_bad_heads_are_refused():
    with pytest.raises(ValueError, match="`preset` must be one of"):
        get_preset("huge")
    with pytest.raises(ValueError, match="divisible by `attention_heads`"):
        build_model_config(apply_overrides(get_preset("tiny"), d_model=100, attention_heads=3), 100, 0, 1)
