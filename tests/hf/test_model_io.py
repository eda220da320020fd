"""ls_seq.hf.model_io: alignment, scored-label counts and output layers of every family, against hand-written rules.

References: a causal LM's logits at t score labels[t + 1] (written here as slicing), an encoder-decoder's
score labels[t]; transformers' own loss (``model(..., labels=...).loss``) for packed rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers.families import CAUSAL, FAMILIES, causal_collate, causal_examples, family_model
from _helpers.tiny import IGNORE, VOCAB

from ls_seq.hf.model_io import model_io_of, scored_labels, teacher_forced_logits, unwrap_model


@pytest.mark.parametrize("family", FAMILIES)
def test_alignment_of_every_family(family):
    io = model_io_of(family_model(family))
    assert io.shifts_labels == (family in CAUSAL)
    assert io.is_encoder_decoder == (family not in CAUSAL)
    assert io.output_size == VOCAB
    labels = torch.tensor([[IGNORE, 5, 6, 7], [8, 9, IGNORE, IGNORE]])
    scored = io.scored_labels(labels)
    if family in CAUSAL:
        assert scored.tolist() == [[5, 6, 7, IGNORE], [9, IGNORE, IGNORE, IGNORE]]
    else:
        assert scored.tolist() == labels.tolist()
    assert int(io.count(labels)) == int((scored != IGNORE).sum())


def test_trainer_count_rule_follows_loss_type():
    """transformers counts labels[..., 1:] only for loss_type ForCausalLM; GPT-2's loss_type is None."""
    gpt2, llama = family_model("gpt2"), family_model("llama")
    assert not model_io_of(gpt2).trainer_counts_scored_labels
    assert model_io_of(llama).trainer_counts_scored_labels
    assert model_io_of(family_model("bart")).trainer_counts_scored_labels  # nothing is shifted: all labels count
    gpt2.loss_type = "ForCausalLM"  # GPT-2's own loss *is* ForCausalLMLoss; saying so fixes HF's count
    assert model_io_of(gpt2).trainer_counts_scored_labels


def test_shift_labels_in_the_batch_are_used_as_they_are():
    io = model_io_of(family_model("llama"))
    labels = torch.tensor([[1, 2, 3]])
    given = torch.tensor([[7, IGNORE, 9]])
    assert io.scored_labels(labels, given).tolist() == given.tolist()
    with pytest.raises(ValueError, match="`shift_labels` must have the shape"):
        io.scored_labels(labels, given[:, :2])


@pytest.mark.parametrize("family", CAUSAL)
def test_packed_rows_score_no_token_across_sequences(family):
    """DataCollatorWithFlattening packs rows into one with -100 at each sequence's first label, so the shift
    never pairs one sequence's last logit with the next one's first token; the summed loss equals
    transformers' own ForCausalLMLoss on the packed row (its mean times the scored count)."""
    from transformers import DataCollatorWithFlattening

    model = family_model(family).eval()
    examples = [{"input_ids": e["input_ids"], "labels": e["input_ids"]} for e in causal_examples(3, seed=1)]
    packed = DataCollatorWithFlattening(return_position_ids=True)(examples)
    io = model_io_of(model)
    scored = io.scored_labels(packed["labels"])[0]  # (T,)
    ids = packed["input_ids"][0]
    ends = torch.tensor([len(e["input_ids"]) for e in examples]).cumsum(0) - 1  # last position of each sequence
    assert bool((scored[ends] == IGNORE).all()), "a sequence's last logit must score nothing"
    keep = scored != IGNORE
    assert torch.equal(scored[keep], ids[1:][keep[:-1]]), "every scored label is the next token of its sequence"
    n_scored = sum(len(e["input_ids"]) - 1 for e in examples)
    assert int(io.count(packed["labels"])) == n_scored
    with torch.no_grad():
        out = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], labels=packed["labels"])
        mine = F.cross_entropy(
            out.logits.reshape(-1, VOCAB), io.scored_labels(packed["labels"]).reshape(-1), reduction="sum", ignore_index=IGNORE
        )
    assert float(mine) == pytest.approx(float(out.loss) * n_scored, rel=1e-5)


def test_scored_labels_function_and_teacher_forced_logits_agree_with_slicing():
    model = family_model("gpt2").eval()
    batch = causal_collate(causal_examples(4, seed=2))
    with torch.no_grad():
        logits, scored = teacher_forced_logits(model, batch)
        direct = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, direct)
    assert torch.equal(scored[:, :-1], batch["labels"][:, 1:])
    assert bool((scored[:, -1] == IGNORE).all())
    assert torch.equal(scored, scored_labels(batch["labels"], True))


def test_peft_and_wrappers_are_unwrapped():
    from peft import LoraConfig, get_peft_model

    base = family_model("llama")
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    assert unwrap_model(lora) is base
    io = model_io_of(lora)
    assert io.shifts_labels and io.model is base
    head, bias = io.output_layer()
    assert head is base.lm_head and bias is None


def test_output_layer_bias_includes_final_logits_bias():
    bart = family_model("bart")
    head, bias = model_io_of(bart).output_layer()
    torch.testing.assert_close(bias, bart.final_logits_bias.reshape(-1))
    assert head is bart.lm_head


def test_a_model_it_cannot_place_is_refused():
    from transformers import BertConfig, BertModel

    bert = BertModel(
        BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(ValueError, match="cannot tell how BertModel's logits align"):
        model_io_of(bert)
    assert model_io_of(bert, shift_labels=False).shifts_labels is False
