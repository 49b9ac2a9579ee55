# Two commands on a fresh machine:
#   make lab    virtual env + package + RabbitMQ (if missing) + broker up + JupyterLab opened on
#               notebooks/ (the whole course folder is browsable, exercises/ included)
#   make test   the same set-up, then the whole test suite against the live broker
# Both are idempotent. Test tiers (each does the same set-up first):
#   make test              everything, in parallel (what CI runs); prints seconds per area at the end
#   make test-fast         no notebooks, no extra nodes (unit tests and checks; about 2 min)
#   make test-chapter CH=05   one chapter: notebook, solution, blank exercises, wrong answers, grading
#   make test-browser      chapter 3 in JupyterLab in Debian's Chromium (Playwright): no errors, figures
#                          as pictures, a live widget; screenshots in $(REPORTS)/browser/
# Variables: PYTHON (default python3), VENV (default .venv), LAB_ARGS (extra JupyterLab flags,
# e.g. LAB_ARGS=--no-browser), PYTEST_ARGS, WORKERS (pytest-xdist workers, default 6: the tests
# mostly wait on the broker, so more workers than cores pays: on 2 cores the suite took 459 s with 4
# and 419 s with 6, the CPU then ~90% busy), REPORTS (default .reports).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LAB_ARGS ?=
PYTEST_ARGS ?=
WORKERS ?= 6
REPORTS ?= .reports
# --max-worker-restart=0: a crashed worker ends the run (red, with the test it crashed on) instead of
# being replaced: pytest-xdist 3.8.0's loadgroup scheduler can hang for ever after a replacement
# (pytest-dev/pytest-xdist#1323, #1378; a CI run hung until its time limit that way).
PYTEST := $(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup --max-worker-restart=0
ROOT_FLAG := $(shell [ "$$(id -u)" = "0" ] && echo --allow-root)

.PHONY: lab test test-fast test-chapter test-browser setup venv rabbitmq chromium broker-up broker4-up exercises clean help

help:
	@echo "make lab                - prepara tudo e abre o JupyterLab em notebooks/"
	@echo "make test               - prepara tudo e roda todos os testes"
	@echo "make test-fast          - só os testes rápidos (sem cadernos nem nós extras)"
	@echo "make test-chapter CH=05 - tudo de um capítulo (caderno, soluções, exercícios, correção)"
	@echo "make test-browser       - o capítulo 3 no JupyterLab, num Chromium sem janela (figuras, widget)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

rabbitmq:
	@bash .ci/install-rabbitmq.sh

setup: venv rabbitmq

# Debian's Chromium for tests/test_browser.py (Playwright drives it; it never downloads a browser).
# Where it can't be installed (not root, no apt-get), the browser test skips and says why.
chromium:
	@bash .ci/install-chromium.sh

broker-up: setup
	$(BIN)/curso broker up

# The RabbitMQ 4.x course broker (Debian 13's 4.0 in a chroot, built once; root only), which the
# suite runs every notebook on as well. Where it can't run (not root), the notebooks' 4.x runs skip.
broker4-up: setup
	@bash .ci/install-debootstrap.sh
	-$(BIN)/curso broker up --versao 4

lab: broker-up
	$(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks $(ROOT_FLAG) $(LAB_ARGS)

test: broker-up broker4-up chromium
	@mkdir -p $(REPORTS)
	CURSO_REPORTS=$(REPORTS) $(PYTEST) --junitxml=$(REPORTS)/junit.xml $(PYTEST_ARGS); status=$$?; \
	  $(BIN)/python benchmarks/suite_cost.py $(REPORTS)/junit.xml || true; exit $$status

test-fast: broker-up
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

test-chapter: broker-up broker4-up
	@test -n "$(CH)" || { echo "use: make test-chapter CH=05"; exit 2; }
	$(PYTEST) --chapter $(CH) $(PYTEST_ARGS)

test-browser: broker-up chromium
	@mkdir -p $(REPORTS)
	CURSO_REPORTS=$(REPORTS) $(BIN)/python -m pytest tests/test_browser.py $(PYTEST_ARGS)

exercises: venv
	$(BIN)/curso exercises build

clean:
	-$(BIN)/curso broker down
	rm -rf $(VENV)
