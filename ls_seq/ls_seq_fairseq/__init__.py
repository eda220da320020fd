"""ls-seq's fairseq plugin: pass this folder to ``--user-dir`` (``ls-seq fairseq-user-dir`` prints it).

    fairseq-train data-bin --user-dir $(ls-seq fairseq-user-dir) \\
        --criterion ls_seq_label_smoothed_cross_entropy --label-smoothing 0.1 --ls-convention uniform \\
        --calibration-temperatures 0.8,1.0,1.2,1.5 ...

registers the criterion ``ls_seq_label_smoothed_cross_entropy`` (:mod:`.criterion`). fairseq imports a user
dir by its folder name, so this package is both ``ls_seq_fairseq`` (fairseq's import) and
``ls_seq.ls_seq_fairseq`` (Python's); it registers itself under both names, so importing it either way
first and the other way later is one import, not a second registration ("Cannot register duplicate
criterion"). ``import ls_seq`` never imports this package, and so never fairseq.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_PARENT = os.path.dirname(_HERE)

# fairseq's import_user_module put ls_seq/ first on sys.path to import this folder by name; take it off
# again, or ls_seq's own modules (io.py, metrics.py, losses.py, ...) would shadow top-level modules of
# those names for the rest of the process. This package's submodules are found through __path__.
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _PARENT:
    del sys.path[0]

for _name in ("ls_seq_fairseq", "ls_seq.ls_seq_fairseq"):
    sys.modules.setdefault(_name, sys.modules[__name__])

from . import criterion  # noqa: E402  (registers the criterion)

# The submodule too: `import ls_seq.ls_seq_fairseq.criterion` after fairseq imported `ls_seq_fairseq`
# (or the reverse) must find this module instead of executing the file again.
for _name in ("ls_seq_fairseq", "ls_seq.ls_seq_fairseq"):
    sys.modules.setdefault(f"{_name}.criterion", criterion)
sys.modules["ls_seq"].ls_seq_fairseq = sys.modules[__name__]  # what `import ls_seq.ls_seq_fairseq` binds

PLUGIN_DIR = _HERE

__all__ = ["PLUGIN_DIR", "criterion"]
