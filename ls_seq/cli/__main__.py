"""``python -m ls_seq.cli``: the ``ls-seq`` command (also under ``torchrun ... -m ls_seq.cli``)."""

import sys

from ls_seq.cli import main

if __name__ == "__main__":
    sys.exit(main())
