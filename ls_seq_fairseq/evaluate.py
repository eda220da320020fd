"""Measure a fairseq checkpoint: teacher-forced calibration sums (the criterion's) and ``fairseq-generate``.

* :func:`calibration_sums` runs fairseq's validation loop (``task.valid_step`` with the ls-seq criterion in
  evaluation mode, what ``fairseq-validate`` does) over subsets and returns the summed per-bin statistics,
  the numbers fairseq's logs reduce into ``ece``/``nll_T<t>``.
* :func:`generate` is ``fairseq-generate`` (its ``main``, with its own argument parser) at one temperature,
  and returns the hypotheses in the order of the subset.

fairseq checkpoints are pickles; torch >= 2.6 loads them only with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``,
which :func:`trusted_checkpoints` sets while fairseq loads one. Use it only on checkpoints you wrote.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ls_seq.checks import check_positive_int, check_temperatures

__all__ = ["calibration_sums", "generate", "read_hypotheses", "trusted_checkpoints"]


@contextlib.contextmanager
def trusted_checkpoints() -> Iterator[None]:
    """Inside, ``torch.load`` unpickles fairseq checkpoints (torch >= 2.6 refuses them by default)."""
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous


def calibration_sums(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    subsets: Sequence[str],
    temperatures: Sequence[float],
    *,
    n_bins: int = 15,
    max_tokens: int = 4096,
) -> dict[str, Any]:
    """Per subset, the summed calibration statistics of the checkpoint's teacher-forced predictions.

    Returns ``{subset: {"temperatures": [...], "bin_count": [[...]] (T, n_bins), "bin_confidence",
    "bin_correct", "nll_sum" (T,) in nats, "n_tokens", "n_correct"}}`` as plain lists (float64 values), the
    input of :func:`ls_seq_fairseq.study.evaluation_from_fairseq`; temperature 1 is always included.
    """
    from fairseq import checkpoint_utils, utils

    from .criterion import LsSeqLabelSmoothedCrossEntropyCriterion, calibration_from_logging_outputs

    temperatures = check_temperatures(temperatures)
    check_positive_int(n_bins, "n_bins")
    use_cuda = torch.cuda.is_available()
    with trusted_checkpoints():
        models, saved_cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides={"data": str(data_dir)}
        )
    model = models[0].eval()
    if use_cuda:
        model.cuda()
    criterion = LsSeqLabelSmoothedCrossEntropyCriterion(
        task, sentence_avg=False, label_smoothing=0.0, calibration_bins=n_bins, calibration_temperatures=temperatures
    )
    out = {}
    for subset in subsets:
        task.load_dataset(subset, combine=False, epoch=1, task_cfg=saved_cfg.task)
        batches = task.get_batch_iterator(
            dataset=task.dataset(subset),
            max_tokens=max_tokens,
            max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ).next_epoch_itr(shuffle=False)
        logs = []
        for sample in batches:
            sample = utils.move_to_cuda(sample) if use_cuda else sample
            logs.append(task.valid_step(sample, model, criterion)[2])
        stats = calibration_from_logging_outputs(logs)
        out[subset] = {name: value.tolist() for name, value in stats.items()}
    return out


def read_hypotheses(path: str | os.PathLike, n: int | None = None) -> list[str]:
    """The ``H-<id>`` lines of a ``fairseq-generate`` output file, as token strings in id order.

    Raises ``ValueError`` naming the file when an id of ``range(n)`` is missing (an interrupted run).
    """
    hyps: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("H-"):
                head, _score, *text = line.rstrip("\n").split("\t")
                hyps[int(head[2:])] = text[0] if text else ""
    n = len(hyps) if n is None else n
    missing = [i for i in range(n) if i not in hyps]
    if missing or len(hyps) != n:
        raise ValueError(f"{str(path)!r} holds {len(hyps)} hypotheses, expected ids 0..{n - 1} (missing e.g. {missing[:3]})")
    return [hyps[i] for i in range(n)]


def generate(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    subset: str,
    results_dir: str | os.PathLike,
    *,
    temperature: float | None,
    beam: int,
    max_len_b: int,
    batch_size: int,
    n_sentences: int,
) -> list[str]:
    """``fairseq-generate DATA --path CKPT --gen-subset SUBSET --beam B [--temperature T]`` and its hypotheses.

    ``temperature=None`` leaves the flag out (plain ``fairseq-generate``). fairseq divides the decoder's
    logits by T before its log-softmax in beam search, so every step's scores are renormalised,
    ``log_softmax(z / T)``. The output file is ``results_dir/generate-SUBSET.txt``; the returned list holds
    the ``H-`` token strings in the subset's order.
    """
    from fairseq import options
    from fairseq_cli import generate as fairseq_generate

    argv = [
        str(data_dir),
        "--path",
        str(checkpoint),
        "--gen-subset",
        subset,
        "--beam",
        str(beam),
        "--max-len-a",
        "0",
        "--max-len-b",
        str(max_len_b),
        "--batch-size",
        str(batch_size),
        "--results-path",
        str(results_dir),
    ]
    if temperature is not None:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"`temperature` must be finite and > 0, got {temperature!r}")
        argv += ["--temperature", repr(float(temperature))]
    if not torch.cuda.is_available():
        argv.append("--cpu")
    parser = options.get_generation_parser()
    args = options.parse_args_and_arch(parser, argv)
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    with trusted_checkpoints():
        fairseq_generate.main(args)
    return read_hypotheses(Path(results_dir) / f"generate-{subset}.txt", n_sentences)
