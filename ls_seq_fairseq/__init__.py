"""ls-seq's fairseq plugin: pass this package's folder to ``--user-dir`` (``ls-seq fairseq-user-dir`` prints it).

    fairseq-train data-bin --user-dir $(ls-seq fairseq-user-dir) \\
        --criterion ls_seq_label_smoothed_cross_entropy --label-smoothing 0.1 --ls-convention uniform \\
        --calibration-temperatures 0.8,1.0,1.2,1.5 ...

registers the criterion ``ls_seq_label_smoothed_cross_entropy`` (:mod:`ls_seq_fairseq.criterion`). It is a
top-level package of the ``ls-seq`` distribution, so the name fairseq imports a user dir by (its folder's name)
is the name Python imports it by: one module, one registration, in either order. ``import ls_seq`` never
imports this package, and so never fairseq. Needs ``pip install 'ls-seq[fairseq]'`` and fairseq-fixed
(docs/fairseq.md).
"""

import os

from ls_seq._extras import require_extra

# fairseq and what it imports: one line naming `ls-seq[fairseq]` (and fairseq-fixed), not a traceback
require_extra("fairseq", feature="the fairseq plugin (ls_seq_fairseq)")

from . import criterion  # noqa: E402  (registers the criterion)

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))

__all__ = ["PLUGIN_DIR", "criterion"]
