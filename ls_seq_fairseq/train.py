"""Training with ``fairseq-train``: the study's command line, its resume point, and the summary of its log.

* :func:`train_arguments` translates a preset (:mod:`ls_seq.studies.en_de.presets`) into ``fairseq-train`` flags
  with the ls-seq criterion; :func:`check_train_arguments` parses them with fairseq's own parser.
* :func:`train_model` runs ``fairseq-train`` (:mod:`.timed_train`) in its own process (it resumes from
  ``checkpoint_last.pt``; :func:`restore_point` checks that checkpoint first) and summarises its JSON log
  (:func:`train_summary_from_log`, in nats), with the calibration along training
  (:func:`trajectory_from_log`) when the preset asks for it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ls_seq.checkpoints import first_verified, verify_torch_archive
from ls_seq.errors import CheckpointError, LsSeqError
from ls_seq.io import atomic_write_json, read_json
from ls_seq.studies.en_de.presets import Preset
from ls_seq.studies.trajectory import TrajectoryPoint

from . import PLUGIN_DIR
from .arguments import FairseqStudyArguments
from .criterion import CRITERION_NAME
from .evaluate import trusted_checkpoints

__all__ = [
    "ARCHITECTURES",
    "check_train_arguments",
    "gpu_count",
    "restore_point",
    "train_arguments",
    "train_model",
    "train_summary_from_log",
    "trajectory_from_log",
]

# fairseq architecture of each preset; every dimension is also passed explicitly, so the name only says
# which of fairseq's registered Transformers the preset is (base and big: Vaswani et al.'s, the paper's).
ARCHITECTURES = {"base": "transformer_wmt_en_de", "big": "transformer_vaswani_wmt_en_de_big"}
_LN2 = math.log(2.0)
_NEVER = 2**31 - 1  # an epoch interval no run reaches


def gpu_count() -> int:
    """The CUDA devices fairseq-train will use (it trains on all of them); 0 on a CPU."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def train_arguments(
    alpha: float, preset: Preset, preset_name: str, data_dir: Path, save_dir: Path, args: FairseqStudyArguments
) -> list[str]:
    """The ``fairseq-train`` command line (without the program) of one model of the study.

    The preset's Transformer (tied embeddings, sinusoidal positions, scaled embeddings, as the HF study's
    Marian model) and schedule: Adam (0.9, 0.98, eps 1e-9), inverse-sqrt decay after linear warm-up, gradient
    norm clipped at 1, ``batch_size`` sentences per update over all GPUs, and the ls-seq criterion logging
    calibration in every validation: with ``preset.calibration_every > 0`` (the calibration along training)
    every that many updates (and at the end) on ``valid1`` at the preset's calibration temperatures, else at
    the end of every epoch on ``valid`` at the study's temperatures.
    """
    gpus = gpu_count()
    fp16 = (gpus > 0) if args.fp16 is None else args.fp16
    along = preset.calibration_every > 0
    grid = ",".join(repr(float(t)) for t in (preset.calibration_temperatures if along else preset.temperatures))
    flags = [
        str(data_dir),
        "--user-dir",
        PLUGIN_DIR,
        "--task",
        "translation",
        "--source-lang",
        "en",
        "--target-lang",
        "de",
        "--arch",
        ARCHITECTURES.get(preset_name, "transformer"),
        "--share-all-embeddings",
        "--encoder-layers",
        str(preset.encoder_layers),
        "--decoder-layers",
        str(preset.decoder_layers),
        "--encoder-embed-dim",
        str(preset.d_model),
        "--decoder-embed-dim",
        str(preset.d_model),
        "--encoder-ffn-embed-dim",
        str(preset.ffn_dim),
        "--decoder-ffn-embed-dim",
        str(preset.ffn_dim),
        "--encoder-attention-heads",
        str(preset.attention_heads),
        "--decoder-attention-heads",
        str(preset.attention_heads),
        "--dropout",
        repr(preset.dropout),
        "--attention-dropout",
        "0.0",
        "--activation-dropout",
        "0.0",
        "--criterion",
        CRITERION_NAME,
        "--label-smoothing",
        repr(alpha),
        "--ls-convention",
        args.ls_convention,
        "--calibration-bins",
        str(args.n_bins),
        "--calibration-temperatures",
        grid,
        "--optimizer",
        "adam",
        "--adam-betas",
        "(0.9, 0.98)",
        "--adam-eps",
        "1e-09",
        "--weight-decay",
        "0.0",
        "--clip-norm",
        "1.0",
        "--lr",
        repr(preset.learning_rate),
        "--lr-scheduler",
        "inverse_sqrt",
        "--warmup-updates",
        str(preset.warmup_steps),
        "--warmup-init-lr",
        "0.0",
        "--batch-size",
        str(max(1, preset.batch_size // max(1, gpus))),
        "--max-update",
        str(preset.max_steps),
        "--seed",
        str(args.seed),
        "--save-dir",
        str(save_dir),
        "--save-interval-updates",
        str(preset.save_steps),
        "--keep-interval-updates",
        "1",
        "--no-epoch-checkpoints",
        "--log-format",
        "json",
        "--log-interval",
        str(args.logging_steps),
        "--log-file",
        str(save_dir / "train.log"),
        "--num-workers",
        "0",
        "--ignore-unused-valid-subsets",  # valid or valid1: the other one is there unused
        # fairseq buckets an iterator's batches with numpy seeded by seed + the epoch it was built for and, by
        # default, reuses epoch 1's iterator for every later epoch, while a resumed run builds its epoch's afresh:
        # without this flag a run resumed in epoch 2 or later trained on other batches than the uninterrupted one.
        "--update-epoch-batch-itr",
        "True",
    ]
    if along:  # not at epoch ends; fairseq also validates at the last update and at mid-epoch checkpoints
        flags += [
            "--valid-subset",
            "valid1",
            "--validate-interval-updates",
            str(preset.calibration_every),
            "--validate-interval",
            str(_NEVER),
        ]
    if gpus == 0:
        flags.append("--cpu")
    if fp16:
        flags.append("--fp16")
    return flags + shlex.split(args.fairseq_train_args)


def check_train_arguments(flags: list[str]) -> None:
    """Parse ``flags`` with fairseq-train's own parser, so a bad flag fails before any training (exit 2)."""
    from fairseq import options

    options.parse_args_and_arch(options.get_training_parser(), flags)


def train_summary_from_log(log_file: Path, steps: int) -> dict[str, Any]:
    """Steps, epochs, final loss and the loss curve from fairseq's JSON log (fairseq logs base 2; here nats).

    ``--log-file`` holds one JSON object per line: the training windows (``train_inner``: ``num_updates``,
    ``loss``, ...) every ``--log-interval`` updates and an epoch summary (``train_num_updates``,
    ``train_loss``, ...) at the end of every epoch and of training. A resumed run appends and repeats the
    updates after its checkpoint: the last line of each update counts. ``final_loss`` / ``final_nll_loss``
    are the last logged window (the last epoch summary when no window was logged), as in the HF study;
    ``steps`` (the final checkpoint's updates) scales the epoch progress of that window.
    """
    windows: dict[int, dict[str, Any]] = {}
    epochs: list[dict[str, Any]] = []
    for stats in _log_objects(log_file):
        if "num_updates" in stats and "loss" in stats:
            windows[int(stats["num_updates"])] = stats
        elif "train_num_updates" in stats:
            epochs.append(stats)
    if not windows and not epochs:
        raise LsSeqError(f"{str(log_file)!r} holds no training log line: did fairseq-train run?")
    curve: list[dict[str, Any]] = [
        {"step": step, "loss": float(s["loss"]) * _LN2, "nll_loss": float(s["nll_loss"]) * _LN2}
        for step, s in sorted(windows.items())
    ]
    if curve:
        last = windows[curve[-1]["step"]]
        # fairseq's "update" is the epoch progress at that update (1.333: a third into the second epoch)
        done = float(last["update"]) * steps / int(last["num_updates"])
        final_loss, final_nll = curve[-1]["loss"], curve[-1]["nll_loss"]
    else:
        done = float(epochs[-1]["epoch"])
        final_loss, final_nll = float(epochs[-1]["train_loss"]) * _LN2, float(epochs[-1]["train_nll_loss"]) * _LN2
    return {"steps": steps, "epochs": round(done, 4), "final_loss": final_loss, "final_nll_loss": final_nll, "loss_curve": curve}


def _log_objects(log_file: Path):
    """The JSON objects of a fairseq ``--log-file``, in order (other lines skipped)."""
    with open(log_file, encoding="utf-8") as f:
        for line in f:
            text = line.split(" | ")[-1].strip()  # the console form prefixes "<time> | INFO | train_inner | "
            if not text.startswith("{"):
                continue
            try:
                yield json.loads(text)
            except json.JSONDecodeError:
                continue  # fairseq also logs its configuration as a Python dict


def trajectory_from_log(log_file: Path, subset: str = "valid1") -> tuple[list[TrajectoryPoint], float]:
    """The calibration along training in a fairseq ``--log-file`` and the seconds its validations took.

    Each validation on ``subset`` logs one JSON object (``<subset>_ece``, ``<subset>_nll_T1`` in base 2,
    ``<subset>_token_accuracy``, ``<subset>_mean_confidence``, ``<subset>_best_ece_T``, ``<subset>_best_nll_T``,
    ``<subset>_num_updates``: the criterion's metrics, :mod:`.criterion`), and :mod:`.timed_train` one
    ``{"validation_num_updates", "validation_seconds"}``. A resumed run appends and fairseq may repeat a line:
    the last one of each update counts. A point's ``epoch`` is its update times the epochs per update of the
    training windows (fairseq's ``update``: epochs done). Returns the points in update order, and the summed
    seconds of the validations at those updates.
    """
    points: dict[int, dict[str, Any]] = {}
    seconds: dict[float, float] = {}  # by update (TrajectoryPoint.step is a float)
    epochs_per_update = None
    for stats in _log_objects(log_file):
        if f"{subset}_ece" in stats:
            points[int(stats[f"{subset}_num_updates"])] = stats
        elif "validation_seconds" in stats:
            seconds[int(stats["validation_num_updates"])] = float(stats["validation_seconds"])
        elif "num_updates" in stats and "update" in stats and int(stats["num_updates"]) > 0:
            epochs_per_update = float(stats["update"]) / int(stats["num_updates"])
    out = []
    for step, s in sorted(points.items()):
        out.append(
            TrajectoryPoint(
                step=step,
                epoch=round(step * (epochs_per_update or 0.0), 4),
                ece=float(s[f"{subset}_ece"]),
                nll=float(s[f"{subset}_nll_T1"]) * _LN2,
                accuracy=float(s[f"{subset}_token_accuracy"]),
                mean_confidence=float(s[f"{subset}_mean_confidence"]),
                best_ece_temperature=float(s.get(f"{subset}_best_ece_T", 1.0)),
                best_nll_temperature=float(s.get(f"{subset}_best_nll_T", 1.0)),
            )
        )
    return out, round(sum(seconds.get(p.step, 0.0) for p in out), 2)


def _updates_in(checkpoint: Path) -> int:
    """The updates a fairseq checkpoint holds; :class:`CheckpointError` naming it when it is damaged."""
    from fairseq import checkpoint_utils

    verify_torch_archive(checkpoint)  # the zip's CRC, before unpickling anything
    with trusted_checkpoints():
        state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
    try:
        return int(state["optimizer_history"][-1]["num_updates"])
    except (KeyError, IndexError, TypeError) as exc:
        raise CheckpointError(f"{str(checkpoint)!r} holds no fairseq training state ({exc!r})") from exc


def restore_point(save_dir: Path) -> int | None:
    """The updates in ``checkpoint_last.pt``, which fairseq-train resumes from; None when there is none.

    fairseq writes its interval checkpoints (``checkpoint_<epoch>_<updates>.pt``) atomically but copies them to
    ``checkpoint_last.pt`` in place, so a kill during the copy leaves a damaged one. It is set aside (with a
    warning) and the newest interval checkpoint that is whole takes its place.

    Any checkpoint resumes bit for bit, mid-epoch or at an epoch's end, in the first epoch or a later one, since
    :func:`train_arguments` passes ``--update-epoch-batch-itr`` (measured on the test slice of 13 updates an
    epoch: resumed from update 20, or from the end-of-epoch checkpoint at update 13, the model ends with the
    uninterrupted run's weights; without the flag both differed).
    """
    last = save_dir / "checkpoint_last.pt"

    def updates_in_name(path: Path) -> int:
        tail = path.stem.rsplit("_", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    intervals = sorted(save_dir.glob("checkpoint_*_*.pt"), key=updates_in_name, reverse=True)
    found = first_verified([last, *intervals], _updates_in)
    if found is None:
        return None
    path, updates = found
    if path != last:
        tmp = save_dir / "checkpoint_last.pt.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, last)
    return updates


def _die_with_parent() -> None:
    """In the fairseq-train child: receive SIGKILL when the study's process dies, however it dies (Linux), so
    a killed study leaves no training that writes on into its run directory."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def train_model(alpha: float, preset: Preset, flags: list[str], model_dir: Path, args: FairseqStudyArguments) -> dict[str, Any]:
    """Run ``fairseq-train`` (resuming from ``checkpoint_last.pt`` when there is one) and return its summary.

    ``model_dir/train_summary.json`` marks a finished model; a resumed study does not train it again, nor one
    whose ``checkpoint_last.pt`` already holds every update (killed before the summary was written: fairseq
    would take one more update).
    """
    summary_path = model_dir / "train_summary.json"
    if summary_path.is_file():
        return read_json(summary_path)
    save_dir = model_dir / "checkpoints"
    save_dir.mkdir(parents=True, exist_ok=True)
    resumed_at = restore_point(save_dir)
    start = time.time()
    if resumed_at is None or resumed_at < preset.max_steps:
        env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # fairseq resumes from its own pickles
        if args.cpu_threads is not None:
            env["OMP_NUM_THREADS"] = str(args.cpu_threads)
        linux = sys.platform.startswith("linux")
        proc = subprocess.run(
            [sys.executable, "-m", "ls_seq_fairseq.timed_train", *flags],
            env=env,
            check=False,
            preexec_fn=_die_with_parent if linux else None,
        )
        if proc.returncode != 0:
            raise LsSeqError(
                f"fairseq-train of the alpha={alpha} model exited with {proc.returncode} (its log: "
                f"{save_dir / 'train.log'}); fix the cause and run again with --resume"
            )
    steps = restore_point(save_dir)
    if steps != preset.max_steps:
        raise LsSeqError(f"fairseq-train stopped at update {steps} of {preset.max_steps}; see {save_dir / 'train.log'}")
    summary = {"alpha": alpha, **train_summary_from_log(save_dir / "train.log", steps)}
    if preset.calibration_every > 0:  # the HF study's keys (ls_seq.studies.en_de.training)
        points, seconds = trajectory_from_log(save_dir / "train.log")
        summary["calibration_trajectory"] = [dataclasses.asdict(p) for p in points]
        summary["calibration_seconds"] = seconds
    summary["resumed_from"] = None if resumed_at is None else f"checkpoint_last.pt (update {resumed_at})"
    summary["command"] = shlex.join(["fairseq-train", *flags])
    summary["seconds"] = round(time.time() - start, 1)
    atomic_write_json(summary_path, summary)
    return summary
