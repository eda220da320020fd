"""What every ls-seq study shares: its run directory (configuration, lock, resume) and its stage boundaries.

:mod:`ls_seq.study.run_dir`
    :class:`RunDirectory`: the output directory, locked for the run, with the resolved configuration that
    ``--resume`` is checked against.
:mod:`ls_seq.study.failpoints`
    :func:`stage_boundary`: the named points between a study's stages, where the fault tests kill it.
"""

from ls_seq.study.failpoints import stage_boundary
from ls_seq.study.run_dir import (
    RunDirectory,
    RunLock,
    config_differences,
    extend_config,
)

__all__ = ["RunDirectory", "RunLock", "config_differences", "extend_config", "stage_boundary"]
