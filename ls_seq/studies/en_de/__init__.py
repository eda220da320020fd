"""The EN-DE study of Müller et al. (2019): corpora (:mod:`.data`), joint BPE (:mod:`.tokenizer`), Marian
presets (:mod:`.presets`), the arguments (:mod:`.arguments`), the study's driver (:mod:`.study`, entry point
:func:`run_study`) and its stages (:mod:`.training`, :mod:`.evaluation`, :mod:`.summary`, :mod:`.report`),
several seeds (:mod:`.seeds`) and the figures (:mod:`.plots`). ``recipes/wmt_en_de.py`` is the command line;
docs/en_de.md the guide."""

from ls_seq.studies.en_de.arguments import DataArguments, ModelArguments, StudyArguments
from ls_seq.studies.en_de.study import run_study

__all__ = ["DataArguments", "ModelArguments", "StudyArguments", "run_study"]
