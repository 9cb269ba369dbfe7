# Two commands on a fresh machine: `make demo` and `make test`. Both create the environment first.
# uv installs PyPI's torch/torchvision pair (pip's configuration on some machines points at a CPU-only
# torch wheel that PyPI's torchvision cannot load with; uv ignores that configuration).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
RUN    ?= runs/demo
CONFIG ?= configs/iqothnccd.yaml

.PHONY: setup demo test test-fast lint format bench bench-serve pipeline clean lock

$(STAMP): pyproject.toml requirements.lock
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	uv venv --quiet --allow-existing $(VENV)
	@# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile torch's
	@# and timm's sources again at each start (about 8 s per `lungct` command on 2 cores).
	@# -c requirements.lock: pyproject.toml says what is needed, the lock which versions, so that a fresh machine
	@# trains the models and reproduces the figures that the docs report (`make lock` renews it).
	uv pip install --quiet --compile-bytecode --python $(PY) -c requirements.lock -e '.[all,dev]'
	@touch $(STAMP)

# The versions every environment of this project installs: all extras, every platform (--universal). Existing
# pins are kept unless pyproject.toml needs otherwise; `make lock UPGRADE=1` moves everything to the newest.
lock:
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	uv pip compile --quiet pyproject.toml --extra all --extra dev --universal --python-version 3.11 \
	  $(if $(UPGRADE),--upgrade) -o requirements.lock

setup: $(STAMP)
	@# Debian's chromium for the web app's browser test (Playwright drives it; no browser download).
	@if [ ! -x /usr/bin/chromium ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      || echo "setup: chromium could not be installed; the browser test will be skipped"; \
	  else \
	    echo "setup: no apt-get here; install Chromium at /usr/bin/chromium to run the browser test"; \
	  fi; \
	fi
	@# Debian's Orthanc with its DICOMweb plugin (a real PACS for tests/pacs) and dicom3tools (dciodvfy checks the SR).
	@if [ ! -x /usr/sbin/Orthanc ] || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || ! command -v dciodvfy >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb dicom3tools \
	      || echo "setup: orthanc/dicom3tools could not be installed; the PACS tests will be skipped"; \
	  else \
	    echo "setup: no apt-get here; install Orthanc, its DICOMweb plugin and dicom3tools to run tests/pacs"; \
	  fi; \
	fi

demo: setup
	$(VENV)/bin/lungct train --config $(CONFIG) --out $(RUN) --overwrite
	$(VENV)/bin/lungct evaluate --run $(RUN) --out $(RUN)/eval_uncalibrated --quiet
	$(VENV)/bin/lungct calibrate --run $(RUN)
	$(VENV)/bin/lungct familiarity --run $(RUN)
	$(VENV)/bin/lungct evaluate --run $(RUN) --out $(RUN)/eval
	$(VENV)/bin/lungct explain --run $(RUN) --out $(RUN)/explain --from-split test --per-class 2
	@echo "report: $(RUN)/eval/metrics.json, calibrated (before calibration: $(RUN)/eval_uncalibrated); Grad-CAM overlays: $(RUN)/explain"

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	@# one test file per worker process (--dist loadfile: a file's module fixtures, such as a started PACS, stay together)
	$(VENV)/bin/pytest -q -n auto --maxprocesses 4 --dist loadfile --durations=15

test-fast: setup
	$(VENV)/bin/pytest -q -n auto --maxprocesses 4 --dist loadfile -m "not realdata"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: setup
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: setup
	$(PY) benchmarks/train_iqothnccd.py

bench-serve: setup
	$(PY) benchmarks/serve.py

pipeline: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH dvc repro

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
