# make test: create .venv if needed, install xrais with its test extras, run pytest.
# make demo: same set-up, then run the pipeline as far as it exists, small, on the CPU.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xrais-installed
DATA ?= ../shared/data
TEST_WORKERS ?= 2

.PHONY: test demo venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh "$(DATA)"

bench: $(STAMP)
	$(PY) benchmarks/bench_conditioning.py --data "$(DATA)"
	$(PY) benchmarks/bench_simulator.py --shared "$(DATA)/.."
	$(PY) benchmarks/bench_simulate.py
	$(PY) benchmarks/bench_spots.py
	$(PY) benchmarks/bench_spots_find.py --data "$(DATA)"
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_infer.py --data "$(DATA)"
	$(PY) benchmarks/bench_integrate.py
	$(PY) benchmarks/bench_scale.py --data "$(DATA)" --out "$${TMPDIR:-/tmp}/xrais-bench-scale"

clean:
	rm -rf $(VENV) build *.egg-info
