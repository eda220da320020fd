"""The EN-DE study of Müller et al. (2019): corpora (:mod:`.data`), joint BPE (:mod:`.tokenizer`), Marian
presets (:mod:`.presets`), the arguments (:mod:`.arguments`), the study's driver (:mod:`.study`, entry point
:func:`run_study`) and its stages (:mod:`.training`, :mod:`.evaluation`, :mod:`.summary`, :mod:`.report`),
several seeds (:mod:`.seeds`) and the figures (:mod:`.plots`). ``recipes/wmt_en_de.py`` is the command line;
docs/en_de.md the guide. Needs ``pip install 'ls-seq[studies]'``: without it, importing this package raises
:class:`ls_seq.errors.MissingExtraError` naming the extra."""

from ls_seq._extras import require_extra

# First, so that a core install (no `ls-seq[studies]`) stops here in one line, not in a traceback from deep inside.
require_extra("studies", feature="the EN-DE study")

from ls_seq.studies.en_de.arguments import DataArguments, ModelArguments, StudyArguments  # noqa: E402
from ls_seq.studies.en_de.study import run_study  # noqa: E402

__all__ = ["DataArguments", "ModelArguments", "StudyArguments", "run_study"]
