"""``CalibrationCallback``: token calibration (ECE, NLL, reliability diagram) on every Trainer evaluation."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ls_seq._extras import installed, require_extra
from ls_seq.calibration.metric import TokenCalibration
from ls_seq.checks import check_positive_int, check_temperatures
from ls_seq.hf.compute_metrics import calibration_log_values, require_tokens
from ls_seq.hf.distributed import drop_rows, real_rows
from ls_seq.hf.loggers import TrackerFigures
from ls_seq.hf.model_io import teacher_forced_logits
from ls_seq.rng import isolated_rng

__all__ = ["CalibrationCallback", "label_key"]


def _metric_prefix(metrics: Mapping[str, Any] | None) -> str:
    """``"eval"``, or ``"eval_<name>"`` when the Trainer evaluates a dict of datasets."""
    for key in metrics or {}:
        if key.endswith("_runtime"):
            return key[: -len("_runtime")]
    return "eval"


def label_key(args: Any) -> str:
    """The one label tensor of a batch: ``TrainingArguments.label_names`` (default ``labels``)."""
    names = getattr(args, "label_names", None) or ["labels"]
    if len(names) != 1:
        raise ValueError(f"token calibration needs exactly one label tensor, but `label_names` is {names}")
    return names[0]


class CalibrationCallback(TrainerCallback):
    """Token calibration of the evaluation set on every evaluation of any (Seq2Seq)Trainer.

    Adds to the evaluation metrics (``<prefix>`` is ``eval``, or ``eval_<name>`` for a dict of datasets) every
    field of :class:`ls_seq.calibration.metric.TokenCalibration`'s measures at temperature 1, named as there
    (``eval_ece``, ``eval_mce``, ``eval_rms``, ``eval_nll``, ``eval_accuracy``, ``eval_mean_confidence``,
    ``eval_n_tokens``, ``eval_ece_mass``, ``eval_brier``, ``eval_ece_low`` / ``eval_ece_high``, ...), and with
    ``temperatures`` also ``eval_best_temperature`` (lowest NLL on the grid, 1.0 always included),
    ``eval_ece_at_best_temperature`` and ``eval_nll_at_best_temperature``.

    **In ls-seq's trainers** (:class:`ls_seq.LabelSmoothingTrainer`, :class:`ls_seq.LabelSmoothingSeq2SeqTrainer`)
    the Trainer's own evaluation loop feeds the metric: no second forward pass, and the values are part of
    the evaluation metrics every logger (TensorBoard, W&B, ...) receives.

    **In any other Trainer** the callback runs its own teacher-forced pass in ``on_evaluate``, after the
    Trainer has logged. The values land in the dict ``trainer.evaluate()`` returns (usable as
    ``metric_for_best_model="eval_ece"``) and in ``trainer.state.log_history``; to send them to the loggers
    too, :meth:`attach` the callback to the trainer. For calibration inside a plain Trainer's own loop, use
    :class:`ls_seq.hf.compute_metrics.CalibrationComputeMetrics` (``preprocess_logits_for_metrics`` +
    ``compute_metrics``).

    Any number of processes: each measures its shard, ``TokenCalibration`` sums the per-bin state, and the
    samples accelerate repeats to even out the last batch are dropped (:func:`ls_seq.hf.distributed.real_rows`),
    so the result equals the 1-process one. The labels are ``TrainingArguments.label_names`` (default
    ``labels``).

    Args:
        n_bins: equal-width confidence bins, ``[k/B, (k+1)/B)``, confidence 1 in the last.
        temperatures: optional grid of temperatures ``T > 0`` measured in the same pass (1.0 is added).
        plot: save a reliability diagram ``<output_dir>/<prefix>_reliability_step<N>.png`` (main process)
            and log it as an image, ``<prefix>/reliability_diagram``, to each of TensorBoard, Weights & Biases
            and MLflow that ``report_to`` enables (:mod:`ls_seq.hf.loggers`; no :meth:`attach` needed).
            ``None`` (default): when matplotlib is installed (``pip install 'ls-seq[plots]'``), so a core install
            measures without figures; ``True``: always, a :class:`~ls_seq.errors.MissingExtraError` here
            without matplotlib; ``False``: never.
        trainer: the trainer to log through; same as calling :meth:`attach`.
        ignore_index: label value of padding.
        shift_labels: how logits align with labels, for a model ls-seq cannot place from its class (True: logits
            at t score the label at t + 1); by default from the model, else from its output's class
            (``CausalLMOutput...`` / ``Seq2Seq...Output``), as for :func:`ls_seq.label_smoothing_loss_func`.
        measures: names from :data:`ls_seq.calibration.measures.MEASURES` (default: those of
            :class:`ls_seq.calibration.metric.TokenCalibration`).
        **options: the measures' options (``top_k``, ``classes``, ...), as for
            :class:`ls_seq.calibration.metric.TokenCalibration`.

    Raises:
        TypeError: an argument has the wrong type (``plot`` not a bool, ``ignore_index`` not an int, ...).
        ValueError: ``n_bins`` or a temperature is out of range, a measure or option is unknown (checked here,
            not at the first evaluation), or ``trainer`` has no ``eval_dataset``.

    Examples:
        >>> trainer = Seq2SeqTrainer(model=model, args=args, eval_dataset=val,  # doctest: +SKIP
        ...                          callbacks=[CalibrationCallback(temperatures=[0.8, 1.0, 1.25, 1.5])])
        >>> trainer.evaluate()["eval_ece"]  # doctest: +SKIP
    """

    def __init__(
        self,
        n_bins: int = 15,
        temperatures: list[float] | None = None,
        plot: bool | None = None,
        *,
        trainer: Any = None,
        ignore_index: int = -100,
        shift_labels: bool | None = None,
        measures: list[str] | None = None,
        **options: Any,
    ) -> None:
        self.n_bins = check_positive_int(n_bins, "n_bins")
        self.temperatures = None if temperatures is None else sorted(set(check_temperatures(temperatures)) | {1.0})
        if plot is not None and not isinstance(plot, bool):
            raise TypeError(f"`plot` must be True, False or None, got {type(plot).__name__}")
        if plot:
            require_extra("plots", feature="CalibrationCallback(plot=True)")  # now, not at the first evaluation
        elif plot is None:
            plot = installed("matplotlib")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"`ignore_index` must be an int, got {type(ignore_index).__name__}")
        if shift_labels is not None and not isinstance(shift_labels, bool):
            raise TypeError(f"`shift_labels` must be True, False or None, got {type(shift_labels).__name__}")
        self.plot = plot
        self.ignore_index = ignore_index
        self.shift_labels = shift_labels
        self.measures = measures
        self.options = options
        self.new_metric("cpu")  # the measure configuration is checked now, not at the first evaluation
        self.trainer = None
        self.last_metrics: dict[str, float] | None = None
        self.last_plot_path: str | None = None
        self._trackers = TrackerFigures()
        self._in_loop: dict[str, Any] | None = None  # a result the trainer's evaluation loop measured
        if trainer is not None:
            self.attach(trainer)

    def attach(self, trainer: Any) -> CalibrationCallback:
        """Add this callback to ``trainer`` (once) and log through it; returns ``self``."""
        if trainer.eval_dataset is None:
            raise ValueError(
                "CalibrationCallback measures the evaluation set, but the trainer has no `eval_dataset`: "
                "pass eval_dataset= to the Trainer"
            )
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def new_metric(self, device: torch.device | str | None = None) -> TokenCalibration:
        return TokenCalibration(self.n_bins, self.ignore_index, self.temperatures, self.measures, **self.options).to(device)

    # ---- the measurement -----------------------------------------------------------------------------------

    def measure(self, model: torch.nn.Module, dataloader: Any, args: Any) -> TokenCalibration:
        """Teacher-forced pass of ``model`` over ``dataloader``; returns the (not yet synced) metric."""
        key = label_key(args)
        metric = self.new_metric(args.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in dataloader:
                    batch = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    logits, scored = teacher_forced_logits(model, batch, key, self.ignore_index, self.shift_labels)
                    # real_rows reads accelerate's state while the dataloader is at this batch
                    scored = drop_rows(scored, real_rows(scored.shape[0], scored.device), self.ignore_index)
                    metric.update(logits, scored)
        finally:
            model.train(was_training)
        return metric

    def _summarize(self, metric: TokenCalibration, prefix: str) -> tuple[dict[str, float], dict[str, torch.Tensor], int, int]:
        """The logged values of a filled metric (a collective: every process calls it) and its reliability."""
        try:
            result = metric.compute()  # synced over processes: every process sees the same count
        except RuntimeError as err:
            if "before any non-ignored token" not in str(err):
                raise
            require_tokens(0, prefix)
        reliability = {k: v.reshape(-1, self.n_bins) for k, v in metric.reliability("width").items()}  # (T, B)
        logs = calibration_log_values(result)
        temps = [1.0] if self.temperatures is None else self.temperatures
        i1 = temps.index(1.0)
        best = temps.index(logs["best_temperature"]) if "best_temperature" in logs else i1
        return {f"{prefix}_{k}": v for k, v in logs.items()}, reliability, i1, best

    # ---- the in-loop protocol of ls-seq's trainers ----------------------------------------------------------

    def begin_in_loop(self, trainer: Any) -> TokenCalibration:
        """Called by ls-seq's trainers before their evaluation loop: the metric the loop's logits will feed."""
        self.trainer = trainer
        self._in_loop = None
        return self.new_metric(trainer.args.device)

    def end_in_loop(self, metric: TokenCalibration, prefix: str, state: Any) -> dict[str, float]:
        """Called after the loop (on every process): the values to add to the loop's metrics."""
        logs, reliability, i1, best = self._summarize(metric, prefix)
        self._in_loop = {"prefix": prefix, "step": state.global_step, "logs": logs, "reliability": (reliability, i1, best)}
        return logs

    # ---- TrainerCallback ----------------------------------------------------------------------------------

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        eval_dataloader: Any = None,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        prefix = _metric_prefix(metrics)
        done, self._in_loop = self._in_loop, None
        if done is not None and done["prefix"] == prefix and done["step"] == state.global_step:
            logs, (reliability, i1, best) = done["logs"], done["reliability"]
            logged = True  # part of the metrics the Trainer logged
        else:
            if eval_dataloader is None:
                raise ValueError(
                    "CalibrationCallback runs on the evaluation dataloader, but the Trainer has none: pass eval_dataset="
                )
            if model is None:
                raise ValueError("CalibrationCallback needs the model; the Trainer passed model=None")
            with isolated_rng():  # a plain Trainer's evaluate() does not isolate its callbacks' draws
                metric = self.measure(model, eval_dataloader, args)
            logs, reliability, i1, best = self._summarize(metric, prefix)
            logged = False
        if metrics is not None:
            metrics.update(logs)
        self.last_metrics = dict(logs)
        if self.plot and state.is_world_process_zero:
            self._plot(args, state, prefix, reliability, i1, best)
        if not logged:
            if self.trainer is not None:
                self.trainer.log(dict(logs))
            else:
                state.log_history.append({**logs, "step": state.global_step})
        return control

    def on_predict(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        """``predict()``: ls-seq's trainers measured the test set in their loop (``test_ece``, ...); a plain
        Trainer's ``predict`` hands callbacks no test data, so there the route is :class:`CalibrationComputeMetrics`."""
        done, self._in_loop = self._in_loop, None
        if done is None:
            warnings.warn(
                "CalibrationCallback cannot measure a plain Trainer's predict(): the Trainer gives callbacks no test "
                "data. Use ls_seq.LabelSmoothingTrainer, or ls_seq.hf.compute_metrics.CalibrationComputeMetrics",
                stacklevel=2,
            )
            return control
        logs, (reliability, i1, best) = done["logs"], done["reliability"]
        self.last_metrics = dict(logs)
        if self.plot and state.is_world_process_zero:
            self._plot(args, state, done["prefix"], reliability, i1, best)
        return control

    def _plot(
        self, args: TrainingArguments, state: TrainerState, prefix: str, reliability: dict[str, torch.Tensor], i1: int, best: int
    ) -> None:
        from ls_seq.calibration.plots import plot_reliability_diagram
        from ls_seq.io import atomic_savefig

        curves = {"T=1": {k: v[i1] for k, v in reliability.items()}}
        if self.temperatures is not None and best != i1:  # best is i1 without a grid
            curves[f"T={self.temperatures[best]:g}, best NLL"] = {k: v[best] for k, v in reliability.items()}
        fig = plot_reliability_diagram(curves, title=f"{prefix}, step {state.global_step}")
        assert args.output_dir is not None  # TrainingArguments sets a default
        path = os.path.join(args.output_dir, f"{prefix}_reliability_step{state.global_step}.png")
        atomic_savefig(fig, path, dpi=120)
        self.last_plot_path = path
        callbacks = None if self.trainer is None else self.trainer.callback_handler.callbacks
        self._trackers.log(fig, f"{prefix}/reliability_diagram", state.global_step, path, args, callbacks)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self._trackers.close()  # the TensorBoard writer of its own, if it opened one
        return control
