"""The ``ls-seq`` command line: ``calibrate`` (saved logits), ``evaluate`` (a checkpoint), ``fairseq-user-dir``.

:mod:`ls_seq.cli.commands` (the parser and the commands), :mod:`ls_seq.cli.evaluate` (``ls-seq evaluate``),
:mod:`ls_seq.cli.eval_data` (its evaluation data), :mod:`ls_seq.cli.runner` (every entry point's fault handler:
one line and an exit code).
"""

from ls_seq.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
