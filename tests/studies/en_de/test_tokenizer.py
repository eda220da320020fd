"""The joint BPE tokenizer: lossless round trip, Marian's special ids, and the on-disk cache."""

from __future__ import annotations

import pytest

from ls_seq.studies.en_de.tokenizer import load_or_train_tokenizer, train_joint_tokenizer

TEXTS = [
    "A man in a blue shirt, standing on a ladder.",
    "Ein Mann in einem blauen Hemd steht auf einer Leiter.",
    "Two dogs (one brown) play in the snow!",
    'Zwei Hunde  spielen im Schnee: "schön".',
    "Ältere Frauen überqueren die Straße.",
] * 4


def test_round_trip_is_lossless_and_ends_with_eos():
    tok = train_joint_tokenizer(TEXTS, vocab_size=150)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) <= 150
    for text in TEXTS[:5]:
        ids = tok(text)["input_ids"]
        assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text  # double spaces, quotes, umlauts included


def test_punctuation_is_isolated_so_words_share_tokens():
    tok = train_joint_tokenizer(TEXTS, vocab_size=400)
    pieces = tok.convert_ids_to_tokens(tok("Leiter.")["input_ids"])
    assert pieces[-2:] == [".", "</s>"]


def test_cache_is_reused_and_leaves_no_temporary(tmp_path):
    first = load_or_train_tokenizer(tmp_path / "tok", TEXTS, 150)
    # Different texts: a cached tokenizer must be loaded, not retrained (resume and the second model see the same ids).
    second = load_or_train_tokenizer(tmp_path / "tok", ["completely different words"] * 3, 150)
    assert first.get_vocab() == second.get_vocab()
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


@pytest.mark.slow
def test_round_trip_on_the_real_test_set(multi30k_dir):
    from ls_seq.studies.en_de.data import load_corpora

    corpora = load_corpora(data_dir=multi30k_dir)
    tok = train_joint_tokenizer(corpora["train"].source + corpora["train"].target, 8000)
    assert len(tok) == 8000
    test = corpora["test"].source + corpora["test"].target
    bad = [s for s in test if tok.decode(tok(s)["input_ids"], skip_special_tokens=True) != s]
    assert bad == []
