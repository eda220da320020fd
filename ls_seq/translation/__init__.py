"""The EN-DE study of Müller et al. (2019): corpora (:mod:`.data`), joint BPE (:mod:`.tokenizer`), Marian
presets (:mod:`.presets`), the study itself (:mod:`.study`, entry point :func:`run_study`) and its figures
(:mod:`.plots`). ``recipes/wmt_en_de.py`` is the command line; docs/en_de.md the guide."""

from ls_seq.translation.study import (
    DataArguments,
    ModelArguments,
    StudyArguments,
    run_study,
)

__all__ = ["DataArguments", "ModelArguments", "StudyArguments", "run_study"]
