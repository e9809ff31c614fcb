# Thin targets; the work is done by the flops-mlops CLI and pytest. Each creates or reuses .venv.
# Debian's interpreter where it exists: tracking servers started as root run as an unprivileged account
# (tracking.os_user), which must be able to run it (an interpreter under /root, such as pyenv's, is closed to it).
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/local.yaml
FLOPS  := $(BIN)/flops-mlops --config $(CONFIG)
DEMO_TENANT  ?= acme
DEMO_PROJECT ?= demo
DEMO_PORT    ?= 8080

.PHONY: venv account test demo down status clean ui-screenshots

LOCK   := deploy/images/constraints.txt

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==26.3
	$(BIN)/pip install --quiet --constraint $(LOCK) -e '.[fl,provision,test]'
	touch $@

## make account: as root, the stack's unprivileged account (tracking.os_user in configs/): the embedded FTP store runs
## as it; each tenant's servers run as <os_user>-<tenant>, which `up` creates
account:
	@if [ "$$(id -u)" = 0 ] && ! id -u flops-mlops >/dev/null 2>&1; then \
	    echo "creating the system account flops-mlops (tracking servers never run as root)"; \
	    useradd --system --no-create-home --shell /usr/sbin/nologin flops-mlops; fi

## make test: the whole test suite (tests needing a missing service skip, or fail with FLOPS_REQUIRE_SERVICES=1),
## on TEST_WORKERS pytest-xdist workers; each test file runs whole on one worker, so its shared fixtures stay shared;
## the 40 slowest steps are listed at the end (where to make the suite faster); the slowest files start first
## (tests/conftest.py: SLOW_FILES)
TEST_WORKERS ?= 2
test: venv account
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=40

## make ui-screenshots: the browser test (tests/ui: a real round, then the MLflow UI in Debian's chromium), with its
## screenshots written to docs/images/ui/ (the README shows them) instead of test-artifacts/ui/
ui-screenshots: venv account
	FLOPS_UI_SCREENSHOTS=docs/images/ui $(BIN)/pytest tests/ui

## make demo: bring the embedded stack up (detached), run a 3-round FL project with 2 learners, print the summary,
## serve its champion; the last line is a curl command that gets predictions from it
demo: venv account
	$(FLOPS) secrets init
	$(FLOPS) up --detach
	$(FLOPS) round --tenant $(DEMO_TENANT) --project $(DEMO_PROJECT) --rounds 3 --learners 2
	@$(FLOPS) serve --tenant $(DEMO_TENANT) --project $(DEMO_PROJECT) --stop >/dev/null
	@echo "The stack and the model server keep running (MLflow UI above). Stop them with: make down"
	$(FLOPS) serve --tenant $(DEMO_TENANT) --project $(DEMO_PROJECT) --port $(DEMO_PORT) --detach

## make down: stop the stack started by make demo (data stays; add ARGS=--purge to delete it)
down: venv
	$(FLOPS) down $(ARGS)

status: venv
	$(FLOPS) status
