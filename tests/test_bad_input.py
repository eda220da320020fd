"""Bad input across the public API, as one table: every refusal is a clear error naming the argument.

Each row is ``(id, call, exception type, pattern the message must contain)``. Rows for the HuggingFace
integration and the recipes live in their own test modules' tables and are collected here when importable.
"""

from __future__ import annotations

import math

import pytest
import torch

from ls_seq import (
    LabelSmoothedCrossEntropy,
    confidence_penalty_loss,
    distillation_loss,
    expected_calibration_error,
    fit_temperature,
    gaussian_mutual_information,
    label_smoothed_cross_entropy,
    smoothness_index,
)
from ls_seq.calibration.metric import TokenCalibration

Z = torch.randn(2, 3, 5)  # (B, T, V)
Y = torch.randint(0, 5, (2, 3))
NAN_Z = Z.clone().index_fill_(-1, torch.tensor([1]), math.nan)


def _metric_update(logits, labels, **kwargs):
    TokenCalibration(**kwargs).update(logits, labels)


def _training_args(**kwargs):
    import tempfile

    from ls_seq.hf.trainer import LabelSmoothingSeq2SeqTrainingArguments

    return LabelSmoothingSeq2SeqTrainingArguments(tempfile.mkdtemp(), use_cpu=True, report_to="none", **kwargs)


def _loss_func(outputs, labels, **kwargs):
    from ls_seq import label_smoothing_loss_func

    return label_smoothing_loss_func(0.1, **{"shift_labels": False, **kwargs})(outputs, labels)


def _callback_without_eval_dataset():
    from _helpers.tiny import collate, tiny_model, training_args
    from transformers import Seq2SeqTrainer

    from ls_seq import CalibrationCallback

    trainer = Seq2SeqTrainer(model=tiny_model(), args=training_args(_training_args().output_dir), data_collator=collate)
    CalibrationCallback().attach(trainer)


def _ende_args(**kwargs):
    from ls_seq.studies.en_de.arguments import DataArguments, ModelArguments, StudyArguments

    cls = {"data": DataArguments, "model": ModelArguments, "study": StudyArguments}[kwargs.pop("which")]
    return cls(**kwargs)


def _corpus(tmp_factory, en: str, de: str):
    import gzip

    from ls_seq.studies.en_de.data import read_parallel_split

    directory = tmp_factory()
    for lang, text in (("en", en), ("de", de)):
        with gzip.open(directory / f"train.{lang}.gz", "wt", encoding="utf-8") as handle:
            handle.write(text)
    return read_parallel_split(directory, "train")


def _vision_config(**kwargs):
    import tempfile

    from vision.study import VisionStudyConfig

    return VisionStudyConfig(output_dir=tempfile.mkdtemp(), **kwargs)


def _beam_search_sweep(**kwargs):
    from ls_seq.hf.sweeps import beam_search_sweep

    model = torch.nn.Linear(1, 1)  # never reached: the arguments are checked first
    beam_search_sweep(model, None, ["a"], [1.0], **kwargs)


def _beam_temperature(t):
    from ls_seq import BeamSearchTemperature

    return BeamSearchTemperature(t)


ROWS = [
    # losses: alpha, prior, convention, reduction, shapes, dtypes, label range
    ("alpha>1", lambda: label_smoothed_cross_entropy(Z, Y, 1.5), ValueError, r"`alpha` must be in \[0, 1\], got 1.5"),
    ("alpha<0", lambda: label_smoothed_cross_entropy(Z, Y, -0.1), ValueError, "`alpha` must be in"),
    ("alpha nan", lambda: label_smoothed_cross_entropy(Z, Y, math.nan), ValueError, "`alpha` must be in"),
    ("alpha str", lambda: label_smoothed_cross_entropy(Z, Y, "0.1"), TypeError, "`alpha` must be a real number"),
    (
        "prior length",
        lambda: label_smoothed_cross_entropy(Z, Y, prior=torch.ones(4) / 4),
        ValueError,
        r"`prior` must have shape \(5,\)",
    ),
    (
        "prior negative",
        lambda: label_smoothed_cross_entropy(Z, Y, prior=torch.tensor([1.5, -0.5, 0, 0, 0])),
        ValueError,
        "non-negative",
    ),
    ("prior sum", lambda: label_smoothed_cross_entropy(Z, Y, prior=torch.ones(5) / 4), ValueError, "`prior` must sum to 1"),
    (
        "prior+fairseq",
        lambda: label_smoothed_cross_entropy(Z, Y, prior=torch.ones(5) / 5, convention="fairseq"),
        ValueError,
        "only defined for convention='uniform'",
    ),
    (
        "convention",
        lambda: label_smoothed_cross_entropy(Z, Y, convention="hinton"),
        ValueError,
        "`convention` must be one of 'uniform', 'fairseq', got 'hinton'",
    ),
    ("reduction", lambda: label_smoothed_cross_entropy(Z, Y, reduction="avg"), ValueError, "`reduction` must be one of"),
    (
        "labels out of range",
        lambda: label_smoothed_cross_entropy(Z, Y.clone().fill_(5)),
        ValueError,
        r"`labels` must be in \[0, 5\)",
    ),
    ("labels negative", lambda: label_smoothed_cross_entropy(Z, Y.clone().fill_(-1)), ValueError, "ignore_index=-100"),
    ("shape mismatch", lambda: label_smoothed_cross_entropy(Z, Y[:, :2]), ValueError, "expected \\(2, 3\\), got \\(2, 2\\)"),
    ("integer logits", lambda: label_smoothed_cross_entropy(Z.long(), Y), TypeError, "`logits` must be a floating-point tensor"),
    (
        "float labels",
        lambda: label_smoothed_cross_entropy(Z, Y.float()),
        TypeError,
        "`labels` must be an integer tensor of class indices",
    ),
    ("numpy logits", lambda: label_smoothed_cross_entropy(Z.numpy(), Y), TypeError, "`logits` must be a torch.Tensor"),
    (
        "num_items negative",
        lambda: label_smoothed_cross_entropy(Z, Y, num_items_in_batch=-3),
        ValueError,
        "`num_items_in_batch` must be >= 0",
    ),
    (
        "fairseq V=1",
        lambda: label_smoothed_cross_entropy(torch.randn(3, 1), torch.zeros(3, dtype=torch.long), convention="fairseq"),
        ValueError,
        "at least 2 classes",
    ),
    ("module alpha", lambda: LabelSmoothedCrossEntropy(alpha=2.0), ValueError, "`alpha` must be in"),
    ("module convention", lambda: LabelSmoothedCrossEntropy(convention="x"), ValueError, "`convention` must be one of"),
    ("penalty beta", lambda: confidence_penalty_loss(Z, Y, -1.0), ValueError, "`beta` must be finite and >= 0"),
    ("distill T", lambda: distillation_loss(Z, Z, Y, temperature=0.0), ValueError, "`temperature` must be finite and > 0"),
    ("distill T inf", lambda: distillation_loss(Z, Z, Y, temperature=math.inf), ValueError, "`temperature` must be finite"),
    ("distill beta", lambda: distillation_loss(Z, Z, Y, beta=1.2), ValueError, "`beta` must be in"),
    ("distill no labels", lambda: distillation_loss(Z, Z, beta=0.5), ValueError, "`labels` are required"),
    ("distill shapes", lambda: distillation_loss(Z, Z[..., :4], Y), ValueError, "`teacher_logits` must have the shape"),
    # metrics core
    ("ece norm", lambda: expected_calibration_error(Z, Y, norm="l3"), ValueError, "`norm` must be one of 'l1', 'l2', 'max'"),
    ("ece n_bins 0", lambda: expected_calibration_error(Z, Y, n_bins=0), ValueError, "`n_bins` must be an int >= 1, got 0"),
    ("ece n_bins float", lambda: expected_calibration_error(Z, Y, n_bins=1.5), TypeError, "`n_bins` must be an int"),
    ("ece nan logits", lambda: expected_calibration_error(NAN_Z, Y), ValueError, "`logits` must be finite"),
    ("metric n_bins", lambda: TokenCalibration(n_bins=0), ValueError, "`n_bins` must be an int >= 1"),
    (
        "metric temperature 0",
        lambda: TokenCalibration(temperatures=[1.0, 0.0]),
        ValueError,
        r"`temperatures\[1\]` must be finite and > 0, got 0.0",
    ),
    ("metric temperature nan", lambda: TokenCalibration(temperatures=[math.nan]), ValueError, "must be finite and > 0"),
    ("metric temperature inf", lambda: TokenCalibration(temperatures=[math.inf]), ValueError, "must be finite and > 0"),
    ("metric temperatures empty", lambda: TokenCalibration(temperatures=[]), ValueError, "at least one temperature"),
    ("metric temperatures str", lambda: TokenCalibration(temperatures="1.0"), TypeError, "`temperatures` must be a sequence"),
    ("metric nan logits", lambda: _metric_update(NAN_Z, Y), ValueError, "`logits` must be finite"),
    ("metric inf logits", lambda: _metric_update(Z.clone().fill_(math.inf), Y), ValueError, "`logits` must be finite"),
    ("metric int logits", lambda: _metric_update(Z.long(), Y), TypeError, "floating-point"),
    ("metric shape", lambda: _metric_update(Z, Y.flatten()), ValueError, "`labels` must have the shape"),
    ("fit_temperature bounds", lambda: fit_temperature(Z, Y, bounds=(2.0, 1.0)), ValueError, "`bounds` must be"),
    ("smoothness T", lambda: smoothness_index(Z, Y, temperature=-1.0), ValueError, "`temperature` must be finite and > 0"),
    (
        "smoothness K=1",
        lambda: smoothness_index(torch.randn(3, 1), torch.zeros(3, dtype=torch.long)),
        ValueError,
        "at least 2 classes",
    ),
    ("mi shape", lambda: gaussian_mutual_information(torch.randn(5)), ValueError, r"`samples` must have shape \(N, L\)"),
    ("mi one draw", lambda: gaussian_mutual_information(torch.randn(5, 1)), ValueError, "L >= 2"),
    (
        "mi zero variance",
        lambda: gaussian_mutual_information(torch.arange(4.0)[:, None].expand(4, 3)),
        ValueError,
        "zero within-example variance",
    ),
    ("mi nan", lambda: gaussian_mutual_information(torch.full((3, 3), math.nan)), ValueError, "`samples` must be finite"),
    ("mi int", lambda: gaussian_mutual_information(torch.ones(3, 3, dtype=torch.long)), TypeError, "floating-point"),
    # HuggingFace integration
    (
        "trainer alpha=1",
        lambda: _training_args(label_smoothing_factor=1.0),
        ValueError,
        r"`label_smoothing_factor` must be in \[0, 1\), got 1.0",
    ),
    (
        "trainer convention",
        lambda: _training_args(label_smoothing_convention="x"),
        ValueError,
        "`label_smoothing_convention` must be one of",
    ),
    (
        "trainer penalty",
        lambda: _training_args(confidence_penalty=-1.0),
        ValueError,
        "`confidence_penalty` must be finite and >= 0",
    ),
    ("loss_func alpha", lambda: __import__("ls_seq").label_smoothing_loss_func(1.5), ValueError, "`alpha` must be in"),
    ("loss_func no logits", lambda: _loss_func({"loss": torch.tensor(1.0)}, Y), ValueError, "the model output has no `logits`"),
    ("loss_func float labels", lambda: _loss_func({"logits": Z}, Y.float()), TypeError, "`labels` must be an integer tensor"),
    ("beam T=0", lambda: _beam_temperature(0.0), ValueError, "`temperature` must be finite and > 0, got 0.0"),
    ("beam T nan", lambda: _beam_temperature(math.nan), ValueError, "`temperature` must be finite and > 0"),
    ("beam T -1", lambda: _beam_temperature(-1.0), ValueError, "`temperature` must be finite and > 0"),
    (
        "sweep temperatures_per_call 0",
        lambda: _beam_search_sweep(temperatures_per_call=0),
        ValueError,
        "`temperatures_per_call` must be an int >= 1, got 0",
    ),
    (
        "sweep temperatures_per_call float",
        lambda: _beam_search_sweep(temperatures_per_call=2.0),
        TypeError,
        "`temperatures_per_call` must be an int",
    ),
    (
        "sweep sort_by_length str",
        lambda: _beam_search_sweep(sort_by_length="yes"),
        TypeError,
        "`sort_by_length` must be a bool, got str",
    ),
    ("callback no eval set", _callback_without_eval_dataset, ValueError, "no `eval_dataset`"),
    # the EN-DE recipe's arguments and data (checked before any work; the recipe exits non-zero)
    (
        "ende alpha=1",
        lambda: _ende_args(which="study", alphas=[0.0, 1.0]),
        ValueError,
        r"`alphas\[1\]` must be in \[0, 1\), got 1.0",
    ),
    ("ende no alphas", lambda: _ende_args(which="study", alphas=[]), ValueError, "`alphas` must hold at least one value"),
    (
        "ende repeated alphas",
        lambda: _ende_args(which="study", alphas=[0.1, 0.1]),
        ValueError,
        r"`alphas` must be distinct, got \[0.1, 0.1\]",
    ),
    ("ende alphas not a list", lambda: _ende_args(which="study", alphas=0.1), TypeError, "`alphas` must be a list of numbers in"),
    (
        "ende temperature",
        lambda: _ende_args(which="study", temperatures=[1.0, -0.5]),
        ValueError,
        r"`temperatures\[1\]` must be finite and > 0",
    ),
    ("ende preset", lambda: _ende_args(which="model", preset="huge"), ValueError, "`preset` must be one of"),
    (
        "ende dataset",
        lambda: _ende_args(which="data", dataset="wmt19"),
        ValueError,
        "`dataset` must be one of 'multi30k', 'wmt14'",
    ),
    (
        "ende data_dir",
        lambda: _ende_args(which="data", data_dir="/nonexistent/multi30k"),
        ValueError,
        "`data_dir` must be an existing directory",
    ),
    (
        "ende max_train_samples",
        lambda: _ende_args(which="data", max_train_samples=0),
        ValueError,
        "`max_train_samples` must be an int >= 1",
    ),
    # vision recipe
    ("vision dataset", lambda: _vision_config(dataset="mnist"), ValueError, "`dataset` must be one of"),
    ("vision study", lambda: _vision_config(study="pca"), ValueError, "`study` must be one of"),
    ("vision alpha", lambda: _vision_config(alpha=1.0), ValueError, r"`alpha` must be in \[0, 1\)"),
    ("vision classes", lambda: _vision_config(projection_classes=[0, 0, 1]), ValueError, "projection_classes"),
]

TMP_ROWS = [
    # rows that need a temporary directory: (id, call(tmp_factory), exception, pattern)
    ("corpus misaligned", lambda t: _corpus(t, "a\nb\n", "x\n"), ValueError, "misaligned corpus: .*train.en.gz' has 2 lines"),
    ("corpus empty", lambda t: _corpus(t, "", ""), ValueError, "empty corpus"),
    ("corpus empty line", lambda t: _corpus(t, "a\n\nc\n", "x\ny\nz\n"), ValueError, "train.en.gz' line 2 is empty"),
    (
        "corpus missing dir",
        lambda t: __import__("ls_seq.studies.en_de.data", fromlist=["x"]).read_parallel_split(t() / "nope", "train"),
        ValueError,
        "is not a directory",
    ),
]


@pytest.mark.parametrize(("call", "exc", "pattern"), [r[1:] for r in TMP_ROWS], ids=[r[0] for r in TMP_ROWS])
def test_bad_data_is_refused_naming_the_path(call, exc, pattern, tmp_path_factory):
    counter = iter(range(100))
    with pytest.raises(exc, match=pattern):
        call(lambda: tmp_path_factory.mktemp(f"corpus{next(counter)}"))


@pytest.mark.parametrize(("call", "exc", "pattern"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_refused_with_a_clear_message(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_accepted_and_computed_in_float32(dtype):
    loss = label_smoothed_cross_entropy(Z.to(dtype), Y, 0.1)
    torch.testing.assert_close(loss, label_smoothed_cross_entropy(Z.to(dtype).float(), Y, 0.1))
    metric = TokenCalibration()
    metric.update(Z.to(dtype), Y)
    assert torch.isfinite(metric.compute()["ece"])


def test_large_vocabulary_works_in_chunks():
    """A 250k vocabulary: the metric reads it in row chunks and agrees with the dense softmax reference."""
    v = 250_000
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(80, v, generator=g)
    logits[torch.arange(80), torch.arange(80)] += 12.0  # confident, mostly right predictions
    labels = torch.arange(80)
    labels[::7] = 3
    metric = TokenCalibration(n_bins=10)
    metric.update(logits, labels)
    out = metric.compute()
    probs = torch.softmax(logits.double(), -1)
    torch.testing.assert_close(out["mean_confidence"], probs.max(-1).values.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["nll"], torch.nn.functional.cross_entropy(logits.double(), labels), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        label_smoothed_cross_entropy(logits, labels, 0.1).double(),
        torch.nn.functional.cross_entropy(logits.double(), labels, label_smoothing=0.1),
        rtol=1e-5,
        atol=1e-5,
    )
