# make run | make test | make lab | make bench — each creates .venv from requirements.txt if needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Pipeline knobs: make run PROFILE=smoke DEVICE=cpu ARGS="--epochs 3"
PROFILE ?= auto
DEVICE  ?= auto
ARGS    ?=

.PHONY: run test lab bench clean-venv

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m sage_core pipeline --profile $(PROFILE) --device $(DEVICE) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) -m sage_core bench --device $(DEVICE)

clean-venv:
	rm -rf $(VENV)
