"""Timing and peak-memory helpers shared by the benchmark scripts.

Timing: every case is warmed up, then the cases run round-robin (A B C A B C ...) so that a burst of load
from other processes on a shared machine hits all of them alike; each case reports the median of its
repeats, and scripts print ratios against a reference timed in the same loop.

Peak memory (CPU): each measurement runs in a fresh ``spawn`` subprocess, so no allocator cache or earlier
case is carried over. The child builds the inputs (and touches them), then resets the kernel's resident-set
high-water mark (writing ``5`` to ``/proc/self/clear_refs``, Linux >= 4.0), runs the case once, and reports
``VmHWM - VmRSS(before)``: the extra resident memory the case needed at its peak, inputs excluded. Large
tensors are ``mmap``-ed by glibc and returned on free, so RSS tracks live tensors closely. On CUDA the same
child uses ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "benchmark_parser",
    "fmt_bytes",
    "machine_summary",
    "peak_extra_memory",
    "print_table",
    "time_interleaved",
]


def benchmark_parser(doc: str, n: int, v: int = 32000) -> argparse.ArgumentParser:
    """The options every benchmark takes: sizes, dtype, repeats, device, and --no-memory."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=n, help="tokens")
    parser.add_argument("--v", type=int, default=v, help="vocabulary")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    return parser


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    cases: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1, device: str = "cpu"
) -> dict[str, float]:
    """Median wall time (seconds) of each case; cases alternate within every repeat."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
            _sync(device)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            gc.collect()
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _child(module: str, builder: str, kwargs: dict, queue) -> None:
    try:
        torch.set_num_threads(kwargs.pop("_threads", torch.get_num_threads()))
        run = getattr(importlib.import_module(module), builder)(**kwargs)
        device = kwargs.get("device", "cpu")
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            run()
            torch.cuda.synchronize()
            queue.put(("ok", torch.cuda.max_memory_allocated() - before))
            return
        before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        run()
        queue.put(("ok", (_status_kib("VmHWM") - before) * 1024))
    except Exception as err:
        queue.put(("error", f"{type(err).__name__}: {err}"))


def peak_extra_memory(module: str, builder: str, **kwargs: Any) -> int:
    """Extra peak bytes of ``getattr(import_module(module), builder)(**kwargs)()`` in a fresh process.

    The builder creates the inputs and returns a zero-argument callable that runs the case once.
    """
    if platform.system() != "Linux" and not str(kwargs.get("device", "cpu")).startswith("cuda"):
        raise RuntimeError("CPU peak memory needs Linux (/proc/self/clear_refs and VmHWM)")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    kwargs.setdefault("_threads", torch.get_num_threads())
    proc = ctx.Process(target=_child, args=(module, builder, kwargs, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"memory measurement of {module}.{builder} failed: {value}")
    return int(value)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def machine_summary() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = f"{names[0]} x{len(names)}"
    except OSError:
        pass
    threads = torch.get_num_threads()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"{cpu}, torch {torch.__version__}, {threads} threads (OMP_NUM_THREADS={omp}){gpu}"


def ratio_rows(
    names: list[str],
    times: dict[str, float],
    reference: str,
    label: str,
    mems: dict[str, int] | None = None,
    losses: dict[str, float] | None = None,
) -> list[dict[str, str]]:
    """Table rows: each case's time and ratio to ``reference``; extra peak memory and its ratio when measured;
    the loss difference to the reference for the cases in ``losses``. ``label`` names the reference in the
    column titles (``time / <label>``, ``peak / <label>``, ``loss - <label>``)."""
    rows = []
    for name in names:
        row = {"case": name, "time (s)": f"{times[name]:.3f}", f"time / {label}": f"{times[name] / times[reference]:.2f}x"}
        if mems:
            row["extra peak"] = fmt_bytes(mems[name])
            row[f"peak / {label}"] = f"{mems[name] / mems[reference]:.2f}x"
        if losses and name in losses:
            row[f"loss - {label}"] = f"{losses[name] - losses[reference]:+.1e}"
        rows.append(row)
    return rows


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A Markdown table, so the output can be pasted into benchmarks/README.md as it is."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
