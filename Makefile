# The two set-up commands of the README: `make demo` runs the main job on the embedded default
# task (Lift), `make test` runs the tests. Both create .venv with Python 3.12 and install into it.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.reverie-installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test bench clean-venv
demo: $(STAMP)
	$(BIN)/reverie-demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.collect_throughput $(ARGS) && $(BIN)/python -m benchmarks.expert_success

# Python 3.12 from the PATH, else from pyenv (PYENV_ROOT or ~/.pyenv), else a clear message.
$(STAMP): pyproject.toml
	@py=""; for c in python3.12 "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	  if "$$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then py="$$c"; break; fi; \
	done; \
	if [ -z "$$py" ]; then echo "error: Reverie needs Python 3.12: none found on the PATH or under pyenv (\$$PYENV_ROOT/versions/3.12.*). Install it, e.g. 'pyenv install 3.12', and run make again." >&2; exit 1; fi; \
	echo "using $$py"; \
	[ -x $(BIN)/python ] || "$$py" -m venv $(VENV); \
	$(BIN)/python -m pip install -q --upgrade pip && \
	$(BIN)/python -m pip install -q -e ".[dev]" && touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
