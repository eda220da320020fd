"""The EN-DE corpora as fairseq data: the study's tokenizer applied, then ``fairseq-preprocess``.

The text comes from the HF study's reader (:func:`ls_seq.studies.en_de.data.load_corpora`) and is split into
the subword pieces of the same joint tokenizer (:mod:`ls_seq.studies.en_de.tokenizer`), one sentence per line,
pieces separated by spaces, truncated as the HF study truncates (``max_length`` tokens with ``</s>``).
``fairseq-preprocess --joined-dictionary`` binarises it (one vocabulary for source and target, as the
tied embeddings need). The subsets are fairseq's names: ``train``, ``valid``, the extra validation set
``valid1`` (the first ``calibration_samples`` validation pairs, for the calibration along training), ``test``
and the extra test sets ``test1`` (the test sources deranged against their targets: does the model use its
source?) and ``test2`` (the first ``n_bleu`` test pairs, for the BLEU temperature sweep).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ls_seq.parallel_text import ParallelCorpus

__all__ = ["SUBSETS", "binarize", "is_binarized", "write_token_files"]

SRC, TGT = "en", "de"
# fairseq subset name -> what it holds
SUBSETS = {
    "train": "train",
    "valid": "validation",
    "valid1": "calibration along training",
    "test": "test",
    "test1": "test, sources deranged",
    "test2": "BLEU subset",
}


def is_binarized(dest_dir: Path) -> bool:
    """Whether ``dest_dir`` holds the dictionary and every subset of :data:`SUBSETS` (an older study's data
    directory lacks ``valid1``)."""
    files = [dest_dir / "dict.de.txt"] + [dest_dir / f"{name}.{SRC}-{TGT}.{lang}.idx" for name in SUBSETS for lang in (SRC, TGT)]
    return all(f.is_file() for f in files)


def _pieces(tokenizer: Any, text: str, max_length: int) -> str:
    # The HF study truncates to max_length ids including </s>; fairseq appends </s> itself.
    return " ".join(tokenizer.tokenize(text)[: max_length - 1])


def write_token_files(splits: dict[str, ParallelCorpus], tokenizer: Any, directory: Path, max_length: int) -> None:
    """``directory/{name}.{en,de}``: the pieces of every pair of ``splits`` (fairseq subset name -> corpus)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, corpus in splits.items():
        for lang, lines in ((SRC, corpus.source), (TGT, corpus.target)):
            with open(directory / f"{name}.{lang}", "w", encoding="utf-8") as f:
                f.writelines(_pieces(tokenizer, line, max_length) + "\n" for line in lines)


def binarize(text_dir: Path, dest_dir: Path, *, workers: int = 1) -> Path:
    """``fairseq-preprocess`` of the files of :func:`write_token_files` into ``dest_dir`` (returned).

    Written to a temporary directory and renamed, so ``dest_dir`` exists only when complete; a complete
    ``dest_dir`` is kept as it is (the resume of a study), one that lacks a subset is binarised again (the
    dictionary comes from ``train`` alone, so the other subsets' ids do not change).
    """
    from fairseq import options
    from fairseq_cli import preprocess

    if is_binarized(dest_dir):
        return dest_dir
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest_dir.parent, prefix=f".{dest_dir.name}."))
    try:
        valids = ",".join(str(text_dir / name) for name in ("valid", "valid1"))
        tests = ",".join(str(text_dir / name) for name in ("test", "test1", "test2"))
        argv = [
            "--source-lang",
            SRC,
            "--target-lang",
            TGT,
            "--joined-dictionary",
            "--workers",
            str(workers),
            "--trainpref",
            str(text_dir / "train"),
            "--validpref",
            valids,
            "--testpref",
            tests,
            "--destdir",
            str(tmp),
        ]
        preprocess.main(options.get_preprocessing_parser().parse_args(argv))
        if dest_dir.exists():  # an incomplete directory from an older run
            shutil.rmtree(dest_dir)
        os.replace(tmp, dest_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest_dir
