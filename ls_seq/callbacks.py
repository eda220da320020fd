"""``CalibrationCallback``: token calibration (ECE, NLL, reliability diagram) on every Trainer evaluation."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import TrainerCallback

from ls_seq._validation import check_positive_int, check_temperatures
from ls_seq.metrics import TokenCalibration
from ls_seq.trainer import teacher_forced_logits

__all__ = ["CalibrationCallback"]


def _metric_prefix(metrics: dict[str, Any] | None) -> str:
    """``"eval"``, or ``"eval_<name>"`` when the Trainer evaluates a dict of datasets."""
    for key in metrics or {}:
        if key.endswith("_runtime"):
            return key[: -len("_runtime")]
    return "eval"


class CalibrationCallback(TrainerCallback):
    """Measure token calibration on the evaluation set after each evaluation of any (Seq2Seq)Trainer.

    On ``on_evaluate`` it runs a teacher-forced pass (the model's logits given the reference prefix) over
    the Trainer's evaluation dataloader, updates a :class:`ls_seq.metrics.TokenCalibration`, and adds to the
    evaluation metrics (``<prefix>`` is ``eval``):

    * ``eval_ece``, ``eval_mce``, ``eval_rms_ce``, ``eval_nll``, ``eval_token_accuracy``,
      ``eval_mean_confidence`` at temperature 1, and ``eval_n_tokens`` (target tokens measured);
    * with ``temperatures``: ``eval_best_temperature`` (lowest NLL on the grid, 1.0 always included),
      ``eval_ece_at_best_temperature`` and ``eval_nll_at_best_temperature``.

    The Trainer logs its evaluation metrics *before* it calls ``on_evaluate``, so to reach the loggers
    (TensorBoard, ...) the callback needs the trainer: build it with ``trainer=`` or call
    :meth:`attach`. Without it, the values still land in the dict ``trainer.evaluate()`` returns (usable as
    ``metric_for_best_model="eval_ece"``) and in ``trainer.state.log_history``.

    Under several processes (DDP), each process measures its shard and ``TokenCalibration`` sums the per-bin
    state across processes. The padding samples that accelerate repeats to even out the last batch are
    found with ``accelerator.gather_for_metrics`` (what the Trainer's own evaluation loop uses) and masked,
    so every evaluation sample counts exactly once and the result equals the 1-process one.

    Args:
        n_bins: equal-width confidence bins.
        temperatures: optional grid of temperatures ``T > 0`` measured in the same pass.
        plot: save a reliability diagram ``<output_dir>/<prefix>_reliability_step<N>.png`` (main process)
            and log it as an image to TensorBoard when that integration is active.
        trainer: the trainer to log through (see above); same as calling :meth:`attach`.
        ignore_index: label value of padding.

    Example:
        >>> trainer = Seq2SeqTrainer(model=model, args=args, eval_dataset=val, ...)  # doctest: +SKIP
        >>> CalibrationCallback(temperatures=[0.8, 1.0, 1.25, 1.5]).attach(trainer)  # doctest: +SKIP
        >>> trainer.evaluate()["eval_ece"]  # doctest: +SKIP
    """

    def __init__(
        self,
        n_bins: int = 15,
        temperatures: list[float] | None = None,
        plot: bool = True,
        *,
        trainer: Any = None,
        ignore_index: int = -100,
    ) -> None:
        self.n_bins = check_positive_int(n_bins, "n_bins")
        self.temperatures = None if temperatures is None else sorted(set(check_temperatures(temperatures)) | {1.0})
        if not isinstance(plot, bool):
            raise TypeError(f"`plot` must be a bool, got {type(plot).__name__}")
        self.plot = plot
        self.ignore_index = ignore_index
        self.trainer = None
        self.last_metrics: dict[str, float] | None = None
        self.last_plot_path: str | None = None
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

    # ---- measurement ------------------------------------------------------------------------------------

    def _rows_to_keep(self, labels: torch.Tensor, accelerator: Any) -> torch.Tensor:
        """Labels with accelerate's duplicated padding samples set to ``ignore_index``."""
        n_rows, rank = labels.shape[0], accelerator.process_index
        local_ids = torch.arange(n_rows, device=labels.device) + rank * n_rows
        # gather_for_metrics drops the samples repeated to even out the last batch; the ids that survive tell
        # which of this process's rows are real. Each process holds the same number of rows (even_batches).
        kept = accelerator.gather_for_metrics(local_ids)
        keep = torch.isin(local_ids, kept)  # (B,)
        if bool(keep.all()):
            return labels
        return torch.where(keep.view(-1, *([1] * (labels.dim() - 1))), labels, torch.full_like(labels, self.ignore_index))

    def measure(self, model: torch.nn.Module, dataloader: Any, args: Any) -> TokenCalibration:
        """Teacher-forced pass of ``model`` over ``dataloader``; returns the (not yet synced) metric."""
        accelerator = None if self.trainer is None else self.trainer.accelerator
        distributed = args.world_size > 1
        if distributed and accelerator is None:
            raise ValueError(
                "CalibrationCallback under several processes needs the trainer to find accelerate's padding "
                "samples: use CalibrationCallback(...).attach(trainer)"
            )
        dedupe = distributed and getattr(accelerator, "even_batches", True)
        metric = TokenCalibration(self.n_bins, self.ignore_index, self.temperatures).to(args.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in dataloader:
                    batch = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    logits, labels = teacher_forced_logits(model, batch, where=f"{type(model).__name__}'s output")
                    if dedupe:
                        labels = self._rows_to_keep(labels, accelerator)
                    metric.update(logits, labels)
        finally:
            model.train(was_training)
        return metric

    # ---- TrainerCallback ----------------------------------------------------------------------------------

    def on_evaluate(self, args, state, control, model=None, eval_dataloader=None, metrics=None, **kwargs):
        if eval_dataloader is None:
            raise ValueError(
                "CalibrationCallback runs on the evaluation dataloader, but the Trainer has none: pass eval_dataset="
            )
        if model is None:
            raise ValueError("CalibrationCallback needs the model; the Trainer passed model=None")
        prefix = _metric_prefix(metrics)
        metric = self.measure(model, eval_dataloader, args)
        values = metric.compute()  # collective: every process calls it
        reliability = metric.reliability()

        i1 = best = None
        if self.temperatures is not None:
            temps = metric.temperatures
            i1 = int(torch.nonzero(temps == 1.0)[0])
            best = int(torch.argmin(values["nll"]))

        def at(name: str, i: int | None) -> float:
            return float(values[name] if i is None else values[name][i])

        logs = {
            f"{prefix}_ece": at("ece", i1),
            f"{prefix}_mce": at("mce", i1),
            f"{prefix}_rms_ce": at("rms", i1),
            f"{prefix}_nll": at("nll", i1),
            f"{prefix}_token_accuracy": at("accuracy", i1),
            f"{prefix}_mean_confidence": at("mean_confidence", i1),
            f"{prefix}_n_tokens": int(values["n_tokens"].reshape(-1)[0]),
        }
        if best is not None:
            logs[f"{prefix}_best_temperature"] = float(metric.temperatures[best])
            logs[f"{prefix}_ece_at_best_temperature"] = at("ece", best)
            logs[f"{prefix}_nll_at_best_temperature"] = at("nll", best)
        if metrics is not None:
            metrics.update(logs)
        self.last_metrics = dict(logs)

        if self.plot and state.is_world_process_zero:
            self._plot(args, state, prefix, reliability, metric, i1, best)
        if self.trainer is not None:
            self.trainer.log(dict(logs))
        else:
            state.log_history.append({**logs, "step": state.global_step})
        return control

    def _plot(self, args, state, prefix, reliability, metric, i1, best) -> None:
        from ls_seq.io import atomic_savefig
        from ls_seq.plots import plot_reliability_diagram

        if i1 is None:
            curves = {"T=1": reliability}
        else:
            curves = {"T=1": {k: v[i1] for k, v in reliability.items()}}
            if best != i1:
                t = float(metric.temperatures[best])
                curves[f"T={t:g}, best NLL"] = {k: v[best] for k, v in reliability.items()}
        fig = plot_reliability_diagram(curves, title=f"{prefix}, step {state.global_step}")
        path = os.path.join(args.output_dir, f"{prefix}_reliability_step{state.global_step}.png")
        atomic_savefig(fig, path, dpi=120)
        self.last_plot_path = path
        for cb in [] if self.trainer is None else self.trainer.callback_handler.callbacks:
            writer = getattr(cb, "tb_writer", None)  # TensorBoardCallback, once it has set up its writer
            if writer is not None and hasattr(writer, "add_figure"):
                writer.add_figure(f"{prefix}/reliability_diagram", fig, global_step=state.global_step)
