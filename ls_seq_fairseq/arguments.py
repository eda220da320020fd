"""The fairseq study's own arguments: alphas, the smoothing convention, schedule, temperature grid, output, resume.

The data and model arguments are the HF study's (:mod:`ls_seq.studies.en_de.arguments`); parsed together by
``recipes/fairseq_en_de.py`` with ``HfArgumentParser``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from ls_seq.checks import check_alphas, check_choice, check_positive_int, check_temperatures
from ls_seq.functional.losses import CONVENTIONS
from ls_seq.studies.en_de.arguments import _check_optional_ints

__all__ = ["FairseqStudyArguments"]


@dataclass
class FairseqStudyArguments:
    """Alphas, the smoothing convention, schedule, temperature grid, output and resume (fairseq trainer)."""

    output_dir: str = field(default="outputs/ende_fairseq", metadata={"help": "Where results, figures and models go."})
    alphas: list[float] = field(
        default_factory=lambda: [0.0, 0.1], metadata={"help": "Label-smoothing alphas, one model each, in [0, 1)."}
    )
    ls_convention: str = field(
        default="uniform",
        metadata={"help": "Meaning of alpha: 'uniform' (the paper, the HF study) or 'fairseq' (eps / (V - 1))."},
    )
    temperatures: list[float] | None = field(default=None, metadata={"help": "Temperature grid (default: the preset's)."})
    num_beams: int | None = field(default=None, metadata={"help": "Beam size (default: the preset's)."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Updates per model, fairseq's --max-update (default: the preset's)."}
    )
    learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Linear warm-up updates before inverse-sqrt decay (>= 1)."})
    batch_size: int | None = field(default=None, metadata={"help": "Sentences per update (all GPUs together)."})
    eval_max_tokens: int = field(default=4096, metadata={"help": "Tokens per batch of the teacher-forced passes."})
    generate_batch_size: int | None = field(
        default=None, metadata={"help": "Sentences per fairseq-generate batch (default: the preset's)."}
    )
    save_steps: int | None = field(default=None, metadata={"help": "Checkpoint every n updates (what --resume continues from)."})
    n_bins: int = field(default=15, metadata={"help": "Calibration bins (the paper: 15)."})
    calibration_every: int | None = field(
        default=None,
        metadata={
            "help": "Calibration along training: validation ECE/NLL/best temperature every n updates, in "
            "fairseq-train's validation (0: off; default: the preset's)."
        },
    )
    calibration_samples: int | None = field(
        default=None, metadata={"help": "Calibration along training on the first n validation pairs (default: the preset's)."}
    )
    calibration_temperatures: list[float] | None = field(
        default=None, metadata={"help": "Temperature grid of the calibration along training (default: the preset's)."}
    )
    seed: int = field(default=42, metadata={"help": "fairseq's --seed: initialisation, data order, dropout."})
    resume: bool = field(default=False, metadata={"help": "Continue a killed run in output_dir: finished work is kept."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start over in a non-empty output_dir."})
    fp16: bool | None = field(default=None, metadata={"help": "fairseq's --fp16 (default: on when a GPU is there)."})
    logging_steps: int = field(default=50, metadata={"help": "fairseq's --log-interval."})
    cpu_threads: int | None = field(default=None, metadata={"help": "OMP_NUM_THREADS of fairseq-train (default: as set)."})
    fairseq_train_args: str = field(
        default="", metadata={"help": "More fairseq-train flags, appended last (e.g. '--max-tokens 4096 --update-freq 2')."}
    )

    def __post_init__(self):
        self.alphas = check_alphas(self.alphas)
        check_choice(self.ls_convention, "ls_convention", CONVENTIONS)
        if self.temperatures is not None:
            self.temperatures = check_temperatures(self.temperatures)
        if self.calibration_temperatures is not None:
            self.calibration_temperatures = check_temperatures(self.calibration_temperatures, "calibration_temperatures")
        _check_optional_ints(self, ("calibration_every",), minimum=0)
        # warm-up >= 1: fairseq's inverse_sqrt schedule divides by it
        _check_optional_ints(
            self,
            (
                "num_beams",
                "max_steps",
                "batch_size",
                "save_steps",
                "generate_batch_size",
                "cpu_threads",
                "warmup_steps",
                "calibration_samples",
            ),
        )
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}")
        for name in ("eval_max_tokens", "n_bins", "logging_steps"):
            check_positive_int(getattr(self, name), name)
        try:
            shlex.split(self.fairseq_train_args)
        except ValueError as err:
            raise ValueError(f"`fairseq_train_args` must be shell-quoted flags, got {self.fairseq_train_args!r}: {err}") from err
