"""EN-DE label smoothing study (Müller, Kornblith & Hinton 2019: Fig. 3, Fig. 4, Table 3) in one command.

    accelerate launch recipes/wmt_en_de.py --preset tiny --data_dir ../shared/data/multi30k
    accelerate launch recipes/wmt_en_de.py --preset tiny                     # downloads Multi30k
    accelerate launch --multi_gpu recipes/wmt_en_de.py --preset base --dataset wmt14
    python recipes/wmt_en_de.py config.yaml                                   # all arguments in one file

Trains one Transformer per ``--alphas`` value, sweeps the temperature and writes ``results.json``,
``results.csv``, ``report.md`` and the figures to ``--output_dir``; ``--resume`` continues a killed run.
``--seeds 42 43 44`` runs the whole study once per seed (``seed_<s>/``) and adds the mean, spread and the
paper's claims decided over seeds (:mod:`ls_seq.studies.en_de.seeds`).
Everything happens in :mod:`ls_seq.studies.en_de.study`; this script only parses and checks the arguments
(before any work starts). Needs ``pip install 'ls-seq[studies]'`` (without it: one line naming it, exit 1).
Bad input exits 2 and a fault (a full disk, a locked output directory, a damaged checkpoint with no fallback)
exits 1, each with one line naming the argument or file; ``--debug`` (or ``LS_SEQ_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING

from transformers import HfArgumentParser

from ls_seq.cli.runner import run_main

if TYPE_CHECKING:
    from ls_seq.studies.en_de.study import DataArguments, ModelArguments, StudyArguments


def parse_args(argv: list[str] | None = None) -> tuple[DataArguments, ModelArguments, StudyArguments]:
    """Parse the command line, or a single ``.yaml``/``.yml``/``.json`` file holding every argument."""
    # The study is imported here, under run_main: without ls-seq[studies] that is one line and exit 1.
    from ls_seq.studies.en_de.study import DataArguments, ModelArguments, StudyArguments

    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((DataArguments, ModelArguments, StudyArguments))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> dict:
    from ls_seq.studies.en_de.seeds import run_seeds

    data_args, model_args, study_args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = "accelerate launch recipes/wmt_en_de.py " + shlex.join(argv)
    return run_seeds(data_args, model_args, study_args, command=command)


if __name__ == "__main__":
    sys.exit(run_main(main, prog="wmt_en_de.py"))
