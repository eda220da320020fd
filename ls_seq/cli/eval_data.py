"""Evaluation data for ``ls-seq evaluate``: read records, check them, tokenize them into scored examples.

Accepted forms (the first that fits the path):

* a dataset saved with ``datasets.Dataset.save_to_disk`` (a directory with ``dataset_info.json`` or a
  ``DatasetDict`` with ``dataset_dict.json``: ``--split`` chooses);
* a parallel-text directory ``{split}.{source_lang}[.gz]`` / ``{split}.{target_lang}[.gz]`` (as the EN-DE
  study reads Multi30k), for encoder-decoders;
* a JSONL file (one JSON object per line).

Records: ``prompt`` + ``completion`` (causal LMs: only the completion's tokens are scored), ``text`` (causal
LMs: every token but the first is scored), ``source`` + ``target`` (encoder-decoders: every target token).
Every problem names the file and, for JSONL, the line; nothing is guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ls_seq._extras import require
from ls_seq.errors import InputError

__all__ = ["EvalData", "read_records", "tokenize_records"]

IGNORE = -100
CAUSAL_FORMS = (("prompt", "completion"), ("text",))
SEQ2SEQ_FORMS = (("source", "target"),)


@dataclass
class EvalData:
    """Tokenized examples (``input_ids`` and ``labels`` with -100 where not scored) and, for BLEU, the texts."""

    examples: list[dict[str, list[int]]]
    sources: list[str] | None = None
    targets: list[str] | None = None
    form: tuple[str, ...] = ()


def _jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(
                        f"`data` {str(path)!r} line {number} is not valid JSON: {err.msg} (column {err.colno})"
                    ) from err
                if not isinstance(record, dict):
                    raise InputError(f"`data` {str(path)!r} line {number} must be a JSON object, got {type(record).__name__}")
                records.append({**record, "_line": number})
    except UnicodeDecodeError as err:
        raise InputError(f"`data` {str(path)!r} is not UTF-8 text (byte {err.start}): give a JSONL file") from err
    return records


def read_records(
    path: str | Path, *, split: str = "test", source_lang: str = "en", target_lang: str = "de", max_samples: int | None = None
) -> list[dict[str, Any]]:
    """The records at ``path`` (first ``max_samples``); an :class:`~ls_seq.errors.InputError` naming the problem."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"`data`: no such file or directory: {str(path)!r}")
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        datasets = require("datasets", extra="datasets", feature=f"`data` {str(path)!r} (a datasets.save_to_disk directory)")

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise InputError(f"`split`: the dataset {str(path)!r} has the splits {sorted(loaded)}, not {split!r}")
            loaded = loaded[split]
        rows = loaded if max_samples is None else loaded.select(range(min(max_samples, len(loaded))))
        records = [{**row, "_line": i + 1} for i, row in enumerate(rows)]
    elif path.is_dir():
        from ls_seq.parallel_text import read_parallel_split

        try:
            corpus = read_parallel_split(path, split, source_lang, target_lang)
        except ValueError as err:
            raise InputError(f"`data` {str(path)!r} (a parallel-text directory): {err}") from err
        records = [{"source": s, "target": t, "_line": i + 1} for i, (s, t) in enumerate(zip(corpus.source, corpus.target))]
    else:
        records = _jsonl(path)
    records = records if max_samples is None else records[:max_samples]
    if not records:
        raise InputError(f"`data` {str(path)!r} holds no records")
    return records


def _form(records: list[dict[str, Any]], forms: tuple[tuple[str, ...], ...], path: str, kind: str) -> tuple[str, ...]:
    first = records[0]
    form = next((f for f in forms if all(k in first for k in f)), None)
    if form is None:
        allowed = " or ".join("/".join(f) for f in forms)
        raise InputError(
            f"`data` {path!r} record {first['_line']} has the keys {sorted(k for k in first if k != '_line')}; a {kind} "
            f"needs {allowed}"
        )
    for record in records:
        for key in form:
            value = record.get(key)
            if not isinstance(value, str):
                what = "has no" if key not in record else f"has a non-text ({type(value).__name__})"
                raise InputError(f"`data` {path!r} record {record['_line']} {what} `{key}` (every record needs {'/'.join(form)})")
    return form


def tokenize_records(
    records: list[dict[str, Any]], tokenizer: Any, *, causal: bool, max_length: int, path: str = "data"
) -> EvalData:
    """Tokenize records for a causal LM (``causal``) or an encoder-decoder; labels are -100 where not scored."""
    if causal:
        form = _form(records, CAUSAL_FORMS, path, "causal LM")
        examples = []
        for record in records:
            if form == ("text",):
                ids = tokenizer(record["text"], truncation=True, max_length=max_length)["input_ids"]
                labels = list(ids)
            else:
                prompt = tokenizer(record["prompt"])["input_ids"]
                completion = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
                if tokenizer.eos_token_id is not None:
                    completion = completion + [tokenizer.eos_token_id]
                ids = (prompt + completion)[:max_length]
                labels = ([IGNORE] * len(prompt) + completion)[:max_length]
            if sum(label != IGNORE for label in labels[1:]) == 0:
                raise InputError(
                    f"`data` {path!r} record {record['_line']} has no token to score (after truncation to --max_length)"
                )
            examples.append({"input_ids": ids, "labels": labels})
        return EvalData(examples, form=form)
    form = _form(records, SEQ2SEQ_FORMS, path, "encoder-decoder")
    sources, targets = [r["source"] for r in records], [r["target"] for r in records]
    enc = tokenizer(sources, text_target=targets, truncation=True, max_length=max_length)
    examples = [{"input_ids": i, "labels": t} for i, t in zip(enc["input_ids"], enc["labels"])]
    return EvalData(examples, sources=sources, targets=targets, form=form)
