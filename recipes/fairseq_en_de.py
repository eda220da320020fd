"""EN-DE label smoothing study (Müller, Kornblith & Hinton 2019: Fig. 3, Fig. 4, Table 3) with fairseq as the trainer.

    python recipes/fairseq_en_de.py --preset tiny --data_dir ../shared/data/multi30k --output_dir outputs/ende_fairseq
    python recipes/fairseq_en_de.py --preset base --dataset wmt14            # the paper's transformer_wmt_en_de, GPUs
    python recipes/fairseq_en_de.py config.yaml                               # all arguments in one file

The same study as ``recipes/wmt_en_de.py`` (same data reader, tokenizer, presets, ``results.json``, report and
figures), trained by ``fairseq-train`` with the ls-seq criterion and decoded by ``fairseq-generate
--temperature T``. Needs ``pip install 'ls-seq[studies,fairseq]'`` and fairseq itself (docs/fairseq.md); without
them, one line naming what is missing, exit 1. Everything happens in :mod:`ls_seq_fairseq.study`; this script
parses and checks the arguments before any work (bad input: one line, exit 2).
"""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING

from transformers import HfArgumentParser

from ls_seq.cli.runner import run_main

if TYPE_CHECKING:
    from ls_seq.studies.en_de.study import DataArguments, ModelArguments
    from ls_seq_fairseq.study import FairseqStudyArguments


def parse_args(argv: list[str]) -> tuple[DataArguments, ModelArguments, FairseqStudyArguments]:
    """Parse the command line, or a single ``.yaml``/``.yml``/``.json`` file holding every argument."""
    # The studies are imported here, under run_main: without the extras that is one line and exit 1.
    from ls_seq.studies.en_de.study import DataArguments, ModelArguments
    from ls_seq_fairseq.study import FairseqStudyArguments

    parser = HfArgumentParser((DataArguments, ModelArguments, FairseqStudyArguments))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    data_args, model_args, study_args = parse_args(argv)
    from ls_seq_fairseq.study import run_study  # after parse_args, which reports a missing ls-seq[studies] first

    return run_study(data_args, model_args, study_args, command="python recipes/fairseq_en_de.py " + shlex.join(argv))


if __name__ == "__main__":
    sys.exit(run_main(main))
