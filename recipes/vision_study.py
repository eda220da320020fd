"""The paper's image studies from the command line (Müller, Kornblith & Hinton 2019, Sec. 2-4).

    python recipes/vision_study.py --dataset digits --study all --output_dir outputs/vision-digits
    python recipes/vision_study.py --dataset cifar100 --study calibration --output_dir out/c100 --epochs 160
    python recipes/vision_study.py args.json        # the same arguments from one JSON/YAML file

Arguments are :class:`vision.study.VisionStudyConfig` (``--help`` lists them), validated before any work;
everything else lives in the ``vision`` package. Writes ``results.json``, ``report.md`` and PNG figures;
``--resume`` continues a run, ``--overwrite_output_dir`` starts over; ``--seeds 0 1 2`` runs the study per
seed and summarises over seeds (``vision.seeds``). Needs ``pip install 'ls-seq[vision]'`` (without it: one line
naming it, exit 1). Bad input exits 2 and a fault (a full disk, a locked output directory) exits 1, each with
one line; ``--debug`` (or ``LS_SEQ_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING

from transformers import HfArgumentParser

from ls_seq.cli.runner import run_main

if TYPE_CHECKING:
    from vision.study import VisionStudyConfig


def parse_args(argv: list[str] | None = None) -> VisionStudyConfig:
    # The study is imported here, under run_main: without ls-seq[vision] that is one line and exit 1.
    from vision.study import VisionStudyConfig

    parser = HfArgumentParser(VisionStudyConfig)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        (cfg,) = parser.parse_json_file(os.path.abspath(argv[0]))
    elif len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        (cfg,) = parser.parse_yaml_file(os.path.abspath(argv[0]))
    else:
        (cfg,) = parser.parse_args_into_dataclasses(args=argv)
    return cfg


def main(argv: list[str] | None = None) -> dict:
    from vision.seeds import run_seeds

    argv = sys.argv[1:] if argv is None else argv
    results = run_seeds(parse_args(argv), command="python recipes/vision_study.py " + shlex.join(argv))
    for claim in results["claims"]:
        measured = claim.get("measured") or f"{claim['quantity']} = {claim['difference']:+.4f} ({claim['basis']})"
        print(f"[{claim['verdict']}] {claim['claim']}: {measured}")
    return results


if __name__ == "__main__":
    sys.exit(run_main(main, prog="vision_study.py"))
