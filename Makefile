# Two commands on a fresh machine: each creates or reuses the virtual environment $(VENV), installs what is missing
# (.ci/setup-venv: the CPU torch where no GPU torch is present, the project with the [studies] extra, for the tests
# also the [dev] extras, which hold every other extra, and fairseq) and then runs. A second call finds its stamp and
# goes straight to the run.
#
#   make study                                  the EN-DE study on its small default (`tiny`)
#   make study ARGS="--preset tiny-lowdata"     ARGS come last, so they override the defaults below
#   make test                                   the test suite
#   make test PYTEST_ARGS="tests/test_io.py"    a part of it
#   make lint / make typecheck                  ruff / mypy (strictness: [tool.mypy] in pyproject.toml)
#   make compat                                 the oldest supported versions' environment and its tests (.ci/compat)
#   make docs                                   the documentation site and API reference into site/ (mkdocs.yml)
#   make core-install                           `pip install ls-seq` with no extra, in a fresh environment, and its checks

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The local Multi30k copy when there is one (CI's ../shared); without it the study downloads Multi30k.
DATA_DIR ?= $(if $(wildcard ../shared/data/multi30k),../shared/data/multi30k)
STUDY_ARGS ?= --preset tiny --output_dir outputs/en_de_tiny $(if $(DATA_DIR),--data_dir $(DATA_DIR))
ARGS ?=
PYTEST_ARGS ?=

# Offline-friendly defaults for the tests: nothing in them reaches a hub, and plots render without a display.
TEST_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg WANDB_MODE=offline

.PHONY: study test lint typecheck setup setup-dev compat core-install

setup:
	@PYTHON=$(PYTHON) .ci/setup-venv $(VENV) base

setup-dev:
	@PYTHON=$(PYTHON) .ci/setup-venv $(VENV) dev

study: setup
	$(BIN)/accelerate launch recipes/wmt_en_de.py $(STUDY_ARGS) $(ARGS)

# The fairseq tests run first and alone: their SIGKILL-and-resume test is sensitive to where the kill lands, which
# a second worker's load moves (see CHANGELOG.md); then the rest on 2 workers, whose summary is the last line.
test: setup-dev
ifeq ($(strip $(PYTEST_ARGS)),)
	$(TEST_ENV) $(BIN)/python -m pytest -p no:xdist tests/fairseq
	$(TEST_ENV) $(BIN)/python -m pytest -n 2 tests --ignore=tests/fairseq
else
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)
endif

# The lint rules and the formatter (both configured in pyproject.toml's [tool.ruff]): a finding or an unformatted
# file fails; `ruff format .` formats.
lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# ls_seq and ls_seq_fairseq, as configured in pyproject.toml's [tool.mypy]. A cold run (no .mypy_cache) took 70-80 s
# on 2 busy cores and 2.2 GB of memory (most of it reading torch and transformers), a warm one 2 s.
typecheck: setup-dev
	$(BIN)/mypy

compat:
	.ci/compat

# --strict: any warning fails the build (a broken link or anchor, an Args: entry naming no parameter; mkdocs.yml).
.PHONY: docs
docs: setup-dev
	$(BIN)/mkdocs build --strict

core-install:
	.ci/core-install
