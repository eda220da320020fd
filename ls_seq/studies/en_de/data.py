"""Parallel corpora for the EN-DE study: local files, Multi30k (downloaded with checksums), WMT14.

A corpus on disk is a directory holding ``{split}.{lang}`` or ``{split}.{lang}.gz`` files, one sentence
per line, line ``i`` of the source file aligned with line ``i`` of the target file (Multi30k's layout), read by
:func:`read_parallel_split` (:mod:`ls_seq.parallel_text`, which ``ls-seq evaluate`` shares in a core install).
Everything returns a :class:`ParallelCorpus`: two equally long lists of strings; ``_tokenize`` makes one a
``datasets.Dataset`` of token ids and ``_batches`` collates such a dataset for evaluation.
"""

from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from ls_seq.io import sha256_file
from ls_seq.parallel_text import ParallelCorpus, read_parallel_split

__all__ = [
    "MULTI30K_SHA256",
    "MULTI30K_SPLITS",
    "MULTI30K_URL",
    "ParallelCorpus",
    "download_multi30k",
    "load_corpora",
    "load_wmt14",
    "read_parallel_split",
]

# Multi30k task 1 (Elliott et al., 2016), raw (untokenized) text as published by its authors.
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
MULTI30K_SPLITS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}
# sha256 of the gzipped files, so a truncated or altered download is refused instead of trained on.
MULTI30K_SHA256 = {
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
}
# WMT14 as the paper uses it: newstest2013 to validate, newstest2014 to test (the `datasets` split names).
WMT14_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


def download_multi30k(cache_dir: str | os.PathLike) -> Path:
    """Download Multi30k task 1 (EN, DE; train/val/test_2016_flickr) into ``cache_dir/multi30k``.

    Each file is fetched into a temporary file, checked against :data:`MULTI30K_SHA256` and only then
    renamed into place, so an interrupted or corrupted download never looks complete. Files already
    present with the right checksum are not fetched again.

    Returns:
        The directory, readable by :func:`read_parallel_split`.
    """
    target_dir = Path(cache_dir) / "multi30k"
    target_dir.mkdir(parents=True, exist_ok=True)
    for name, expected in MULTI30K_SHA256.items():
        path = target_dir / name
        if path.is_file() and sha256_file(path) == expected:
            continue
        fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(MULTI30K_URL.format(name=name), timeout=60) as r:
                for block in iter(lambda: r.read(1 << 20), b""):
                    out.write(block)
            actual = sha256_file(Path(tmp))
            if actual != expected:
                raise ValueError(f"checksum mismatch for {MULTI30K_URL.format(name=name)}: sha256 {actual}, expected {expected}")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target_dir


def load_wmt14(split: str, cache_dir: str | os.PathLike | None = None, max_samples: int | None = None) -> ParallelCorpus:
    """WMT14 EN-DE through ``datasets.load_dataset("wmt14", "de-en")`` (the paper's data).

    ``split`` is ``train``, ``validation`` (newstest2013) or ``test`` (newstest2014). Pairs with an
    empty side are dropped (the web-crawled training data has a few).
    """
    import datasets  # imported here: only this path needs it, and it is slow to import

    selector = split if max_samples is None else f"{split}[:{max_samples}]"
    ds = datasets.load_dataset("wmt14", "de-en", split=selector, cache_dir=None if cache_dir is None else str(cache_dir))
    pairs = [(row["en"], row["de"]) for row in ds["translation"] if row["en"].strip() and row["de"].strip()]
    return ParallelCorpus([p[0] for p in pairs], [p[1] for p in pairs])


def load_corpora(
    dataset: str = "multi30k",
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    split_names: dict[str, str] | None = None,
    max_samples: dict[str, int | None] | None = None,
    src_lang: str = "en",
    tgt_lang: str = "de",
) -> dict[str, ParallelCorpus]:
    """The ``train``/``validation``/``test`` corpora of the study.

    Args:
        dataset: ``"multi30k"`` or ``"wmt14"``; ignored when ``data_dir`` is given.
        data_dir: a local corpus directory (see :func:`read_parallel_split`); takes precedence.
        cache_dir: where Multi30k is downloaded / WMT14 is cached.
        split_names: file names of the splits in a local directory, e.g.
            ``{"train": "train", "validation": "val", "test": "test_2016_flickr"}`` (Multi30k's).
        max_samples: per split, keep only the first n pairs (None: all).

    Returns:
        ``{"train": ParallelCorpus, "validation": ..., "test": ...}``.
    """
    max_samples = max_samples or {}
    if data_dir is None and dataset == "wmt14":
        return {s: load_wmt14(WMT14_SPLITS[s], cache_dir, max_samples.get(s)) for s in ("train", "validation", "test")}
    if data_dir is None:
        if dataset != "multi30k":
            raise ValueError(f"dataset must be one of ['multi30k', 'wmt14'], got {dataset!r}")
        data_dir = download_multi30k(cache_dir or Path.home() / ".cache" / "ls_seq")
    names = {**MULTI30K_SPLITS, **(split_names or {})}
    return {
        s: read_parallel_split(data_dir, names[s], src_lang, tgt_lang).head(max_samples.get(s))
        for s in ("train", "validation", "test")
    }


def _tokenize(corpus: ParallelCorpus, tokenizer: Any, max_length: int):
    """A ``datasets.Dataset`` of ``input_ids``, ``labels`` and ``length`` (for length-grouped batches)."""
    import datasets

    src = tokenizer(corpus.source, truncation=True, max_length=max_length)["input_ids"]
    tgt = tokenizer(corpus.target, truncation=True, max_length=max_length)["input_ids"]
    return datasets.Dataset.from_dict(
        {"input_ids": src, "labels": tgt, "length": [max(len(s), len(t)) for s, t in zip(src, tgt)]}
    )


def _batches(dataset, indices: list[int], collator, batch_size: int):
    """Collated batches of ``dataset[indices]`` in order (the evaluation set of this process)."""
    for start in range(0, len(indices), batch_size):
        rows = dataset.select(indices[start : start + batch_size])
        yield collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
