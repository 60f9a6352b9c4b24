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
    from ffnbench.strategies.declare import Option


    @register
    class Throwaway(SyncDataParallel):
        """Throwaway sync data parallelism: a summed all-reduce, then a division."""
        name = "throwaway_sync"
        options = {"divide_by": Option(0, "0: the number of ranks", at_least=0)}

        def setup(self):
            weights = comm.broadcast(self.comm, self.model.get_flat(), self.ctx.settings.timeout_s, "weights")
            self.model.set_flat(weights)
            self.summed = np.empty(self.model.num_params, np.float32)

        def average(self, grad):
            comm.sum_allreduce(self.comm, grad, self.summed, self.ctx.settings.timeout_s, "gradients")
            return self.summed / np.float32(self.ctx.layout.options["divide_by"] or self.comm.size)
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


@pytest.mark.slow
def test_a_registered_strategy_needs_no_other_edit(plugin_env, runs):
    listed = ffnbench("strategies", env=plugin_env)
    assert listed.returncode == 0 and "throwaway_sync   Throwaway sync data parallelism" in listed.stdout

    bad = ffnbench("run", "configs/smoke.yaml", "--set", "strategy=throwaway_sync", "--set", "ranks=2",
                   "--set", "strategy_options.bogus=1", env=plugin_env)
    assert bad.returncode == 2 and "strategy_options.bogus: not an option of strategy throwaway_sync" in bad.stderr
    for value, why in (("-1", "must be >= 0"), ("half", "must be an integer")):  # checked from the declaration
        bad = ffnbench("run", "configs/smoke.yaml", "--set", "strategy=throwaway_sync", "--set", "ranks=2",
                       "--set", f"strategy_options.divide_by={value}", env=plugin_env)
        assert bad.returncode == 2 and f"strategy_options.divide_by: {why}" in bad.stderr, bad.stderr

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


@pytest.mark.slow
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
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from ((str(path.relative_to(root)), alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield from ((str(path.relative_to(root)), f"{node.module}.{alias.name}") for alias in node.names)


#: the modules of strategies/ that bench and plots may import: the contract and the MPI layer
CONTRACT = ("base", "comm", "declare", "records", "settings")


def test_bench_and_plots_see_only_the_registry_the_contract_and_the_mpi_layer():
    import pathlib
    submodules = {p.stem for p in (pathlib.Path(__file__).resolve().parents[1] / "strategies").glob("*.py")}
    for folder in ("bench", "plots"):
        for name, module in imported_modules(folder):
            if module.startswith("ffnbench.strategies."):
                submodule = module.split(".")[2]
                assert submodule in CONTRACT or submodule not in submodules, f"{folder}/{name} imports {module}"
    assert not [m for _, m in imported_modules("plots") if m.startswith("ffnbench.bench.analyse.report")]
    bench_to_plots = [(n, m) for n, m in imported_modules("bench") if m.startswith("ffnbench.plots")]
    assert {n for n, _ in bench_to_plots} <= {"cli.py"}, bench_to_plots


def top_level_names(path):
    import ast
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))} | {
        t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}


def test_the_mpi_layer_holds_only_what_strategies_call():
    """strategies/comm.py is what a strategy calls: every name in it is used by a strategy (starting
    ranks and bench's own messages live in bench/)."""
    import pathlib
    import re
    here = pathlib.Path(__file__).resolve().parents[1] / "strategies"
    comm = here / "comm.py"
    others = "\n".join(p.read_text() for p in here.glob("*.py") if p != comm)
    own = comm.read_text()
    for name in top_level_names(comm):
        used_by_strategies = re.search(rf"comm\.{name}\b", others)
        used_inside = len(re.findall(rf"\b{name}\b", own)) > 1
        assert used_by_strategies or used_inside, f"strategies/comm.py {name}: no strategy uses it"


def test_no_module_outside_strategies_reads_a_strategys_saved_state():
    """What a strategy saves (the dict its state() returns, handed to ctx.save_state) is opaque to
    bench: none of its keys appears as a string anywhere in bench/, plots/ or model/."""
    import ast
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    keys = set()
    for path in (root / "strategies").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "state":
                keys |= {k.value for d in ast.walk(node) if isinstance(d, ast.Dict)
                         for k in d.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    assert {"shard", "version", "lost"} <= keys  # the parameter server's, found
    for folder in ("bench", "plots", "model"):
        for path in (root / folder).rglob("*.py"):
            strings = {n.value for n in ast.walk(ast.parse(path.read_text()))
                       if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            read = sorted(s for s in strings if s.startswith("strategy.") and s.split(".", 1)[1] in keys)
            assert not read, f"{folder}/{path.name} reads a strategy's saved state: {read}"


def test_strategies_and_model_import_neither_bench_nor_each_other():
    for name, module in imported_modules("strategies"):
        assert not module.startswith(("ffnbench.bench", "ffnbench.model", "ffnbench.plots")), (name, module)
    for name, module in imported_modules("model"):
        assert not module.startswith(("ffnbench.bench", "ffnbench.strategies", "ffnbench.plots")), (name, module)


#: bench's groups and what each may import: data flows config -> run -> analyse, never back; planning
#: and measuring use both; only the CLI sees plots
BENCH_LAYERS = {
    "config": {"model", "strategies"},
    "analyse": {"config", "model", "strategies"},
    "run": {"config", "analyse", "model", "strategies"},
    "measure": {"config", "run", "analyse", "model", "strategies"},
    "plan": {"config", "run", "measure", "analyse", "model", "strategies"},
}


def test_benchs_groups_import_one_way():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1] / "bench"
    layers = {path.relative_to(root).parts[0].removesuffix(".py") for path in root.rglob("*.py")} - {"__init__"}
    assert layers == set(BENCH_LAYERS) | {"cli"}, layers
    for name, module in imported_modules("bench"):
        layer = name.split("/")[0].removesuffix(".py")
        parts = module.split(".")
        if layer == "cli" or parts[0] != "ffnbench":
            continue
        target = parts[2] if parts[1] == "bench" and len(parts) > 2 else parts[1]
        assert target == layer or target in BENCH_LAYERS[layer], f"bench/{name} imports {module}"
