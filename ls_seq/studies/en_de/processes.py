"""The processes of one EN-DE run: rank, world size, barriers, device and CPU threads."""

from __future__ import annotations

import contextlib
import os

import torch

from ls_seq.hf.sweeps import dist_info

__all__ = ["_Processes"]


class _Processes:
    """Rank, world size, barriers and device of this run, from ``torch.distributed`` itself.

    accelerate's ``PartialState`` initialises the process group under ``torchrun`` on CPU but then reports
    one process (``DistributedType.NO``, accelerate 1.15), while the Trainer does train on all of them; so the
    study asks the process group directly, which is right under torchrun and ``accelerate launch`` alike.
    """

    def __init__(self):
        from accelerate import PartialState

        self.device = PartialState().device  # also initialises the process group when launched with several
        self.rank, self.num_processes = dist_info()
        self.is_main_process = self.rank == 0

    def set_cpu_threads(self, requested: int | None) -> int | None:
        """On CPU: use ``requested`` intra-op threads, by default this process's share of the usable cores.

        ``accelerate launch`` without a config on a machine with no GPU sets ``OMP_NUM_THREADS=1`` (accelerate
        1.15), which makes the tiny preset take 31.5 instead of 18.6 minutes on 2 cores (docs/en_de.md); the
        study chooses its own count instead. Returns the count, or None on an accelerator.
        """
        if self.device.type != "cpu":
            return None
        if requested is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.num_processes))
            requested = max(1, cores // max(1, local))
        torch.set_num_threads(requested)
        return requested

    def wait_for_everyone(self) -> None:
        if self.num_processes > 1:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_process_first(self):
        if not self.is_main_process:
            self.wait_for_everyone()
        yield
        if self.is_main_process:
            self.wait_for_everyone()
