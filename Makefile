# The README's two commands: `make demo` (install + main job) and `make test`
# (install + whole test suite). PYTHON can point at a virtualenv's python.
PYTHON ?= python3

.PHONY: install demo test

# torch first, pinned: the CPU build of 2.13.0 is on this machine's local disk,
# while an unpinned `torch` would fetch a multi-GB CUDA build. Skipped when a
# torch >= 2.4 is already importable (e.g. on a GPU machine).
install:
	@$(PYTHON) -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 4))" 2>/dev/null \
		|| $(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	$(PYTHON) -m planner.cli validate specs/*.yaml
	$(PYTHON) -m planner.cli graph specs/tiny-ppo-cpu.yaml

test: install
	$(PYTHON) -m pytest -q
