"""The HuggingFace integration: a model's loss and logits as ls-seq sees them, the trainers, the loss function,
the fused head, the callbacks, the beam-search temperature hook and the ``compute_metrics`` route.

:mod:`ls_seq.hf.model_io`
    How a model's logits line up with its labels, where its output layer is, what it adds to its token loss:
    the one place ls-seq knows about model families.
:mod:`ls_seq.hf.model_loss`
    ls-seq's token loss inside the model's own loss (router losses, z-losses and logit transforms kept).
:mod:`ls_seq.hf.loss_func`
    ``compute_loss_func`` / ``model.loss_function`` (:func:`ls_seq.use_label_smoothing`).
:mod:`ls_seq.hf.trainer`
    :class:`LabelSmoothingTrainer`, :class:`LabelSmoothingSeq2SeqTrainer` and their arguments.
:mod:`ls_seq.hf.fused_head`
    The fused output layer + loss, which never materialises the ``(tokens, V)`` logits.
:mod:`ls_seq.hf.callbacks`, :mod:`ls_seq.hf.training_guard`, :mod:`ls_seq.hf.loggers`
    Calibration during training, non-finite guards, figures to TensorBoard / W&B / MLflow.
:mod:`ls_seq.hf.compute_metrics`
    :class:`CalibrationComputeMetrics`: calibration inside any Trainer's own evaluation loop.
:mod:`ls_seq.hf.generation`, :mod:`ls_seq.hf.sweeps`
    The beam-search temperature hook; teacher-forced and beam-search temperature sweeps.
:mod:`ls_seq.hf.distributed`
    Which rows of an evaluation batch are real samples under accelerate.

Nothing is imported here: ``import ls_seq.hf`` does not import transformers.
"""
