# Set-up and everyday commands. `make demo` serves the dashboard on 127.0.0.1:8501;
# `make test` runs the whole suite. Both create .venv and install on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast zoo demo-run

$(STAMP): requirements.txt requirements-ray.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt -r requirements-ray.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamlit run dashboard/app.py --server.address 127.0.0.1 --server.port 8501 \
		--server.headless true --browser.gatherUsageStats false

test: $(STAMP)
	$(VENV)/bin/python -m pytest -ra

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -ra -m "not slow and not browser"

zoo: $(STAMP)
	$(VENV)/bin/lvs-audit build-zoo

demo-run: $(STAMP)
	$(VENV)/bin/lvs-audit demo-run
