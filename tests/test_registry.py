"""A strategy that is registered and named nowhere else is listed, validated, run, reported, plotted
and modelled by the simulator: the registry is the only place that knows strategies."""
import json
import os
import textwrap

import pytest

from conftest import ffnbench

THROWAWAY = textwrap.dedent('''
    """A strategy that exists only in this test."""
    import numpy as np

    from ffnbench.strategies import comm
    from ffnbench.strategies.base import SyncDataParallel, register


    @register
    class Throwaway(SyncDataParallel):
        """Throwaway sync data parallelism: a summed all-reduce, then a division."""
        name = "throwaway_sync"
        options = {"divide_by": 0}
        option_docs = {"divide_by": "0: the number of ranks"}

        def setup(self):
            weights = comm.broadcast(self.comm, self.model.get_flat(), self.ctx.settings.timeout_s, "weights")
            self.model.set_flat(weights)
            self.summed = np.empty(self.model.num_params, np.float32)

        def average(self, grad):
            comm.sum_allreduce(self.comm, grad, self.summed, self.ctx.settings.timeout_s, "gradients")
            return self.summed / np.float32(self.opts["divide_by"] or self.comm.size)
''')


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    where = tmp_path_factory.mktemp("plugin")
    (where / "throwaway_strategy.py").write_text(THROWAWAY)
    return dict(os.environ, PYTHONPATH=str(where), FFNBENCH_STRATEGIES="throwaway_strategy")


@pytest.fixture(scope="module")
def runs(plugin_env, tmp_path_factory):
    """A directory holding one complete run of the throwaway strategy, 2 ranks."""
    runs = tmp_path_factory.mktemp("runs")
    run = ffnbench("run", "configs/smoke.yaml", "--set", "strategy=throwaway_sync", "--set", "ranks=2",
                   "--set", "train.steps=12", "--set", "eval.every=6", "--set", "run.progress=false",
                   "--out", str(runs / "throwaway"), env=plugin_env, timeout=300)
    assert run.returncode == 0, run.stderr
    return runs


def test_a_registered_strategy_needs_no_other_edit(plugin_env, runs):
    listed = ffnbench("strategies", env=plugin_env)
    assert listed.returncode == 0 and "throwaway_sync   Throwaway sync data parallelism" in listed.stdout

    bad = ffnbench("run", "configs/smoke.yaml", "--set", "strategy=throwaway_sync", "--set", "ranks=2",
                   "--set", "strategy_options.bogus=1", env=plugin_env)
    assert bad.returncode == 2 and "strategy_options.bogus: not an option of strategy throwaway_sync" in bad.stderr

    summary = json.loads((runs / "throwaway" / "summary.json").read_text())
    assert summary["strategy"] == "throwaway_sync" and summary["workers"] == 2 and summary["fovs_total"] == 48

    report = ffnbench("report", str(runs), env=plugin_env)
    assert report.returncode == 0, report.stderr
    assert any(line.startswith("| throwaway_sync | 2 | 2 |") for line in report.stdout.splitlines()), report.stdout

    plot = ffnbench("plot", str(runs), env=plugin_env)
    assert plot.returncode == 0, plot.stderr
    assert (runs / "plots" / "convergence.png").exists() and (runs / "plots" / "breakdown.png").exists()

    validated = ffnbench("simulate", "--validate", str(runs), env=plugin_env)
    assert validated.returncode == 0, validated.stderr
    row = [line for line in validated.stdout.splitlines() if "throwaway_sync" in line]
    assert len(row) == 1 and row[0].startswith("| throwaway |"), validated.stdout
    ratio = float(row[0].strip("| ").split("|")[-1])
    assert 0.3 < ratio < 3  # modelled as a ring all-reduce of its measured compute times

    predicted = ffnbench("simulate", "--strategy", "throwaway_sync", "--workers", "1,64", env=plugin_env)
    assert predicted.returncode == 0 and "as ring_allreduce" in predicted.stdout, predicted.stderr


def test_without_the_plugin_the_run_directory_is_still_reported_but_not_modelled(runs):
    validated = ffnbench("simulate", "--validate", str(runs))
    assert validated.returncode == 0, validated.stderr
    assert "not modelled (throwaway_sync is not a registered strategy)" in validated.stdout
    report = ffnbench("report", str(runs))
    assert report.returncode == 0 and "throwaway_sync" in report.stdout, report.stderr


def imported_modules(folder):
    """(file, module) for every import in the folder's Python files, relative imports resolved."""
    import ast
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1] / folder
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from ((path.name, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield from ((path.name, f"{node.module}.{alias.name}") for alias in node.names)


def test_bench_and_plots_see_only_the_registry_the_contract_and_the_mpi_layer():
    import pathlib
    submodules = {p.stem for p in (pathlib.Path(__file__).resolve().parents[1] / "strategies").glob("*.py")}
    for folder in ("bench", "plots"):
        for name, module in imported_modules(folder):
            if module.startswith("ffnbench.strategies."):
                submodule = module.split(".")[2]
                assert submodule in ("base", "comm") or submodule not in submodules, f"{folder}/{name} imports {module}"
    assert not [m for _, m in imported_modules("plots") if m.startswith("ffnbench.bench.report")]
    bench_to_plots = [(n, m) for n, m in imported_modules("bench") if m.startswith("ffnbench.plots")]
    assert {n for n, _ in bench_to_plots} <= {"cli.py"}, bench_to_plots


def test_strategies_and_model_import_neither_bench_nor_each_other():
    for name, module in imported_modules("strategies"):
        assert not module.startswith(("ffnbench.bench", "ffnbench.model", "ffnbench.plots")), (name, module)
    for name, module in imported_modules("model"):
        assert not module.startswith(("ffnbench.bench", "ffnbench.strategies", "ffnbench.plots")), (name, module)
