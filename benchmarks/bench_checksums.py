"""What the checkpoint manifest costs: save and resume time with and without ``ls_seq_checksums.json``.

A checkpoint like HF's is written into a fresh directory: ``--shards`` safetensors shards of ``--shard_mib``
MiB of float32 weights each (``save_file``, as ``save_pretrained`` writes sharded models) and an
``optimizer.pt`` twice the weights (Adam's two moments, ``torch.save``). Cases, alternating in every repeat:

* save: the files alone; the files plus :func:`ls_seq.checkpoints.write_checksums` (size and SHA-256 of each
  file, shards hashed in parallel threads, the manifest written last);
* resume check: :func:`ls_seq.checkpoints.verify_checkpoint` on the same files without and with the manifest
  (without it: the structural checks, safetensors layout, finite weights and zip CRC-32; with it also one
  SHA-256 pass per file).

The files sit in the page cache (just written), so hashing is bound by SHA-256's speed, not by the disk; on a
cold cache the extra read is what a resume pays on top. The peak extra memory of ``write_checksums`` (Python
allocations, ``tracemalloc``) shows that files are streamed in 1 MiB blocks, never read whole.

    python -m benchmarks.bench_checksums --shards 2 --shard_mib 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks.common import fmt_bytes, machine_summary, print_table, time_interleaved
from ls_seq.checkpoints import CHECKSUMS_NAME, verify_checkpoint, write_checksums


def _write_files(directory: Path, shards: list[dict[str, torch.Tensor]], optimizer: dict[str, torch.Tensor]) -> None:
    directory.mkdir()
    for i, tensors in enumerate(shards):
        save_file(tensors, str(directory / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"), metadata={"format": "pt"})
    torch.save(optimizer, directory / "optimizer.pt")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--shard_mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    per_shard = args.shard_mib * 2**20 // 4 // 4  # four float32 tensors per shard
    shards = [{f"layer{s}.w{k}": torch.randn(per_shard, generator=g) for k in range(4)} for s in range(args.shards)]
    optimizer = {f"{name}.{m}": t.clone() for shard in shards for name, t in shard.items() for m in ("exp_avg", "exp_avg_sq")}
    total = sum(t.numel() * 4 for s in shards for t in s.values()) * 3
    root = Path(tempfile.mkdtemp(prefix="bench_checksums.", dir=args.dir))
    counter = iter(range(10**6))
    try:

        def fresh() -> Path:
            return root / f"ckpt-{next(counter)}"

        def save_plain():
            path = fresh()
            _write_files(path, shards, optimizer)
            shutil.rmtree(path)

        def save_manifest():
            path = fresh()
            _write_files(path, shards, optimizer)
            write_checksums(path)
            shutil.rmtree(path)

        with_manifest, without = root / "with", root / "without"
        _write_files(with_manifest, shards, optimizer)
        write_checksums(with_manifest)
        shutil.copytree(with_manifest, without)
        (without / CHECKSUMS_NAME).unlink()

        def check(path: Path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the "no recorded checksums" warning of the case without
                verify_checkpoint(path, require=())

        cases = {
            "save: files": save_plain,
            "save: files + manifest": save_manifest,
            "resume check: structure only": lambda: check(without),
            "resume check: structure + manifest": lambda: check(with_manifest),
        }
        times = time_interleaved(cases, repeats=args.repeats)

        tracemalloc.start()
        start = time.perf_counter()
        write_checksums(with_manifest)
        hash_s = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(machine_summary())
    print(
        f"checkpoint: {args.shards} shards x {args.shard_mib} MiB + optimizer.pt, {fmt_bytes(total)} in all; "
        f"torch threads {torch.get_num_threads()}, cpu_count {os.cpu_count()}"
    )
    print_table(
        "checkpoint save and resume check", [{"case": k, "median s": f"{t:.3f}"} for k, t in times.items()], ["case", "median s"]
    )
    print(
        f"manifest on save: {times['save: files + manifest'] - times['save: files']:+.3f} s "
        f"({times['save: files + manifest'] / times['save: files'] - 1:+.1%}); "
        f"on the resume check: {times['resume check: structure + manifest'] - times['resume check: structure only']:+.3f} s "
        f"({times['resume check: structure + manifest'] / times['resume check: structure only'] - 1:+.1%})"
    )
    print(
        f"write_checksums alone: {hash_s:.3f} s ({total / hash_s / 2**30:.2f} GiB/s), peak extra Python memory {fmt_bytes(peak)}"
    )


if __name__ == "__main__":
    main()
