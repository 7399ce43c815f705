# `make test` and `make serve` do all set-up on a fresh machine (see README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1

.PHONY: install test serve

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The API with the embedded defaults: SQLite, storage and caches under ./data, jobs trained in a
# child process (no Redis, no Postgres). Other catalog models download weights on first use.
# On 127.0.0.1 it serves without API keys (CLIPADAPT_AUTH=disabled, allowed only on loopback);
# `make serve CLIPADAPT_AUTH=required` asks for keys (`clipadapt keys create --owner NAME`).
HOST ?= 127.0.0.1
PORT ?= 8000
CLIPADAPT_AUTH ?= disabled
serve: export HF_HUB_OFFLINE := 0
serve: export CLIPADAPT_AUTH := $(CLIPADAPT_AUTH)
serve: export CLIPADAPT_BIND_HOST := $(HOST)
serve: $(STAMP)
	$(VENV)/bin/alembic upgrade head
	$(VENV)/bin/uvicorn api.main:app --host $(HOST) --port $(PORT)
