"""ls-seq's fairseq plugin: pass this package's folder to ``--user-dir`` (``ls-seq fairseq-user-dir`` prints it).

    fairseq-train data-bin --user-dir $(ls-seq fairseq-user-dir) \\
        --criterion ls_seq_label_smoothed_cross_entropy --label-smoothing 0.1 --ls-convention uniform \\
        --calibration-temperatures 0.8,1.0,1.2,1.5 ...

registers the criterion ``ls_seq_label_smoothed_cross_entropy`` (:mod:`ls_seq_fairseq.criterion`). It is a
top-level package of the ``ls-seq`` distribution, so the name fairseq imports a user dir by (its folder's name)
is the name Python imports it by: one module, one registration, in either order. ``import ls_seq`` never
imports this package, and so never fairseq.
"""

import os

from . import criterion  # registers the criterion

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))

__all__ = ["PLUGIN_DIR", "criterion"]
