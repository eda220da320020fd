"""Fixtures of the fairseq plugin's tests: fairseq itself as the reference, on a binarised Multi30k slice.

Every test module here starts with ``pytest.importorskip("fairseq")``: the tests are skipped only where fairseq
is not installed (CI installs it, see .ci/run). There is no ``__init__.py`` in this folder on purpose: with
``tests`` on ``sys.path`` a package called ``fairseq`` here would shadow the real one.

Training runs in-process through fairseq's own ``fairseq_cli.train.main`` (as fairseq's tests do), so a run
costs its updates, not an interpreter start; the distributed test starts real processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


def _import_fairseq_quietly() -> None:
    """Import fairseq (where installed) without its side effect on logging: its import calls
    ``logging.basicConfig(level=logging.DEBUG)`` (fairseq/models/wav2vec/wav2vec2_classification.py), which
    would put every test of this session at DEBUG. The root logger is left as it was."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        import fairseq  # noqa: F401
        import fairseq_cli.generate
        import fairseq_cli.preprocess
        import fairseq_cli.train  # noqa: F401
    except ImportError:
        pass
    finally:
        root.setLevel(level)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)


_import_fairseq_quietly()

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "ls_seq_fairseq"

# A 1+1-layer Transformer of width 32 (about 0.1 M parameters with the ~950-token joint vocabulary).
TINY_MODEL = [
    "--arch",
    "transformer",
    "--share-all-embeddings",
    "--encoder-layers",
    "1",
    "--decoder-layers",
    "1",
    "--encoder-embed-dim",
    "32",
    "--decoder-embed-dim",
    "32",
    "--encoder-ffn-embed-dim",
    "64",
    "--decoder-ffn-embed-dim",
    "64",
    "--encoder-attention-heads",
    "2",
    "--decoder-attention-heads",
    "2",
]
# Adam with inverse-sqrt warm-up, batches of at most 1000 tokens, no dropout (so that runs that split the
# same batches differently, 2 workers or 2 accumulation steps, see the same function).
TINY_TRAINING = [
    "--optimizer",
    "adam",
    "--adam-betas",
    "(0.9, 0.98)",
    "--lr",
    "1e-3",
    "--lr-scheduler",
    "inverse_sqrt",
    "--warmup-updates",
    "10",
    "--max-tokens",
    "1000",
    "--dropout",
    "0.0",
    "--seed",
    "1",
    "--cpu",
    "--no-epoch-checkpoints",
    "--num-workers",
    "0",
    "--log-format",
    "json",
    "--log-interval",
    "10",
    "--no-progress-bar",
    "--ignore-unused-valid-subsets",  # the data has valid1 (the study's calibration along training) beside valid
]


@dataclass
class DataBin:
    """A binarised slice: ``path`` (fairseq-preprocess output), the tokenizer, the text corpora per subset."""

    path: Path
    tokenizer: object
    splits: dict

    def token_lines(self, subset: str, lang: str = "de") -> list[str]:
        """The tokenized text fairseq-preprocess binarised (pieces separated by spaces)."""
        return (self.path.parent / "text" / f"{subset}.{lang}").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def plugin():
    """The plugin, imported the way ``--user-dir`` imports it."""
    from fairseq import utils

    utils.import_user_module(argparse.Namespace(user_dir=str(PLUGIN_DIR)))
    return sys.modules["ls_seq_fairseq"]


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory, plugin) -> DataBin:
    """400 training, 64 validation (the first 32 also as valid1) and 64 test pairs of Multi30k, tokenized and binarised by the study's code."""
    from ls_seq.studies.en_de.data import ParallelCorpus, load_corpora
    from ls_seq.studies.en_de.evaluation import _derangement
    from ls_seq.studies.en_de.tokenizer import load_or_train_tokenizer
    from ls_seq_fairseq.data import binarize, write_token_files

    data_dir = ROOT.parent / "shared" / "data" / "multi30k"  # as tests/conftest.py's multi30k_dir
    if not (data_dir / "train.en.gz").exists():
        pytest.skip(f"real Multi30k data not found at {data_dir}")
    corpora = load_corpora(data_dir=data_dir, max_samples={"train": 400, "validation": 64, "test": 64})
    base = tmp_path_factory.mktemp("fairseq_data")
    tokenizer = load_or_train_tokenizer(base / "tokenizer", corpora["train"].source + corpora["train"].target, 1000)
    test = corpora["test"]
    perm = _derangement(len(test), 0)
    splits = {
        "train": corpora["train"],
        "valid": corpora["validation"],
        "valid1": corpora["validation"].head(32),
        "test": test,
        "test1": ParallelCorpus([test.source[j] for j in perm], list(test.target)),
        "test2": test.head(24),
    }
    write_token_files(splits, tokenizer, base / "text", max_length=128)
    return DataBin(binarize(base / "text", base / "bin"), tokenizer, splits)


class _JsonLines(logging.Handler):
    """Collects fairseq's JSON log lines as ``(tag, stats)``: tag ``train_inner``, ``valid``, ``train``."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.lines: list[tuple[str, dict]] = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("{"):
            self.lines.append((record.name, json.loads(message)))


def _fairseq_train(data: Path, save_dir: Path, *flags: str) -> list[tuple[str, dict]]:
    """``fairseq-train DATA --save-dir SAVE_DIR FLAGS`` in this process; returns its JSON log lines."""
    from fairseq import options
    from fairseq_cli import train

    argv = [str(data), "--save-dir", str(save_dir), "--user-dir", str(PLUGIN_DIR), *TINY_MODEL, *TINY_TRAINING, *flags]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    handler = _JsonLines()
    progress_logger = logging.getLogger("fairseq.logging.progress_bar")  # renamed to the tag while it logs
    level = progress_logger.level
    progress_logger.setLevel(logging.INFO)  # under pytest the root logger is at WARNING
    progress_logger.addHandler(handler)
    try:
        train.main(args)
    finally:
        progress_logger.removeHandler(handler)
        progress_logger.setLevel(level)
    return handler.lines


@pytest.fixture(scope="session")
def fairseq_train():
    """``fairseq_train(data, save_dir, *flags)``: the tiny model trained in this process; its JSON log lines."""
    return _fairseq_train


@pytest.fixture(scope="session")
def build(data_bin):
    """``build(*flags)``: task, tiny model (seed 0), criterion and the first training batch, as fairseq-train
    builds them from ``flags``."""

    def setup(*flags: str):
        from fairseq import options, tasks
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        argv = [str(data_bin.path), "--user-dir", str(PLUGIN_DIR), *TINY_MODEL, *TINY_TRAINING, *flags]
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
        task = tasks.setup_task(cfg.task)
        torch.manual_seed(0)
        model = task.build_model(cfg.model)
        criterion = task.build_criterion(cfg.criterion)
        task.load_dataset("train")
        batches = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=1000).next_epoch_itr(shuffle=False)
        return task, model, criterion, next(iter(batches))

    return setup


@pytest.fixture(scope="session")
def trained(data_bin, tmp_path_factory):
    """30 updates of the tiny model with the ls-seq criterion (alpha 0.1, calibration at T = 0.8, 1, 1.5):
    its last validation log line, the number of validations, and ``checkpoint_last.pt`` (saved right after
    that validation, from the same weights)."""
    save_dir = tmp_path_factory.mktemp("trained")
    lines = _fairseq_train(
        data_bin.path,
        save_dir,
        "--criterion",
        "ls_seq_label_smoothed_cross_entropy",
        "--label-smoothing",
        "0.1",
        "--calibration-temperatures",
        "0.8,1.5",
        "--max-update",
        "30",
    )
    valid = [stats for tag, stats in lines if tag == "valid"]
    return {"valid": valid[-1], "checkpoint": save_dir / "checkpoint_last.pt", "n_valid_logs": len(valid)}


@pytest.fixture(scope="session")
def tiny_flags() -> list[str]:
    """The tiny model's and schedule's fairseq-train flags (for runs in their own processes)."""
    return [*TINY_MODEL, *TINY_TRAINING]


@pytest.fixture(scope="session")
def load_state():
    """``load_state(path)``: a fairseq checkpoint written by these tests (a pickle, fairseq's format)."""
    return lambda path: torch.load(path, map_location="cpu", weights_only=False)
