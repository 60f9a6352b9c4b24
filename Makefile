# The README's two commands. Each sets up whatever is missing (apt MPI, the cached pinned venv).
.PHONY: setup test test-fast demo study clean
DEMO := results/sweeps/demo
NETDEMO := results/sweeps/network_demo

setup:
	@bash scripts/setup_env.sh

test: setup
	.venv/bin/python -m pytest -q --durations=15 tests

# the edit loop: every test not marked slow (a few minutes)
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow" tests

# single vs Horovod all-reduce x2 vs async PS 1+2 on one FOV budget, then the same on 4 emulated nodes
# (re-running resumes; `make clean` restarts)
demo: setup
	.venv/bin/ffnbench sweep configs/sweeps/demo.yaml --out $(DEMO)
	.venv/bin/ffnbench report $(DEMO)
	.venv/bin/ffnbench plot $(DEMO) > /dev/null
	@echo "report:  $(DEMO)/report.md  $(DEMO)/report.csv"
	@echo "figures: $$(ls $(DEMO)/plots/*.png | tr '\n' ' ')"
	@# the network decides: 4 emulated nodes on 1 Gbit/s links (needs root; skipped elsewhere, saying why)
	@if .venv/bin/ffnbench cluster check > /dev/null; then \
	  .venv/bin/ffnbench sweep configs/sweeps/network_demo.yaml --out $(NETDEMO) && \
	  .venv/bin/ffnbench report $(NETDEMO) && .venv/bin/ffnbench plot $(NETDEMO) > /dev/null && \
	  echo "network: $(NETDEMO)/report.md  $$(ls $(NETDEMO)/plots/*.png | tr '\n' ' ')"; \
	else echo "network comparison skipped: $$(.venv/bin/ffnbench cluster check)"; fi

# one study of the paper's findings, e.g. `make study STUDY=lr_scaling` (hours; re-running resumes)
study: setup
	@test -n "$(STUDY)" || { echo "make study STUDY=NAME: one of $$(ls configs/studies | sed 's/.yaml//' | tr '\n' ' ')"; exit 2; }
	.venv/bin/ffnbench study $(STUDY)

clean:
	rm -rf results .pytest_cache
