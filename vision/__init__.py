"""Image studies of Müller, Kornblith & Hinton (2019) on the ``ls_seq`` core (see docs/vision.md).

``data`` (digits, CIFAR-10/100, ImageNet) -> ``models`` (forward_features / forward_head) -> ``train`` (the one
training loop) -> ``projection``, ``calibration``, ``distillation``, ``information`` -> ``plots`` -> ``study``.
Submodules are imported on use, so ``import vision`` stays light.
"""
