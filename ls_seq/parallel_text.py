"""Parallel text on disk: a directory of ``{split}.{lang}`` or ``{split}.{lang}.gz`` files, one sentence per
line, line ``i`` of the source file aligned with line ``i`` of the target file (Multi30k's layout), read into a
:class:`ParallelCorpus`.

Shared by ``ls-seq evaluate`` (:mod:`ls_seq.cli.eval_data`) and the EN-DE study (:mod:`ls_seq.studies.en_de.data`,
which downloads and tokenizes corpora too); it needs only the standard library, so the command reads a corpus in a
core install. Every problem names the file and, where there is one, the line.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from ls_seq.errors import InputError

__all__ = ["ParallelCorpus", "read_parallel_split"]


@dataclass(frozen=True)
class ParallelCorpus:
    """Aligned sentence pairs: ``source[i]`` translates to ``target[i]``."""

    source: list[str]
    target: list[str]

    def __post_init__(self):
        assert len(self.source) == len(self.target), "source and target must be aligned"

    def __len__(self) -> int:
        return len(self.source)

    def head(self, n: int | None) -> ParallelCorpus:
        """The first ``n`` pairs (all of them when ``n`` is None), like run_translation's ``max_*_samples``."""
        if n is None or n >= len(self):
            return self
        return ParallelCorpus(self.source[:n], self.target[:n])


def _find_file(data_dir: Path, split: str, lang: str) -> Path:
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise ValueError(
        f"data_dir={str(data_dir)!r}: no file {split}.{lang} or {split}.{lang}.gz "
        f"(expected one sentence per line, laid out as {{split}}.{{lang}}[.gz])"
    )


def _read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (gzipped when its name ends in ``.gz``), without their line breaks.

    A UTF-8 byte-order mark at the start is dropped (it would otherwise become part of the first word and of
    the vocabulary). Undecodable bytes and a truncated or damaged gzip stream raise
    :class:`ls_seq.errors.InputError` naming the file and the line.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    lines: list[str] = []
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):  # a multi-byte UTF-8 character never holds b"\n"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(
                        f"{str(path)!r} line {number} is not valid UTF-8 ({exc.reason} at byte {exc.start + 1} of the "
                        "line); convert the file to UTF-8, e.g. with iconv"
                    ) from exc
                # Only the line break is stripped: other whitespace is part of the sentence.
                lines.append(line.rstrip("\r\n"))
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(
            f"{str(path)!r} is a truncated or damaged gzip file ({exc}) after line {len(lines)}; copy or download it again"
        ) from exc
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    return lines


def read_parallel_split(data_dir: str | os.PathLike, split: str, src_lang: str = "en", tgt_lang: str = "de") -> ParallelCorpus:
    """Read ``{split}.{src_lang}[.gz]`` and ``{split}.{tgt_lang}[.gz]`` from ``data_dir``.

    Raises:
        ValueError: naming the path when the directory or a file is missing, the files differ in line
            count, a split is empty, or a line is empty on either side (an empty target would train
            the model to stop at once; an empty source makes the pair meaningless); naming the file and
            the line when a line is not UTF-8 or a gzip file is truncated.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data_dir={str(data_dir)!r} is not a directory")
    src_path, tgt_path = _find_file(data_dir, split, src_lang), _find_file(data_dir, split, tgt_lang)
    source, target = _read_lines(src_path), _read_lines(tgt_path)
    if len(source) != len(target):
        raise ValueError(
            f"misaligned corpus: {str(src_path)!r} has {len(source)} lines but {str(tgt_path)!r} "
            f"has {len(target)}; line i of one must translate line i of the other"
        )
    if not source:
        raise ValueError(f"empty corpus: {str(src_path)!r} and {str(tgt_path)!r} have no lines")
    for path, lines in ((src_path, source), (tgt_path, target)):
        for i, line in enumerate(lines):
            if not line.strip():
                raise ValueError(f"{str(path)!r} line {i + 1} is empty; remove the pair from both files")
    return ParallelCorpus(source, target)
