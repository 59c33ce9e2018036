# Two commands matter: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: requirements.txt requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

.PHONY: install demo daemon-demo test lint bench
install: $(BIN)/.installed

demo: install  ## scheduled_backup end to end on a throwaway PostgreSQL and a local S3 server
	$(BIN)/python -m service demo

daemon-demo: install  ## the daemon on the same sandbox, with a fast schedule
	$(BIN)/python -m service demo --daemon

test: install  ## every test; uses FAC_BACKUP_TEST_DATABASE_URL when set, else a throwaway cluster
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check service tests bench

bench: install  ## FAC-like ~1 GB database, old method vs ours, same run
	$(BIN)/python -m bench
