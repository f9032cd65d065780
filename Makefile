# Two commands matter on a fresh machine: `make demo` and `make test`. Each creates or refreshes the
# virtual environment first and installs everything it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-stamp
# Extra pip arguments for torch, e.g. an index that serves the CPU build on machines without it at hand.
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

export TOKENIZERS_PARALLELISM := false
export FLUXSCORE_OFFLINE := 1

.PHONY: venv test lint typecheck unit demo demo-batch demo-packages annotate bench clean settings-doc

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: resolving it later through another package would pull a CUDA build.
	$(PIP) install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

unit: venv
	$(VENV)/bin/pytest -q -m "not integration" $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/fluxscore demo

# The annotator page on the demo queue, http://127.0.0.1:8770/ (prints the token of the annotator "demo").
# With REDIS_URL and KAFKA_BOOTSTRAP set it serves their active-learning.<filter> queue; without them it
# starts its own redis-server and queues the bundled sample articles, scored by the demo filters.
annotate: venv
	$(VENV)/bin/fluxscore annotate serve --demo

# The same scoring on the bundled sample, in-process, without broker or Redis.
demo-batch: venv
	mkdir -p out
	$(VENV)/bin/fluxscore score scoring/data/sample_articles.jsonl --filters demo,demo_tech -o out/scores.jsonl

# Rebuild the demo filter packages (synthetic data, probes, students, calibration, thresholds).
demo-packages: venv
	$(VENV)/bin/fluxscore train demo

# The README's variable table, regenerated from the settings classes (a test checks it is current).
settings-doc: venv
	$(PY) -c "from pathlib import Path; from scoring.settings import write_readme_table; write_readme_table(Path('README.md'))"

bench: venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
