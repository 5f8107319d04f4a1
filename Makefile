# The two set-up commands of the README: `make demo` runs the main job on the embedded default
# task (Lift), `make test` runs the tests. Both create .venv with Python 3.12 and install into it.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.reverie-installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test bench system-libs clean-venv
demo: system-libs $(STAMP)
	$(BIN)/reverie-demo $(ARGS)

test: system-libs $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

bench: system-libs $(STAMP)
	$(BIN)/python -m benchmarks.collect_throughput $(ARGS) && $(BIN)/python -m benchmarks.expert_success

# System libraries: EGL (Mesa) for headless MuJoCo rendering, FFmpeg's shared libraries for the
# torchcodec video backend (pyav and decord bring their own), Chromium for the report's headless
# screenshot (eval.report.screenshot). Installed with apt when missing and running as root;
# otherwise a note says what to install.
SYSTEM_LIBS := libegl1 libgl1-mesa-dri libavdevice59 libavfilter8 libavformat59 libavcodec59 libswscale6 libswresample4 libavutil57 chromium
system-libs:
	@if ! ldconfig -p | grep -q 'libEGL.so.1 ' || ! ldconfig -p | grep -q 'libavcodec.so.59 ' || [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system libraries: $(SYSTEM_LIBS)"; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_LIBS) >/dev/null \
	      || echo "warning: apt-get could not install $(SYSTEM_LIBS); rendering, the torchcodec backend or the report screenshot may be unavailable"; \
	  else echo "note: install $(SYSTEM_LIBS) (EGL for rendering, FFmpeg for torchcodec, Chromium for the report screenshot) with your package manager"; fi; \
	fi

# Python 3.12 from the PATH, else from pyenv (PYENV_ROOT or ~/.pyenv), else a clear message.
$(STAMP): pyproject.toml simulator/lerobot_plugin/pyproject.toml
	@py=""; for c in python3.12 "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	  if "$$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then py="$$c"; break; fi; \
	done; \
	if [ -z "$$py" ]; then echo "error: Reverie needs Python 3.12: none found on the PATH or under pyenv (\$$PYENV_ROOT/versions/3.12.*). Install it, e.g. 'pyenv install 3.12', and run make again." >&2; exit 1; fi; \
	echo "using $$py"; \
	[ -x $(BIN)/python ] || "$$py" -m venv $(VENV); \
	$(BIN)/python -m pip install -q --upgrade pip && \
	$(BIN)/python -m pip install -q -e ".[dev,notebooks]" && \
	$(BIN)/python -m pip install -q --no-deps -e simulator/lerobot_plugin && touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
