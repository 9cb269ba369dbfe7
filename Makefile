# Two commands on a fresh machine: `make demo` and `make test`. Both create the environment first.
# uv installs PyPI's torch/torchvision pair (pip's configuration on some machines points at a CPU-only
# torch wheel that PyPI's torchvision cannot load with; uv ignores that configuration).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
RUN    ?= runs/demo
CONFIG ?= configs/iqothnccd.yaml

.PHONY: setup demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	uv venv --quiet --allow-existing $(VENV)
	uv pip install --quiet --python $(PY) -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/lungct train --config $(CONFIG) --out $(RUN) --overwrite
	$(VENV)/bin/lungct evaluate --run $(RUN) --out $(RUN)/eval
	$(VENV)/bin/lungct explain --run $(RUN) --out $(RUN)/explain --from-split test --per-class 2
	@echo "report: $(RUN)/eval/metrics.json (plots and classification_report.txt beside it); Grad-CAM overlays: $(RUN)/explain"

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not realdata"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: setup
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: setup
	$(PY) benchmarks/train_iqothnccd.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
