# Everything a fresh machine needs, then the main job or the tests.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data quickstart test lint report

install: data  ## system data package, PyTorch, zoo with test and ONNX extras, both plugins
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[dev,onnx]" -e plugins/zoo-timm -e plugins/zoo-convmixer

data:  ## Fashion-MNIST from Debian where apt exists (offline-friendly); torchvision downloads elsewhere
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "warning: could not install dataset-fashion-mnist; zoo will try torchvision's download"; \
	fi

quickstart: install  ## train the quickstart recipe on real Fashion-MNIST, then show its outputs
	zoo train recipes/quickstart.yaml --out runs/quickstart/latest --force
	@echo; cat runs/quickstart/latest/summary.json; ls -l runs/quickstart/latest

test: install  ## the full test suite, slow and integration tests included (what CI runs)
	$(PYTHON) -m pytest -m "" -q

report: install  ## the seed's sweeps and best models on Fashion-MNIST, smoke-test profile (~12 min); PROFILE=cpu make report for the study sized for a CPU (work in progress: ~110 min on 2 cores)
	bash benchmarks/make_report.sh

lint:  ## ruff check, ruff format --check, mypy
	ruff check zoo tests plugins benchmarks hubconf.py
	ruff format --check zoo tests plugins benchmarks hubconf.py
	mypy zoo
