# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install accuracy clean

$(BIN)/paraplan: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/paraplan

demo: install
	$(BIN)/paraplan plan --model llama3-70b --cluster dgx-h100:64 --global-batch 256 --seq-len 8192 --why tp=8,pp=4,dp=2,mbs=1
	$(BIN)/paraplan validate --runs data/validation/published_runs.csv --worst 5
	$(BIN)/python -m paraplan.report.demo out/demo    # HTML report + Perfetto trace of a search (README)

test: install
	$(BIN)/python -m pytest

accuracy: install
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
