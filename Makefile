# make run | make test | make lab | make bench — each creates .venv if needed: requirements.txt, then
# the project itself, editable (pyproject.toml), so `import sage_core` works from any folder.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Pipeline knobs: make run PROFILE=smoke DEVICE=cpu ARGS="--epochs 3"
PROFILE ?= auto
DEVICE  ?= auto
ARGS    ?=

.PHONY: run test lab bench clean-venv

# JupyterLab refuses to start as root without --allow-root; it is added only when run as root.
LAB_ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

# requirements.txt first (torch pinned exactly), then the project with --no-deps, so the editable
# install never re-resolves torch or anything else.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m sage_core pipeline --profile $(PROFILE) --device $(DEVICE) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks $(LAB_ROOT_FLAG)

bench: $(STAMP)
	$(PY) -m sage_core bench --device $(DEVICE)

clean-venv:
	rm -rf $(VENV)
