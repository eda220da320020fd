"""BeamSearchTemperature and generate_with_temperature.

References: ``torch.log_softmax(scores / T)``; HF's own generate (T = 1 must be the identity); and a
brute-force check that the beams really change with T on a model whose predictions are not flat.
"""

from __future__ import annotations

import pytest
import torch
from _helpers.tiny import EOS, VOCAB, collate, tiny_examples, tiny_model
from transformers import LogitsProcessor, LogitsProcessorList

from ls_seq.hf.generation import BeamSearchTemperature, generate_with_temperature


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_processor_returns_log_softmax_of_scaled_scores(temperature):
    scores = torch.randn(6, 50) * 3
    before = scores.clone()
    out = BeamSearchTemperature(temperature)(torch.zeros(6, 2, dtype=torch.long), scores)
    torch.testing.assert_close(out, torch.log_softmax(scores / temperature, dim=-1))
    torch.testing.assert_close(scores, before, rtol=0, atol=0)  # input untouched
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(6))  # a distribution at any T


def test_temperature_one_is_identity_on_log_probabilities_and_keeps_dtype():
    log_probs = torch.log_softmax(torch.randn(4, 30), dim=-1)
    torch.testing.assert_close(BeamSearchTemperature(1.0)(None, log_probs), log_probs)
    half = log_probs.to(torch.bfloat16)
    out = BeamSearchTemperature(2.0)(None, half)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.log_softmax(half.float() / 2.0, -1), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature_is_rejected(bad):
    with pytest.raises(ValueError, match="temperature"):
        BeamSearchTemperature(bad)


def test_bad_temperature_type_is_rejected():
    with pytest.raises(TypeError, match="temperature"):
        BeamSearchTemperature("2")


@pytest.fixture(scope="module")
def peaky_model():
    """Random tiny Marian with a scaled output layer: confident, non-flat predictions."""
    return tiny_model("marian", seed=1, scale=8.0).eval()


@pytest.fixture(scope="module")
def sources():
    batch = collate(tiny_examples(12, seed=21))
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


GEN = dict(num_beams=4, max_new_tokens=8, do_sample=False, early_stopping=True)


def test_temperature_one_equals_plain_beam_search_and_hf_temperature_is_ignored(peaky_model, sources):
    plain = peaky_model.generate(**sources, **GEN)
    torch.testing.assert_close(generate_with_temperature(peaky_model, 1.0, **sources, **GEN), plain, rtol=0, atol=0)
    # What the docs state: without sampling HF's temperature= changes nothing.
    torch.testing.assert_close(peaky_model.generate(**sources, temperature=5.0, **GEN), plain, rtol=0, atol=0)


class MarkovScores(LogitsProcessor):
    """A known, non-flat next-token model: log-probabilities ``table[previous token]`` replace the network's."""

    def __init__(self, table):
        self.log_probs = torch.log_softmax(table, dim=-1)

    def __call__(self, input_ids, scores):
        return self.log_probs[input_ids[:, -1]].to(scores.dtype)


def test_beam_search_finds_the_tempered_optimum_which_changes_with_temperature(peaky_model, sources):
    """With num_beams = V a 2-token beam search is exhaustive: it must return the argmax of the tempered score."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(VOCAB, VOCAB, generator=g) * 2.5  # (previous, next) logits, far from flat
    table[:, EOS] = -1e9  # no early end: every hypothesis has 2 tokens
    one = {k: v[:1] for k, v in sources.items()}
    best = {}
    for t in (0.5, 1.0, 4.0):
        out = generate_with_temperature(
            peaky_model,
            t,
            **one,
            num_beams=VOCAB,
            max_new_tokens=2,
            do_sample=False,
            length_penalty=0.0,
            logits_processor=LogitsProcessorList([MarkovScores(table)]),
        )
        lp = torch.log_softmax(torch.log_softmax(table, -1) / t, dim=-1)  # (V, V) tempered next-token log-probs
        start = peaky_model.config.decoder_start_token_id
        a, b = divmod(int((lp[start][:, None] + lp).argmax()), VOCAB)  # brute force over all V^2 pairs
        assert out[0].tolist() == [start, a, b], f"T={t}"
        best[t] = (a, b)
    assert len(set(best.values())) > 1, f"the best sequence should depend on T: {best}"


def test_beams_of_a_real_model_change_with_temperature(sources):
    model = tiny_model("marian", seed=3, scale=16.0).eval()  # seed/scale where beam search != greedy
    plain = model.generate(**sources, **GEN)
    colder = generate_with_temperature(model, 0.3, **sources, **GEN)
    width = max(plain.shape[1], colder.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]), value=EOS)
    assert bool((pad(plain) != pad(colder)).any())


def test_sequence_scores_are_those_of_the_tempered_model(peaky_model, sources):
    """With length_penalty=0 a beam's score is the sum of its tokens' tempered log-probabilities."""
    t = 2.0
    one = {k: v[:1] for k, v in sources.items()}
    out = generate_with_temperature(
        peaky_model, t, **one, num_beams=3, max_new_tokens=6, length_penalty=0.0, return_dict_in_generate=True, output_scores=True
    )
    seq = out.sequences[:1]  # (1, L) best beam, starting with the decoder start token
    with torch.no_grad():
        logits = peaky_model(**one, decoder_input_ids=seq[:, :-1]).logits  # (1, L-1, V)
    logp = torch.log_softmax(logits / t, dim=-1).gather(-1, seq[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(out.sequences_scores[0], logp.sum(), rtol=1e-4, atol=1e-4)


def test_helper_keeps_user_processors_and_validates_temperature(peaky_model, sources):
    user = LogitsProcessorList()
    generate_with_temperature(peaky_model, 2.0, **sources, logits_processor=user, **GEN)
    assert len(user) == 0, "the caller's list must not be modified"
    with pytest.raises(ValueError, match="temperature"):
        generate_with_temperature(peaky_model, -1.0, **sources, **GEN)
