# Two commands on a fresh machine:
#   make lab    virtual env + package + RabbitMQ (if missing) + broker up + JupyterLab opened on
#               notebooks/ (the whole course folder is browsable, exercises/ included)
#   make test   the same set-up, then the whole test suite against the live broker
# Both are idempotent. Variables: PYTHON (default python3), VENV (default .venv),
# LAB_ARGS (extra JupyterLab flags, e.g. LAB_ARGS=--no-browser), PYTEST_ARGS.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LAB_ARGS ?=
PYTEST_ARGS ?=
ROOT_FLAG := $(shell [ "$$(id -u)" = "0" ] && echo --allow-root)

.PHONY: lab test setup venv rabbitmq broker-up exercises clean help

help:
	@echo "make lab   - prepara tudo e abre o JupyterLab em notebooks/"
	@echo "make test  - prepara tudo e roda todos os testes"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

rabbitmq:
	@bash .ci/install-rabbitmq.sh

setup: venv rabbitmq

broker-up: setup
	$(BIN)/curso broker up

lab: broker-up
	$(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks $(ROOT_FLAG) $(LAB_ARGS)

test: broker-up
	$(BIN)/python -m pytest $(PYTEST_ARGS)

exercises: venv
	$(BIN)/curso exercises build

clean:
	-$(BIN)/curso broker down
	rm -rf $(VENV)
