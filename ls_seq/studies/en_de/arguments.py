"""The EN-DE study's command-line arguments: which corpus (:class:`DataArguments`), which model
(:class:`ModelArguments`), and what to train and measure (:class:`StudyArguments`), each validated in
``__post_init__``; :func:`resolve_preset` turns them into one :class:`~ls_seq.studies.en_de.presets.Preset`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ls_seq.checks import (
    check_alpha,
    check_alphas,
    check_choice,
    check_positive_int,
    check_seeds,
    check_temperatures,
)
from ls_seq.studies.en_de.presets import PRESETS, Preset, apply_overrides, get_preset

__all__ = ["DataArguments", "ModelArguments", "StudyArguments", "resolve_preset"]


def _check_optional_ints(args: Any, names: tuple[str, ...], minimum: int = 1) -> None:
    """``check_positive_int`` on each field of ``args`` in ``names`` that was given (not None)."""
    for name in names:
        if getattr(args, name) is not None:
            check_positive_int(getattr(args, name), name, minimum=minimum)


@dataclass
class DataArguments:
    """Which corpus, which splits, how much of it."""

    dataset: str = field(default="multi30k", metadata={"help": "'multi30k' (downloaded with checksums) or 'wmt14'."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Local corpus: {split}.{en,de}[.gz], one sentence per line (overrides --dataset)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Download/cache directory (default ~/.cache/ls_seq)."})
    train_split: str = field(default="train", metadata={"help": "File stem of the training split in --data_dir."})
    validation_split: str = field(default="val", metadata={"help": "File stem of the validation split in --data_dir."})
    test_split: str = field(default="test_2016_flickr", metadata={"help": "File stem of the test split in --data_dir."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep the first n training pairs (default: the preset's; tiny-lowdata: 3000)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep the first n test pairs for every test measurement."}
    )
    max_bleu_samples: int | None = field(
        default=None, metadata={"help": "Beam-search BLEU sweep on the first n test pairs (default: the preset's)."}
    )

    def __post_init__(self):
        check_choice(self.dataset, "dataset", ["multi30k", "wmt14"])
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ValueError(f"`data_dir` must be an existing directory, got {self.data_dir!r}")
        _check_optional_ints(self, ("max_train_samples", "max_eval_samples", "max_bleu_samples"))


@dataclass
class ModelArguments:
    """A preset and the fields to override in it (None keeps the preset's value)."""

    preset: str = field(default="tiny", metadata={"help": f"One of {sorted(PRESETS)}."})
    vocab_size: int | None = field(default=None, metadata={"help": "Joint BPE vocabulary size."})
    d_model: int | None = field(default=None, metadata={"help": "Model width."})
    encoder_layers: int | None = field(default=None, metadata={"help": "Encoder layers."})
    decoder_layers: int | None = field(default=None, metadata={"help": "Decoder layers."})
    attention_heads: int | None = field(default=None, metadata={"help": "Attention heads (encoder and decoder)."})
    ffn_dim: int | None = field(default=None, metadata={"help": "Feed-forward width."})
    dropout: float | None = field(default=None, metadata={"help": "Dropout probability."})

    def __post_init__(self):
        check_choice(self.preset, "preset", sorted(PRESETS))
        _check_optional_ints(self, ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim"))
        if self.dropout is not None:
            check_alpha(self.dropout, "dropout", allow_one=False)


@dataclass
class StudyArguments:
    """Alphas, training schedule, temperature grid, output and resume."""

    output_dir: str = field(default="outputs/ende", metadata={"help": "Where results, figures and models go."})
    alphas: list[float] = field(
        default_factory=lambda: [0.0, 0.1], metadata={"help": "Label-smoothing alphas, one model each, in [0, 1)."}
    )
    temperatures: list[float] | None = field(
        default=None, metadata={"help": "Temperature grid of the sweep (default: the preset's)."}
    )
    num_beams: int | None = field(default=None, metadata={"help": "Beam size (default: the preset's, 4)."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps per model (default: the preset's)."})
    learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Linear warm-up steps before inverse-sqrt decay."})
    batch_size: int | None = field(default=None, metadata={"help": "Sentences per optimizer step (all processes)."})
    eval_batch_size: int | None = field(default=None, metadata={"help": "Sentences per evaluation batch."})
    generate_batch_size: int | None = field(
        default=None, metadata={"help": "Sequences per beam-search generate call (default: the preset's)."}
    )
    temperatures_per_call: int | None = field(
        default=None,
        metadata={"help": "BLEU sweep: temperatures decoded together in one generate call (default: the preset's)."},
    )
    save_steps: int | None = field(default=None, metadata={"help": "Checkpoint every n steps (what --resume continues from)."})
    n_bins: int = field(default=15, metadata={"help": "Calibration bins (the paper: 15)."})
    calibration_every: int | None = field(
        default=None,
        metadata={
            "help": "Calibration along training: validation ECE/NLL/best temperature every n steps (0: off; "
            "default: the preset's)."
        },
    )
    calibration_samples: int | None = field(
        default=None, metadata={"help": "Calibration along training on the first n validation pairs (default: the preset's)."}
    )
    calibration_temperatures: list[float] | None = field(
        default=None, metadata={"help": "Temperature grid of the calibration along training (default: the preset's)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of model initialisation, data order and dropout."})
    seeds: list[int] | None = field(
        default=None,
        metadata={
            "help": "Several seeds (replaces --seed): every model is trained per seed in seed_<s>/, and the "
            "top-level report gives mean, std and t-intervals over seeds and the claims' verdicts."
        },
    )
    resume: bool = field(default=False, metadata={"help": "Continue a killed run in output_dir: finished work is kept."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start over in a non-empty output_dir."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (default: on when a GPU supports it)."})
    logging_steps: int = field(default=50, metadata={"help": "Log the training loss every n steps."})
    cpu_threads: int | None = field(
        default=None,
        metadata={
            "help": "Intra-op threads per process when running on CPU (default: the cores this process may use, "
            "divided among the processes on this machine; `accelerate launch` without a config pins 1)."
        },
    )

    def __post_init__(self):
        self.alphas = check_alphas(self.alphas)
        if self.temperatures is not None:
            self.temperatures = check_temperatures(self.temperatures)
        if self.calibration_temperatures is not None:
            self.calibration_temperatures = check_temperatures(self.calibration_temperatures, "calibration_temperatures")
        _check_optional_ints(
            self,
            (
                "num_beams",
                "max_steps",
                "batch_size",
                "eval_batch_size",
                "save_steps",
                "generate_batch_size",
                "temperatures_per_call",
                "cpu_threads",
            ),
        )
        _check_optional_ints(self, ("warmup_steps", "calibration_every"), minimum=0)
        _check_optional_ints(self, ("calibration_samples",))
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}")
        check_positive_int(self.n_bins, "n_bins")
        check_positive_int(self.seed, "seed", minimum=0)
        if self.seeds is not None:
            self.seeds = check_seeds(self.seeds)
        check_positive_int(self.logging_steps, "logging_steps")
        if self.resume and self.overwrite_output_dir:
            raise ValueError("`resume` and `overwrite_output_dir` exclude each other: keep the run or start over")


class StudyOptions(Protocol):
    """What :func:`resolve_preset` and the run configuration read of the study arguments: a dataclass with these
    fields, :class:`StudyArguments` or the fairseq study's ``FairseqStudyArguments``."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    alphas: list[float]
    seed: int
    n_bins: int
    logging_steps: int


def resolve_preset(model_args: ModelArguments, study_args: StudyOptions, data_args: DataArguments) -> Preset:
    """The preset named by ``model_args.preset`` with every flag that was given applied on top.

    A flag overrides the preset field of the same name, whichever argument dataclass declares it.
    """
    preset_fields = {f.name for f in dataclasses.fields(Preset)}
    overrides = {
        f.name: getattr(args, f.name)
        for args in (model_args, study_args, data_args)
        for f in dataclasses.fields(args)
        if f.name in preset_fields
    }
    return apply_overrides(get_preset(model_args.preset), **overrides)
