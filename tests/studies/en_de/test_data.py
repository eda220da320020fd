"""Reading and checking parallel corpora; the Multi30k download's checksum guard (no network: urlopen is faked)."""

from __future__ import annotations

import gzip
import hashlib
import io

import pytest

from ls_seq.errors import InputError
from ls_seq.studies.en_de import data
from ls_seq.studies.en_de.data import (
    MULTI30K_SHA256,
    ParallelCorpus,
    download_multi30k,
    load_corpora,
    read_parallel_split,
)

EN = ["A man sleeps.", "Two dogs  play , outside.", "Ünïcödé: 3 €"]
DE = ["Ein Mann schläft.", "Zwei Hunde spielen draußen.", "Ünïcödé: 3 €"]


def _write(path, lines, gz=False):
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("gz", [False, True])
def test_read_split_returns_the_lines_unchanged(tmp_path, gz):
    suffix = ".gz" if gz else ""
    _write(tmp_path / f"train.en{suffix}", EN, gz)
    _write(tmp_path / f"train.de{suffix}", DE, gz)
    corpus = read_parallel_split(tmp_path, "train")
    # Only the line break is removed: inner double spaces and non-ASCII survive.
    assert corpus.source == EN and corpus.target == DE


def test_misaligned_files_are_refused_naming_both_paths(tmp_path):
    _write(tmp_path / "val.en", EN)
    _write(tmp_path / "val.de", DE[:2])
    with pytest.raises(ValueError, match="misaligned") as err:
        read_parallel_split(tmp_path, "val")
    assert str(tmp_path / "val.en") in str(err.value) and str(tmp_path / "val.de") in str(err.value)
    assert "3 lines" in str(err.value) and "has 2" in str(err.value)


def test_missing_directory_and_file_are_named(tmp_path):
    with pytest.raises(ValueError, match="not a directory") as err:
        read_parallel_split(tmp_path / "nowhere", "train")
    assert str(tmp_path / "nowhere") in str(err.value)
    _write(tmp_path / "train.en", EN)
    with pytest.raises(ValueError, match=r"no file train\.de or train\.de\.gz"):
        read_parallel_split(tmp_path, "train")


def test_empty_line_and_empty_corpus_are_refused(tmp_path):
    _write(tmp_path / "a.en", EN)
    _write(tmp_path / "a.de", [DE[0], "  ", DE[2]])
    with pytest.raises(ValueError, match=r"a\.de' line 2 is empty"):
        read_parallel_split(tmp_path, "a")
    (tmp_path / "b.en").write_text("")
    (tmp_path / "b.de").write_text("")
    with pytest.raises(ValueError, match="empty corpus"):
        read_parallel_split(tmp_path, "b")


def test_load_corpora_split_names_and_max_samples(tmp_path):
    for stem in ("tr", "dev", "tst"):
        _write(tmp_path / f"{stem}.en", EN)
        _write(tmp_path / f"{stem}.de", DE)
    corpora = load_corpora(
        data_dir=tmp_path,
        split_names={"train": "tr", "validation": "dev", "test": "tst"},
        max_samples={"train": 2, "test": 10},
    )
    assert len(corpora["train"]) == 2 and corpora["train"].source == EN[:2]
    assert len(corpora["validation"]) == 3 and len(corpora["test"]) == 3  # n larger than the split: all
    with pytest.raises(ValueError, match="dataset"):
        load_corpora("europarl", cache_dir=tmp_path)


def test_parallel_corpus_asserts_alignment():
    with pytest.raises(AssertionError):
        ParallelCorpus(["a"], [])


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_checks_sha256_and_leaves_nothing_on_mismatch(tmp_path, monkeypatch):
    payload = gzip.compress(b"A line.\n")
    fetched = []

    def fake_urlopen(url, timeout):
        fetched.append(url)
        return _FakeResponse(payload)

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_multi30k(tmp_path)
    assert list((tmp_path / "multi30k").iterdir()) == []  # no truncated or wrong file, no temporary left

    good = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(data, "MULTI30K_SHA256", {name: good for name in MULTI30K_SHA256})
    out = download_multi30k(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(MULTI30K_SHA256)
    assert fetched[-1].endswith("/data/task1/raw/test_2016_flickr.de.gz")
    n = len(fetched)
    download_multi30k(tmp_path)  # every file present with the right checksum: nothing fetched again
    assert len(fetched) == n


@pytest.mark.slow
def test_real_multi30k_matches_the_published_checksums_and_sizes(multi30k_dir):
    for name, expected in MULTI30K_SHA256.items():
        assert hashlib.sha256((multi30k_dir / name).read_bytes()).hexdigest() == expected, name
    corpora = load_corpora(data_dir=multi30k_dir)
    assert [len(corpora[s]) for s in ("train", "validation", "test")] == [29000, 1014, 1000]


def test_wmt14_goes_through_datasets_with_the_papers_splits(monkeypatch):
    """No network: ``datasets.load_dataset`` is faked; checked are the config, the split names and the cleaning."""
    import datasets

    calls = []

    def fake_load_dataset(name, config, split, cache_dir=None):
        calls.append((name, config, split))
        rows = [{"en": "A house.", "de": "Ein Haus."}, {"en": " ", "de": "Leer."}, {"en": "Two.", "de": "Zwei."}]
        return {"translation": rows}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpora = load_corpora("wmt14", max_samples={"train": 100})
    assert calls == [("wmt14", "de-en", "train[:100]"), ("wmt14", "de-en", "validation"), ("wmt14", "de-en", "test")]
    assert corpora["test"].source == ["A house.", "Two."] and corpora["test"].target == ["Ein Haus.", "Zwei."]


# ------------------------------------------------------------------------------------------------------
# Damaged and odd files: named with the line, never a traceback from the codec


@pytest.mark.parametrize("gz", [False, True])
def test_invalid_utf8_is_refused_naming_the_file_and_line(tmp_path, gz):
    raw = "\n".join(EN).encode("utf-8").replace(b"Two", b"Tw\xff") + b"\n"  # Latin-1 byte in line 2
    path = tmp_path / ("train.en.gz" if gz else "train.en")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    _write(tmp_path / "train.de", DE)
    with pytest.raises(InputError, match=rf"'{path}' line 2 is not valid UTF-8 \(invalid start byte at byte 3 of the line\)"):
        read_parallel_split(tmp_path, "train")


def test_a_truncated_gzip_is_refused_naming_the_file(tmp_path):
    lines = [f"sentence {i} " + "x" * (i % 50) for i in range(5000)]
    blob = gzip.compress(("\n".join(lines) + "\n").encode("utf-8"))
    (tmp_path / "train.en.gz").write_bytes(blob[: len(blob) // 2])  # an interrupted copy
    _write(tmp_path / "train.de", lines)
    with pytest.raises(InputError, match=r"train\.en\.gz' is a truncated or damaged gzip file \(.*\) after line \d+"):
        read_parallel_split(tmp_path, "train")


def test_a_byte_order_mark_is_stripped_and_crlf_line_ends_removed(tmp_path):
    (tmp_path / "train.en").write_bytes(("\ufeff" + "\r\n".join(EN) + "\r\n").encode("utf-8"))
    _write(tmp_path / "train.de", DE, gz=False)
    corpus = read_parallel_split(tmp_path, "train")
    assert corpus.source == EN  # no "\ufeffA" as the first word, no "\r" at the ends
