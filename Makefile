# The README's two commands. Each sets up whatever is missing (apt MPI, the cached pinned venv).
.PHONY: setup test demo clean

setup:
	@bash scripts/setup_env.sh

test: setup
	.venv/bin/python -m pytest -q tests

demo: setup
	.venv/bin/ffnbench run configs/bench.yaml --set run.out=results/demo

clean:
	rm -rf results .pytest_cache
