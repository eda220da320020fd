"""A joint source/target subword tokenizer trained on the training text, as Vaswani et al. use.

BPE over Metaspace-split words with punctuation isolated (so "Haus." and "Haus" share a token), no
normalisation, and a Metaspace decoder: ``decode(encode(s)) == s`` for any text made of characters
seen in training. Saved and loaded as a ``PreTrainedTokenizerFast`` (a ``tokenizer.json``, no code).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ls_seq.errors import CheckpointError
from ls_seq.io import directory_mode

__all__ = ["EOS", "PAD", "UNK", "load_or_train_tokenizer", "train_joint_tokenizer"]

# Marian's convention: decoder_start_token_id = pad_token_id, and every sequence ends with </s>.
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def train_joint_tokenizer(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer of at most ``vocab_size`` tokens on ``texts`` (source and target together).

    Args:
        texts: training sentences of both languages; the vocabulary is shared so the model can tie
            its encoder, decoder and output embeddings.
        vocab_size: size of the vocabulary including the three special tokens ``<pad> </s> <unk>``.
        min_frequency: merges seen fewer times are not learned.

    Returns:
        A fast tokenizer that appends ``</s>`` to every encoded sentence (ids: pad 0, eos 1, unk 2).
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
            pre_tokenizers.Punctuation("isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, EOS, UNK], show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, clean_up_tokenization_spaces=False
    )


def load_or_train_tokenizer(directory: str | os.PathLike, texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Load the tokenizer saved in ``directory``, or train one on ``texts`` and save it there.

    The cache is what makes ``--resume`` and a second model of the same study see the same ids. It is
    written to a temporary directory and renamed, so a killed run never leaves half a tokenizer.
    """
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        try:
            return PreTrainedTokenizerFast.from_pretrained(str(directory))
        except Exception as exc:  # tokenizers reports a damaged file without naming it
            raise CheckpointError(
                f"{str(directory / 'tokenizer.json')!r} is damaged ({' '.join(str(exc).split())}); the models of this "
                "run were trained with it: restore it, or start over with --overwrite_output_dir"
            ) from exc
    tokenizer = train_joint_tokenizer(texts, vocab_size)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        tmp.chmod(directory_mode())  # mkdtemp's 0o700 would hide the tokenizer of a shared run
        tokenizer.save_pretrained(str(tmp))
        if directory.exists():  # an empty or partial directory from an older run
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return PreTrainedTokenizerFast.from_pretrained(str(directory))
