# Two commands matter: `make demo` and `make test`. On a fresh Debian/Ubuntu machine they first
# install what they need: the system packages listed in scripts/setup-system (with apt-get, as
# root or through sudo), then .venv from the pinned lock. A second run checks files (milliseconds)
# and starts at once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: system install demo daemon-demo test lint bench bench-scale
system:  ## PostgreSQL 15, promtool, faketime, chromium, python3-venv: installed when missing, else a quick check
	@PYTHON=$(PYTHON) scripts/setup-system

PIP := $(BIN)/pip install --quiet --disable-pip-version-check
$(BIN)/.installed: requirements.txt requirements-dev.lock pyproject.toml | system
	@echo "building $(VENV) from requirements-dev.lock"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) --upgrade pip && $(PIP) -r requirements-dev.lock && $(PIP) --no-deps -e . \
	  || { printf '\nfac-backup cannot set up .venv: pip failed (above). No network to PyPI, or a %s\n\n' \
	       'proxy to set (HTTPS_PROXY, PIP_INDEX_URL)? Fix that and run the command again.' >&2; exit 1; }
	@touch $@

install: system $(BIN)/.installed

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

bench-scale: install  ## cost against size: media sync at 10k/100k objects, backup+restore at two sizes (long)
	$(BIN)/python -m bench scale
