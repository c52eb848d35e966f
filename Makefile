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

# The main job on the embedded default: measure this machine, search a plan for
# tiny PPO on 4 virtual CPU devices priced with that profile, run it on a local
# Ray cluster, then picture estimate beside measurement. Everything lands in
# runs/demo/ (replaced on each run); spec.yaml is specs/tiny-ppo-cpu.yaml with
# `hardware: profile.json`.
DEMO := runs/demo
demo: install
	$(PYTHON) -m planner.cli validate specs/*.yaml
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(PYTHON) -m planner.cli profile --quick --out $(DEMO)/profile.json
	sed 's/hardware: cpu}/hardware: profile.json}/' specs/tiny-ppo-cpu.yaml > $(DEMO)/spec.yaml
	$(PYTHON) -m planner.cli search $(DEMO)/spec.yaml -o $(DEMO)/plan.json --steps 5000
	$(PYTHON) -m runtime.cli run $(DEMO)/plan.json --run-dir $(DEMO)/run
	$(PYTHON) -m planner.cli show $(DEMO)/plan.json -o $(DEMO)/plan.html \
		--perfetto $(DEMO)/plan_trace.json --measured $(DEMO)/run/trace.json
	@echo "open $(DEMO)/plan.html; metrics in $(DEMO)/run/metrics.jsonl"

test: install
	$(PYTHON) -m pytest -q
