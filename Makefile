# clip-app: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
ARGS ?=

.PHONY: run test lint install install-dev clean

run: $(VENV)/.installed
	$(PY) app.py $(ARGS)

test: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(PY)
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-deps "clip-benchmark==1.6.2"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
