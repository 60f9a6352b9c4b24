"""The studies' conclusions follow from the seeds: intervals decide, and "no difference" is said when
they include it. Runs are made up here; the studies themselves never run in the test suite."""
import dataclasses
import json

import numpy as np
import pytest
import yaml

from conftest import ffnbench
from ffnbench.bench.plan import studies
from ffnbench.bench.analyse.results import RunData
from ffnbench.strategies.records import EvalRecord


def run(strategy, workers, fields, losses, seed, **summary):
    """A complete run whose held-out loss ends at the given values (evaluations 10 steps apart)."""
    r = RunData(run_dir=f"/nowhere/{strategy}{workers}{seed}", run_id="x", status="complete",
                summary={"status": "complete", "strategy": strategy, "workers": workers, "train_s": 1.0,
                         "baselines": {"loss_constant": 0.69}, **summary},
                fields={"strategy": strategy, "train.seed": seed, **fields})
    r.__dict__["evals"] = [EvalRecord(step=10 * (i + 1), time=i + 1.0, fovs_total=i, loss=v, loss_sem=0.01, accuracy=0,
                                      precision=0, recall=0, f1=0, eval_s=0) for i, v in enumerate(losses)]
    return r


def lr_runs(losses):
    """{(rule, N): final loss of seed 0}; seeds 1 and 2 are +-0.005 around it."""
    return [run("emulated_sync", n, {"train.lr_scaling": rule}, [0.7, 0.6, v + d, v + d, v + d], seed)
            for (rule, n), v in losses.items() for seed, d in enumerate((0.0, 0.005, -0.005))]


INDEX = {"report": {"target_loss": 0.5}}


def test_compare_says_no_difference_when_the_interval_includes_zero():
    a, b = studies.Cell([0.40, 0.50, 0.45]), studies.Cell([0.41, 0.49, 0.46])
    assert "no difference" in studies.compare(a, b, "a", "b")
    assert studies.winner(a, b) is None
    c = studies.Cell([0.30, 0.31, 0.29])
    assert studies.compare(c, b, "c", "b").startswith("final loss, c vs b: c lower by 0.153")
    assert studies.winner(c, b) == 0 and studies.winner(b, c) == 1
    assert "too few seeds" in studies.compare(studies.Cell([0.3]), b, "c", "b")


def test_lr_scaling_agrees_only_when_every_n_does():
    agree = {("linear", 4): 0.40, ("sqrt", 4): 0.45, ("linear", 32): 0.60, ("sqrt", 32): 0.45}
    data, lines = studies.lr_scaling(lr_runs(agree), INDEX)
    assert lines[-1].startswith("The paper's claim") and "the data agree (" in lines[-1]
    # trailing means of 3: (0.6 + 2 x 0.45) / 3 = 0.5 reaches 0.5 at step 40; 0.455 needs step 50
    assert data["steps"][("sqrt", 32)].known == [40.0, 50.0, 40.0]
    assert data["steps"][("linear", 32)].known == []         # never reached
    assert lines[0].splitlines()[-1].endswith("| not reached (0 of 3) | 43 [31, 59] |  | 0 of 3 | 0 of 3 |")
    _, lines = studies.lr_scaling(lr_runs({**agree, ("linear", 32): 1.2}), INDEX)   # diverged: worse than constant
    assert lines[0].splitlines()[-1].endswith("| 3 of 3 | 0 of 3 |")
    mixed = {**agree, ("linear", 32): 0.45 + 0.004}           # within the seeds' spread
    _, lines = studies.lr_scaling(lr_runs(mixed), INDEX)
    assert "agree below 16 only" in lines[-1] and "no difference" in lines[-1]


def batch_runs():
    runs = []
    for b in (1, 32):
        for seed, d in enumerate((0.0, 0.005, -0.005)):
            runs.append(run("single", 1, {"train.batch_size": b, "train.steps": 8192 // b},
                            [0.40 + d if b == 1 else 0.50 + d], seed))
            runs.append(run("single", 1, {"train.batch_size": b, "train.steps": 400},
                            [0.60 + d if b == 1 else 0.45 + d], seed))
    return runs


def test_batch_size_tells_the_two_budgets_apart():
    data, lines = studies.batch_size(batch_runs(), INDEX)
    assert data["fov_budget"] == 8192 and data["step_budget"] == 400
    assert "per FOV small batches win; per step large batches win; in wall time " in lines[-1]
    assert lines[-1].endswith("the data agree per FOV and per step.")
    assert any(line.startswith("- train s to loss 0.5, batch 1 vs batch 32") for line in lines)


def sync_runs():
    runs = []
    for n in (2, 8, 32, 64):
        for seed, d in enumerate((0.0, 0.005, -0.005)):
            runs.append(run("emulated_sync", n, {"train.lr_scaling": "sqrt"}, [0.45 + d], seed))
            runs.append(run("emulated_async", n, {}, [(0.45 if n < 32 else 0.55) + d], seed,
                            staleness={"mean": n - 1}))
    return runs


def test_sync_async_finds_where_async_breaks():
    _, lines = studies.sync_async(sync_runs(), INDEX)
    assert "first worse than sync at 32 workers and at every larger N tested" in lines[-1]
    assert any(line.startswith("- 8 workers:") and "no difference" in line for line in lines)


def seg_runs():
    base = {"one_segment": {"are": 0.7, "voi": 3.0}, "threshold_components": {"are": 0.5, "voi": 2.0}}
    runs = []
    for s, w, are in (("single", 1, 0.30), ("allreduce", 2, 0.60)):
        for seed, d in enumerate((0.0, 0.01, -0.01)):
            r = run(s, w, {}, [0.4], seed)
            r.seg = {"are": are + d, "voi": 1.0 + d, "volume": "test", "baselines": base}
            runs.append(r)
    return runs


def test_segmentation_table_and_baselines():
    data, lines = studies.segmentation(seg_runs(), {})
    assert "| single x1 | 0.300 [" in lines[0] and "| threshold components (baseline) | 0.500 | 2.000 |" in lines[0]
    assert lines[-1].endswith("single x1.")
    assert np.isclose(data["are"]["allreduce x2"].interval[0], 0.60)


@pytest.mark.parametrize("name, runs, shown", [
    ("lr_scaling", lambda: lr_runs({("none", 1): 0.4, ("linear", 4): 0.40, ("sqrt", 4): 0.45, ("none", 4): 0.5,
                                    ("linear", 32): 0.60, ("sqrt", 32): 0.45}), ("lr × 1", "lr × N", "lr × √N")),
    ("batch_size", batch_runs, ("batch 1", "batch 32")),
    ("sync_async", sync_runs, ("sync, lr x sqrt", "async")),
    ("segmentation", seg_runs, ("single x1", "allreduce x2", "one segment", "threshold components"))])
def test_each_study_draws_its_figure(tmp_path, name, runs, shown):
    """Every series of the analysis is named in the figure, every panel has data drawn, and the image
    is not blank."""
    import matplotlib.image
    from ffnbench.plots.common import save
    from ffnbench.plots.studies import FIGURES
    made = runs()
    data, _ = studies.ANALYSES[name](made, INDEX)
    fig = FIGURES[name](made, data)
    texts = " | ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert all(label in texts for label in shown), (shown, texts)
    for ax in fig.axes:
        drawn = sum(len(line.get_xdata()) for line in ax.get_lines()) + len(ax.patches) + len(ax.collections)
        assert drawn > 0, f"an empty panel: {ax.get_title()!r}"
    png, _ = save(fig, str(tmp_path), name)
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300 and pixels.std() > 0.05


def test_an_unknown_study_is_one_line():
    r = ffnbench("study", "no_such_study")
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "no_such_study" in r.stderr and "lr_scaling" in r.stderr


def write_sweep(directory, runs):
    """The made-up runs as a sweep directory on disk: config, summary, per-step and held-out records."""
    entries = []
    for i, r in enumerate(runs):
        run_dir = directory / f"run{i}"
        run_dir.mkdir()
        config = {"strategy": r.fields["strategy"], "strategy_options": {"workers": r.summary["workers"]},
                  "train": {"lr_scaling": r.fields.get("train.lr_scaling", "none"), "seed": r.fields["train.seed"]}}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        (run_dir / "summary.json").write_text(json.dumps(r.summary))
        steps = [{"kind": "step", "rank": 0, "step": s, "time": s, "fovs": 4, "loss": 1.0, "model_version": s,
                  "compute_s": 0, "comm_s": 0, "data_s": 0, "wait_s": 0, "step_s": 0} for s in range(50)]
        evals = [{"kind": "eval", **dataclasses.asdict(e)} for e in r.evals]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in steps + evals))
        if r.seg:
            volume = directory / "test_volume.h5"
            (run_dir / "eval.json").write_text(json.dumps({**r.seg, "volume": f"{volume}:image,{volume}:labels"}))
        entries.append({"id": f"run{i}", "run_dir": str(run_dir), "status": "complete", "error": None})
    (directory / "index.json").write_text(json.dumps({**INDEX, "runs": entries}))


def test_an_archive_keeps_what_the_analysis_reads(tmp_path):
    (tmp_path / "study").mkdir()
    write_sweep(tmp_path / "study", lr_runs({("none", 1): 0.4, ("linear", 4): 0.40, ("sqrt", 4): 0.45}))
    _, _, lines, _ = studies.analyse("lr_scaling", str(tmp_path / "study"))
    assert studies.archive("lr_scaling", str(tmp_path / "study"), str(tmp_path / "kept")) == 9
    _, _, kept_lines, text = studies.analyse("lr_scaling", str(tmp_path / "kept"))
    assert kept_lines == lines and (tmp_path / "kept" / "lr_scaling.md").read_text().startswith("| workers")
    records = (tmp_path / "kept" / "run0" / "metrics.jsonl").read_text()
    assert '"kind": "step"' not in records and records.count('"kind": "eval"') == 5
    with pytest.raises(ValueError, match="own directory"):
        studies.archive("lr_scaling", str(tmp_path / "kept"), str(tmp_path / "kept"))


def test_an_archived_segmentation_study_is_redrawn_without_flood_filling_again(tmp_path):
    """Its runs were scored on the test volume of the directory they ran in; the archive has neither
    that volume nor checkpoints, and must not need them."""
    (tmp_path / "study").mkdir()
    write_sweep(tmp_path / "study", seg_runs())
    _, _, lines, _ = studies.analyse("segmentation", str(tmp_path / "study"))
    assert studies.archive("segmentation", str(tmp_path / "study"), str(tmp_path / "kept")) == 6
    _, _, kept_lines, _ = studies.analyse("segmentation", str(tmp_path / "kept"))
    assert kept_lines == lines and not (tmp_path / "kept" / "test_volume.h5").exists()


def network_runs(tmp_path, off=1.0, link="100mbit", mbit=100, params=49393, mean_s=0.0212, cv=0.0,
                 workers=(1, 2, 4, 8)):
    """Ring all-reduce and ps_async with one server on links of `mbit` at N = `workers`, 3 seeds each,
    whose measured FOVs/s are the simulator's prediction within +-1 % (ps_async's times `off`); and
    the calibrations they were predicted with."""
    grad = f"{4 * params / 1e6:.2f} MB"
    nets = {(None, grad): {}, (link, grad): {"alpha_s": 1e-5, "beta_s_per_byte": 8 / (mbit * 1e6),
                                             "server_apply_s_per_byte": 1e-9}}
    runs = []
    for strategy, servers in (("allreduce", None), ("ps_async", 1)):
        for n in workers:
            nodes = n + (servers or 0)
            fields = {"run.nodes": nodes, "run.link": link if nodes > 1 else "", "train.batch_size": 8,
                      "strategy_options.servers": servers}
            for seed, jitter in enumerate((1.0, 1.01, 0.99)):
                r = run(strategy, n, fields, [], seed, params=params, comm_share=0.5, staleness=None)
                r.run_dir = str(tmp_path / f"{strategy}{n}-{seed}")
                (tmp_path / r.run_dir).mkdir()
                measured = {"fovs_per_s": 1.0, "compute_mean_s": mean_s, "compute_cv": cv}
                (tmp_path / r.run_dir / studies.THROUGHPUT_FILE).write_text(json.dumps(measured))
                measured["fovs_per_s"] = (studies.predicted(r, nets[(studies.link_of(r), grad)]) * jitter
                                          * (off if servers else 1.0))
                (tmp_path / r.run_dir / studies.THROUGHPUT_FILE).write_text(json.dumps(measured))
                runs.append(r)
    return runs, {"calibrations": nets}


def test_the_network_study_says_where_each_exchange_is_faster_as_the_simulator_does(tmp_path):
    data, lines = studies.network(*network_runs(tmp_path))
    text = "\n".join(lines)
    # a worker of one server pushes then pulls the whole gradient (2 x 16 ms at 100 Mbit/s), and the
    # server's link carries N of each per round; a ring step moves 2(N-1)/N of it, both ways at once
    assert ("- 0.20 MB gradients, 100mbit: measured ring faster at N=2, 4, 8; no crossover in the N tested; "
            "simulated ring faster at N=2, 4, 8; no crossover in the N tested") in text
    assert "beyond 10%: none." in text
    ring4 = data["fovs"][("0.20 MB", "100mbit", "allreduce", 4)]
    assert len(ring4.known) == 3 and "| allreduce | 1 | " in text  # the lone worker: efficiency's baseline


def test_the_crossover_is_where_the_ring_overtakes_a_server_that_was_faster(tmp_path):
    # 1 Gbit/s, 2.55 MB and steps of 0.1 s +-50 %: a sync ring waits for the slowest of N, one server
    # does not, until its link (N x 20 ms each way a round) saturates
    _, lines = studies.network(*network_runs(tmp_path, link="1gbit", mbit=1000, params=638433, mean_s=0.1, cv=0.5,
                                             workers=(4, 8, 16, 32)))
    assert ("- 2.55 MB gradients, 1gbit: measured ring faster at N=16, 32; one server faster at N=4, 8; "
            "crossover at N=16; simulated ring faster at N=16, 32; one server faster at N=4, 8; crossover at N=16"
            ) in "\n".join(lines)


def test_a_cell_the_simulator_misses_is_named(tmp_path):
    _, lines = studies.network(*network_runs(tmp_path, off=0.8))
    assert "0.20 MB, 100mbit, ps_async, 1 server, N=8: simulator / measured 1.25" in lines[-1]
