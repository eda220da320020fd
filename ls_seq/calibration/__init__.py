"""Calibration: what a calibration pass measures, the streaming metric, its result, its files and its figures.

:mod:`ls_seq.calibration.measures`
    The measures (ECE on equal-width and equal-mass bins, Brier, bootstrap intervals, class-wise, top-k,
    sequence-level), each one definition of its state, update and fields; :class:`CalibrationConfig`.
:mod:`ls_seq.calibration.schema`
    :class:`CalibrationSchema`: the enabled measures run together; :func:`make_config`.
:mod:`ls_seq.calibration.result`
    :class:`CalibrationResult`: every field over the temperature grid.
:mod:`ls_seq.calibration.metric`
    :class:`TokenCalibration`: a streaming, distributed ``torchmetrics.Metric`` over the schema.
:mod:`ls_seq.calibration.report`
    ``calibration.json``, the figures and ``report.md``, written as one set.
:mod:`ls_seq.calibration.plots`
    The reliability diagram and the temperature sweep (matplotlib: ``pip install 'ls-seq[plots]'``).

The math under them is in :mod:`ls_seq.functional` (token statistics, binned errors, temperature fitting).
Nothing is imported here, so importing one module costs only what it needs.
"""
