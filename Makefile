# The two set-up commands (see README):
#   make demo   venv + fastcnn + Fashion-MNIST, then train mnist_cnn for one epoch
#   make test   venv + test dependencies, then the test suite (what .ci/run runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test data bench fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,image,plot,mpi,onnx]'
	touch $@

data:
	@sh scripts/get-fashion-mnist.sh

demo: $(VENV)/.installed data
	$(BIN)/fastcnn train --dataset fashion-mnist --model mnist_cnn --epochs 1

test: $(VENV)/.installed data
	FASTCNN_REQUIRE_DATA=1 FASTCNN_REQUIRE_MPI=1 $(BIN)/python -m pytest -q
	FASTCNN_BENCH_SMALL=1 FASTCNN_REQUIRE_MPI=1 $(BIN)/python -m pytest -q benchmarks --benchmark-disable -p no:cacheprovider

# The fuzz targets of tests/fuzz with 50x the cases CI runs, random (FASTCNN_FUZZ_EXAMPLES=N sets the number).
fuzz: $(VENV)/.installed
	FASTCNN_FUZZ=long $(BIN)/python -m pytest -q tests/fuzz -p no:cacheprovider

bench: $(VENV)/.installed
	$(BIN)/python -m pytest benchmarks --benchmark-only --benchmark-json=bench.json

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
