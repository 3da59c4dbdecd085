# The README's two commands: `make train` (the main job) and `make test` (the whole suite).
# Both set up everything on a fresh machine that has python3 (3.11), g++ and the package
# registries: a virtual environment, the package with its compiled PS-RoI pooling op, the tools.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rfcn_tf_installed
# Forwarded to the commands: make train ARGS="--config bccd", make test ARGS="-k psroi"
ARGS ?=
# The suite runs in this many pytest-xdist worker processes (2: the cores of the development and
# CI machines); files stay whole on one worker (tests/conftest.py groups them). TEST_WORKERS=0
# runs it in one process.
TEST_WORKERS ?= 2

.PHONY: install train test lint benchmarks clean

$(STAMP): setup.py pyproject.toml $(wildcard custom_ops/psroi_pool/*) \
    $(wildcard custom_ops/deformable/*) $(wildcard custom_ops/common/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "setuptools>=68" wheel "tensorflow-cpu>=2.21,<2.22"
	# --no-build-isolation: compile the op against the TensorFlow just installed (no second copy).
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test,export,tensorboard]"
	# TF Serving's gRPC stubs require the `tensorflow` distribution by name; beside tensorflow-cpu
	# they work as they are, so they are installed without their dependencies (see README).
	$(PY) -m pip install --quiet --no-deps "tensorflow-serving-api>=2.21,<2.22"
	touch $(STAMP)

install: $(STAMP)

train: install
	$(PY) -m rfcn_tf.train $(ARGS)

# The project's ruff configuration (pyproject.toml): lint and formatting, checked, never rewritten.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope $(ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$status

benchmarks: install
	for script in benchmarks/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info rfcn_tf/ops/*.so
