# Set-up is self-contained: `make demo` and `make test` work on a fresh clone.
# torch 2.13.0 is installed first so that no other (CUDA) torch build is pulled in.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test lint bench clean slurm

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	touch $@

$(VENV)/.dev: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[dev]"
	touch $@

$(VENV)/.demo: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[demo,rich]"
	touch $@

$(VENV)/.bench: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[bench]"
	touch $@

venv: $(VENV)/.dev

demo: $(VENV)/.demo
	$(PY) examples/digits_demo.py

# tests/launch/test_slurm.py starts a real single-node SLURM cluster: install slurm-wlm where it is missing and we
# can (root with apt-get); a no-op when slurmctld exists, never a failure (the SLURM tests then skip with the reason)
slurm:
	@command -v slurmctld >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) ; } \
	  || echo "make: could not install slurm-wlm; the SLURM launch tests will be skipped"

test: $(VENV)/.dev slurm
	$(PY) -m pytest tests -q -p no:cacheprovider

# ruff (rules and the reason for each exclusion: pyproject.toml [tool.ruff.lint]) and mypy (strict on fulmen.core
# and fulmen.fabric, strict but for warn_return_any on fulmen.trainer: [tool.mypy]) over the whole tree
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(VENV)/.bench
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) lightning_logs build *.egg-info
