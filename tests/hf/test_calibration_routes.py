"""The three ways to get token calibration from an HF evaluation, each against TokenCalibration run directly on
the hand-aligned teacher-forced logits of the whole evaluation set in one batch (rtol 1e-6: the logits of
batches padded differently differ in float32 rounding):

1. ls-seq's trainers with a CalibrationCallback: fed by the Trainer's own loop (one forward per batch);
2. CalibrationCallback in a plain Trainer, attach-free (its own pass);
3. CalibrationComputeMetrics as preprocess_logits_for_metrics + compute_metrics, with and without batch_eval_metrics.
"""

from __future__ import annotations

import pytest
import torch
from _helpers.families import CAUSAL, family_collate, family_dataset, family_examples, family_model, scored_logits_labels
from _helpers.tiny import IGNORE, training_args
from transformers import Seq2SeqTrainer, Trainer

from ls_seq.calibration.metric import TokenCalibration
from ls_seq.hf.callbacks import CalibrationCallback
from ls_seq.hf.compute_metrics import CalibrationComputeMetrics
from ls_seq.hf.trainer import (
    LabelSmoothingSeq2SeqTrainer,
    LabelSmoothingSeq2SeqTrainingArguments,
    LabelSmoothingTrainer,
    LabelSmoothingTrainingArguments,
)

GRID = [0.5, 1.0, 2.0]
N_EVAL = 13  # not a multiple of the evaluation batch 4
KEYS = {"ece": "ece", "mce": "mce", "rms": "rms", "nll": "nll", "accuracy": "accuracy", "mean_confidence": "mean_confidence"}


def reference(family, model, temperatures):
    with torch.no_grad():
        logits, labels = scored_logits_labels(family, model.eval(), family_collate(family)(family_examples(family, N_EVAL, 11)))
    metric = TokenCalibration(n_bins=10, temperatures=temperatures)
    metric.update(logits, labels)
    return {k: torch.atleast_1d(v) for k, v in metric.compute().items()}, int((labels != IGNORE).sum())


def assert_matches(metrics, family, model, temperatures=GRID, prefix="eval"):
    ref, n_tokens = reference(family, model, temperatures)
    assert metrics[f"{prefix}_n_tokens"] == n_tokens
    i1 = temperatures.index(1.0)
    for key, name in KEYS.items():
        assert metrics[f"{prefix}_{key}"] == pytest.approx(float(ref[name][i1]), rel=1e-6, abs=1e-9), key
    if len(temperatures) > 1:
        best = int(ref["nll"].argmin())
        assert metrics[f"{prefix}_best_temperature"] == temperatures[best]
        assert metrics[f"{prefix}_ece_at_best_temperature"] == pytest.approx(float(ref["ece"][best]), rel=1e-6, abs=1e-9)
        assert metrics[f"{prefix}_best_ece_temperature"] == temperatures[int(ref["ece"].argmin())]


def ls_trainer(family, model, tmp_path, callbacks, **overrides):
    cls, args_cls = (
        (LabelSmoothingTrainer, LabelSmoothingTrainingArguments)
        if family in CAUSAL
        else (LabelSmoothingSeq2SeqTrainer, LabelSmoothingSeq2SeqTrainingArguments)
    )
    args = training_args(str(tmp_path), cls=args_cls, label_smoothing_factor=0.1, **overrides)
    return cls(
        model=model,
        args=args,
        eval_dataset=family_dataset(family, N_EVAL, 11),
        data_collator=family_collate(family),
        callbacks=callbacks,
    )


@pytest.mark.parametrize("family", ["gpt2", "marian"])
def test_ls_trainer_measures_inside_its_own_evaluation_loop(tmp_path, family):
    model = family_model(family, seed=3)
    forwards = []
    model.register_forward_hook(lambda *a: forwards.append(1))
    trainer = ls_trainer(family, model, tmp_path, [CalibrationCallback(n_bins=10, temperatures=GRID, plot=True)])
    metrics = trainer.evaluate()
    assert len(forwards) == 4, "one forward per evaluation batch: no second pass for the calibration"
    assert_matches(metrics, family, model)
    logged = next(h for h in trainer.state.log_history if "eval_loss" in h)
    assert "eval_ece" in logged, "the calibration metrics are part of the logged evaluation, so loggers see them"
    assert (tmp_path / "eval_reliability_step0.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("family", ["llama", "bart"])
def test_callback_in_a_plain_trainer_needs_no_attach(tmp_path, family):
    model = family_model(family, seed=3)
    cls = Trainer if family in CAUSAL else Seq2SeqTrainer
    trainer = cls(
        model=model,
        args=training_args(str(tmp_path)),
        eval_dataset=family_dataset(family, N_EVAL, 11),
        data_collator=family_collate(family),
        callbacks=[CalibrationCallback(n_bins=10, temperatures=GRID)],
    )
    assert_matches(trainer.evaluate(), family, model)
    assert any("eval_ece" in h for h in trainer.state.log_history)


@pytest.mark.parametrize("batch_eval_metrics", [True, False])
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_calibration_metrics_pair_in_hf_own_loop(tmp_path, family, batch_eval_metrics):
    model = family_model(family, seed=3)
    pair = CalibrationComputeMetrics(n_bins=10, temperatures=GRID, model=model)
    cls = Trainer if family in CAUSAL else Seq2SeqTrainer
    trainer = cls(
        model=model,
        args=training_args(str(tmp_path), batch_eval_metrics=batch_eval_metrics),
        eval_dataset=family_dataset(family, N_EVAL, 11),
        data_collator=family_collate(family),
        **pair.trainer_kwargs(),
    )
    assert_matches(trainer.evaluate(), family, model)
    assert pair.last_reliability["count"].shape == (len(GRID), 10)


def test_a_one_temperature_grid_keeps_its_shape(tmp_path):
    metric = TokenCalibration(temperatures=[1.5])
    metric.update(torch.randn(5, 7), torch.randint(0, 7, (5,)))
    assert all(v.shape == (1,) for v in metric.compute().values())
    model = family_model("marian", seed=3)
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args(str(tmp_path)),
        eval_dataset=family_dataset("marian", N_EVAL, 11),
        data_collator=family_collate("marian"),
        callbacks=[CalibrationCallback(n_bins=10, temperatures=[1.0])],
    )
    assert_matches(trainer.evaluate(), "marian", model, temperatures=[1.0])


def test_label_names_are_honoured(tmp_path):
    """A batch whose token labels are called `target_ids` (TrainingArguments.label_names)."""

    def collate(features):
        batch = family_collate("gpt2")(features)
        batch["target_ids"] = batch.pop("labels")
        return batch

    model = family_model("gpt2", seed=3)
    callback = CalibrationCallback(n_bins=10, temperatures=GRID, plot=False)
    trainer = ls_trainer("gpt2", model, tmp_path, [callback], label_names=["target_ids"])
    trainer.data_collator = collate
    assert_matches(trainer.evaluate(), "gpt2", model)
    own_pass = callback.measure(model, trainer.get_eval_dataloader(), trainer.args)  # the attach-free route
    ref, _ = reference("gpt2", model, GRID)
    torch.testing.assert_close(own_pass.compute()["ece"], ref["ece"], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="exactly one label tensor"):
        ls_trainer("gpt2", model, tmp_path, [], label_names=["a", "b"])


def test_the_reliability_diagram_reaches_tensorboard(tmp_path):
    """With TensorBoard's callback among the trainer's, the diagram is logged as a figure at the step."""
    from transformers import TrainerCallback

    class FakeTensorBoard(TrainerCallback):
        def __init__(self):
            self.figures = []
            self.tb_writer = self

        def add_figure(self, tag, figure, global_step=None):
            self.figures.append((tag, global_step, len(figure.axes)))

    board = FakeTensorBoard()
    model = family_model("gpt2", seed=3)
    trainer = ls_trainer("gpt2", model, tmp_path, [board, CalibrationCallback(n_bins=10, temperatures=GRID)])
    trainer.evaluate()
    assert board.figures == [("eval/reliability_diagram", 0, 2)]  # the diagram and its token-share panel


def test_the_reliability_diagram_is_a_real_tensorboard_image(tmp_path, monkeypatch):
    """With report_to=["tensorboard"], the event file holds the evaluation's numbers and the diagram image."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = family_model("gpt2", seed=3)
    logs = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logs))  # transformers 5's TensorBoardCallback reads it
    from transformers import TrainingArguments

    where = {"logging_dir": str(logs)} if "logging_dir" in TrainingArguments.__dataclass_fields__ else {}  # 4.x
    trainer = ls_trainer(
        "gpt2", model, tmp_path, [CalibrationCallback(n_bins=10, temperatures=GRID)], report_to=["tensorboard"], **where
    )
    metrics = trainer.evaluate()
    trainer.callback_handler.call_event("on_train_end", trainer.args, trainer.state, trainer.control)  # flush
    events = EventAccumulator(str(next(p.parent for p in logs.rglob("events.out.tfevents.*"))), size_guidance={"images": 0})
    events.Reload()
    assert "eval/reliability_diagram" in events.Tags()["images"]
    ece = events.Scalars("eval/ece")
    assert ece and ece[-1].value == pytest.approx(metrics["eval_ece"], rel=1e-6)
