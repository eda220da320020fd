"""CalibrationCallback: its metrics equal TokenCalibration and cross-entropy computed directly on the model's logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers.tiny import (
    IGNORE,
    VOCAB,
    collate,
    model_logits,
    tiny_dataset,
    tiny_model,
    training_args,
)
from transformers import Seq2SeqTrainer

from ls_seq.calibration.metric import TokenCalibration
from ls_seq.hf.callbacks import CalibrationCallback

N_EVAL = 13  # not a multiple of the batch size 4: the last batch is short


def direct_logits(model, dataset):
    """All teacher-forced logits/labels of ``dataset``, flattened to tokens, in one batch (the reference)."""
    batch = collate(list(dataset))
    with torch.no_grad():
        logits = model_logits(model.eval(), batch)
    return logits.reshape(-1, VOCAB), batch["labels"].reshape(-1)


def make_trainer(tmp_path, model, eval_dataset):
    args = training_args(str(tmp_path), per_device_eval_batch_size=4)
    return Seq2SeqTrainer(model=model, args=args, eval_dataset=eval_dataset, data_collator=collate)


def test_eval_metrics_equal_token_calibration_run_directly(tmp_path):
    model, val = tiny_model("marian", seed=3, scale=4.0), tiny_dataset(N_EVAL, seed=11)
    trainer = make_trainer(tmp_path, model, val)
    callback = CalibrationCallback(n_bins=10, plot=True).attach(trainer)
    metrics = trainer.evaluate()

    logits, labels = direct_logits(model, val)
    ref = TokenCalibration(n_bins=10)
    ref.update(logits, labels)
    expected = ref.compute()
    for key, name in [
        ("eval_ece", "ece"),
        ("eval_mce", "mce"),
        ("eval_rms", "rms"),
        ("eval_nll", "nll"),
        ("eval_accuracy", "accuracy"),
        ("eval_mean_confidence", "mean_confidence"),
    ]:
        torch.testing.assert_close(metrics[key], float(expected[name]), rtol=1e-5, atol=1e-6, msg=key)
    # Independent of TokenCalibration: NLL and accuracy straight from torch.
    keep = labels != IGNORE
    assert metrics["eval_nll"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(float((logits[keep].argmax(-1) == labels[keep]).double().mean()))

    # Logged through the trainer (so loggers see it), and a PNG reliability diagram in output_dir.
    assert any("eval_ece" in entry for entry in trainer.state.log_history)
    png = tmp_path / "eval_reliability_step0.png"
    assert callback.last_plot_path == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_temperature_grid_reports_nll_optimal_temperature(tmp_path):
    model, val = tiny_model("marian", seed=3, scale=6.0), tiny_dataset(N_EVAL, seed=11)
    trainer = make_trainer(tmp_path, model, val)
    grid = [0.5, 2.0, 3.0, 5.0]
    CalibrationCallback(n_bins=10, temperatures=grid, plot=False).attach(trainer)
    metrics = trainer.evaluate()

    logits, labels = direct_logits(model, val)
    temps = sorted(grid + [1.0])  # T = 1 is always measured: eval_ece/eval_nll are at T = 1
    nll = torch.stack([F.cross_entropy(logits / t, labels) for t in temps])
    best = int(nll.argmin())
    assert metrics["eval_best_temperature"] == temps[best]
    assert metrics["eval_nll_at_best_temperature"] == pytest.approx(float(nll[best]), rel=1e-5)
    assert metrics["eval_nll"] == pytest.approx(float(nll[temps.index(1.0)]), rel=1e-5)
    ref = TokenCalibration(n_bins=10)
    ref.update(logits / temps[best], labels)
    assert metrics["eval_ece_at_best_temperature"] == pytest.approx(float(ref.compute()["ece"]), rel=1e-5, abs=1e-7)
    assert temps[best] != 1.0, "the peaky model should prefer a temperature above 1"


def test_reliability_diagram_goes_to_a_tensorboard_writer(tmp_path):
    """TensorBoard is not installed here: a stand-in with TensorBoardCallback's `tb_writer` attribute records the call."""
    from transformers import TrainerCallback

    class RecordingWriter:
        def __init__(self):
            self.figures = []

        def add_figure(self, tag, figure, global_step=None):
            self.figures.append((tag, type(figure).__name__, global_step))

    class FakeTensorBoardCallback(TrainerCallback):
        tb_writer = RecordingWriter()

    model, val = tiny_model("marian", seed=3), tiny_dataset(N_EVAL, seed=11)
    trainer = make_trainer(tmp_path, model, val)
    trainer.add_callback(FakeTensorBoardCallback())
    CalibrationCallback(plot=True).attach(trainer)
    trainer.evaluate()
    assert FakeTensorBoardCallback.tb_writer.figures == [("eval/reliability_diagram", "Figure", 0)]


def test_unattached_callback_adds_to_evaluate_results(tmp_path):
    model, val = tiny_model("marian", seed=3), tiny_dataset(N_EVAL, seed=11)
    args = training_args(str(tmp_path))
    trainer = Seq2SeqTrainer(
        model=model, args=args, eval_dataset=val, data_collator=collate, callbacks=[CalibrationCallback(plot=False)]
    )
    metrics = trainer.evaluate()
    ref = TokenCalibration()
    ref.update(*direct_logits(model, val))
    assert metrics["eval_ece"] == pytest.approx(float(ref.compute()["ece"]), rel=1e-5)


def test_causal_lm_is_measured_on_shifted_tokens(tmp_path):
    from _helpers.tiny import tiny_causal_lm

    model = tiny_causal_lm().eval()
    rows = [{"input_ids": e["input_ids"], "labels": e["input_ids"]} for e in tiny_dataset(N_EVAL, seed=11)]
    batch = collate(rows)
    with torch.no_grad():
        own = model(**batch).loss  # GPT-2 shifts internally: token-mean NLL of positions 1..T
    args = training_args(str(tmp_path), per_device_eval_batch_size=N_EVAL)
    metrics = CalibrationCallback(plot=False).measure(model, [batch], args).compute()
    assert float(metrics["nll"]) == pytest.approx(float(own), rel=1e-5)
    assert int(metrics["n_tokens"]) == int((batch["labels"][:, 1:] != IGNORE).sum())


def test_bad_input_is_reported(tmp_path):
    model = tiny_model("marian")
    with pytest.raises(ValueError, match="eval_dataset"):
        CalibrationCallback().attach(make_trainer(tmp_path, model, None))
    with pytest.raises(ValueError, match="evaluation dataloader"):
        CalibrationCallback().on_evaluate(training_args(str(tmp_path)), None, None, model=model, eval_dataloader=None)
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationCallback(n_bins=0)
    for bad in ([0.0], [1.0, float("inf")], [-1.0]):
        with pytest.raises(ValueError, match="temperatures"):
            CalibrationCallback(temperatures=bad)

    class NoLogits(torch.nn.Module):
        config = model.config

        def forward(self, **kwargs):
            return {"loss": torch.tensor(0.0)}

        def prepare_decoder_input_ids_from_labels(self, labels):
            return labels.clamp_min(0)

    args = training_args(str(tmp_path))
    loader = [collate(list(tiny_dataset(2)))]
    with pytest.raises(ValueError, match="no `logits`"):
        CalibrationCallback().measure(NoLogits(), loader, args)
