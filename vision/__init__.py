"""Image studies of Müller, Kornblith & Hinton (2019) on the ``ls_seq`` core (see docs/vision.md).

``data`` (digits, CIFAR-10/100, ImageNet) -> ``models`` (forward_features / forward_head) -> ``train`` (the one
training loop) -> ``projection``, ``calibration``, ``distillation``, ``information`` -> ``plots`` -> ``study``.
Submodules are imported on use, so ``import vision`` stays light. Needs ``pip install 'ls-seq[vision]'``:
without it, ``import vision`` raises :class:`ls_seq.errors.MissingExtraError` naming the extra, in one line.
"""

from ls_seq._extras import require_extra

require_extra("vision", feature="the image studies' package `vision`")
