"""Bad input gets one line and leaves nothing behind; injected faults (a stopped rank, a signal to the
launcher, an exception on one rank, a lost rank, a diverged loss) end the job promptly, with their own
line, a non-zero exit and a summary whose status says how it ended."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from conftest import ROOT, ffnbench
from ffnbench.bench.measure.faultbench import rank_pids

SMOKE = "configs/smoke.yaml"


def one_line_error(result, code=2):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("ffnbench: error: "), result.stderr
    return lines[0]


def strict_json(path):
    """Parse as strict JSON: NaN or Infinity anywhere fails."""
    def refuse(name):
        raise AssertionError(f"{path}: non-standard JSON constant {name}")
    with open(path) as f:
        text = f.read()
    if path.endswith(".jsonl"):
        return [json.loads(line, parse_constant=refuse) for line in text.splitlines() if line.strip()]
    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------ bad input: one line, nothing written

def write_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f[name] = data


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    where = tmp_path_factory.mktemp("h5")
    good = np.zeros((32, 40, 40), np.uint8)
    write_h5(where / "good.h5", image=good, labels=good.astype(np.int32))
    write_h5(where / "mismatch.h5", image=good, labels=np.zeros((32, 40, 39), np.int32))
    write_h5(where / "small.h5", image=good[:, :8], labels=good[:, :8].astype(np.int32))
    write_h5(where / "flat.h5", image=good[0], labels=good[0].astype(np.int32))
    (where / "text.h5").write_text("not hdf5\n")
    return where


BAD_HDF5 = {
    "wrong dataset": ("good.h5:img", "good.h5:labels", "has no dataset 'img'"),
    "shape mismatch": ("mismatch.h5:image", "mismatch.h5:labels", "differs from data.image"),
    "too small": ("small.h5:image", "small.h5:labels", "smaller than a FOV"),
    "2-D": ("flat.h5:image", "flat.h5:labels", "is 2-D"),
    "not HDF5": ("text.h5:image", "text.h5:labels", "not a readable HDF5 file"),
}


@pytest.mark.parametrize("case", sorted(BAD_HDF5))
def test_bad_hdf5_is_refused_before_any_rank_starts(case, volumes, tmp_path):
    image, labels, expected = BAD_HDF5[case]
    out = tmp_path / "results"
    r = ffnbench("run", SMOKE, "--set", "data.source=hdf5", "--set", f"data.image={volumes / image}",
                 "--set", f"data.labels={volumes / labels}", "--set", f"run.out={out}")
    assert expected in one_line_error(r)
    assert not out.exists()


BAD_INPUT = {
    "malformed --set": (["--set", "model.fov=[9,9"], "not valid YAML"),
    "path in the name": (["--set", "name=../../x/evil"], "config field name"),
    "absolute name": (["--set", "name=/abs/evil"], "config field name"),
    "option of the wrong type": (["--set", "strategy=ps_async", "--set", "ranks=3", "--set",
                                  "strategy_options.prefetch=yes_please"], "strategy_options.prefetch: must be true or false"),
    "more memory than the machine": (["--set", "strategy=mpi_allreduce", "--set", "ranks=64", "--set",
                                      "data.shape=[1000,1000,1000]"], "more than the"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_gets_one_line(case, tmp_path):
    args, expected = BAD_INPUT[case]
    out = tmp_path / "results"
    r = ffnbench("run", SMOKE, *args, "--set", f"run.out={out}")
    assert expected in one_line_error(r)
    assert not out.exists()


@pytest.mark.slow
def test_bad_files_get_one_line(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    assert "is empty" in one_line_error(ffnbench("run", str(empty)))
    assert "is a directory" in one_line_error(ffnbench("run", str(tmp_path)))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert "cannot create the run directory" in one_line_error(
        ffnbench("run", SMOKE, "--out", str(blocker / "run")))


def test_exponent_floats_are_numbers(tmp_path):
    from ffnbench.bench import config
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 1e-3, adam_epsilon: 1E-8}\n")
    cfg = config.load(str(path), ["train.clip=5e-1"])
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["adam_epsilon"] == 1e-8 and cfg["train"]["clip"] == 0.5
    with pytest.raises(config.ConfigError, match="train.lr: must be a number"):
        config.load(str(path), ["train.lr=fast"])


def test_memory_estimate_warns_when_oversubscribed_and_refuses_past_the_machine(monkeypatch, capsys):
    from ffnbench.bench import config
    from ffnbench.bench.run import launcher
    cfg = config.load(SMOKE, ["strategy=mpi_allreduce", "ranks=64"])
    monkeypatch.setattr(launcher, "available_memory", lambda: 100e9)
    launcher.check_memory(cfg)
    assert "64 ranks on" in capsys.readouterr().err and launcher.memory_estimate(cfg) > 64 * launcher.RANK_BASE_BYTES
    monkeypatch.setattr(launcher, "available_memory", lambda: 1e9)
    with pytest.raises(config.ConfigError, match="ranks: 64 ranks need about"):
        launcher.check_memory(cfg)


def test_run_directories_are_unique_and_claimed(tmp_path):
    from ffnbench.bench import config
    from ffnbench.bench.run import launcher
    cfg = config.load(SMOKE, [f"run.out={tmp_path}"])
    first, lock1 = launcher.make_run_dir(cfg)
    second, lock2 = launcher.make_run_dir(cfg)  # the same second, most likely: a suffix keeps them apart
    assert first != second and os.path.dirname(first) == os.path.dirname(second) == str(tmp_path)
    with pytest.raises(config.ConfigError, match=f"in use by ffnbench process {os.getpid()}"):
        launcher.make_run_dir(cfg, first)
    os.remove(lock1)
    again, lock = launcher.make_run_dir(cfg, first)  # released: usable again
    assert again == first and os.path.exists(lock)
    with open(lock, "w") as f:
        f.write("999999999")  # a process that is gone
    os.remove(lock2)
    assert launcher.make_run_dir(cfg, first)[0] == first


def test_a_stalled_step_is_flagged():
    from ffnbench.bench.run.summary import stall_stats
    from ffnbench.strategies.records import StepRecord
    steps = [StepRecord(rank=0, step=i, time=i, fovs=2, loss=0.5, model_version=i, compute_s=0.1, comm_s=0.0,
                        data_s=0.0, wait_s=0.0, step_s=150.0 if i == 7 else 0.1) for i in range(20)]
    stalls = stall_stats(steps)
    assert stalls["count"] == 1 and stalls["steps"][0]["step"] == 7 and stalls["max_step_s"] == 150.0


# ------------------------------------------------------------------ injected faults

def start(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "ffnbench.bench.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(run_dir, n, timeout=120):
    path = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and sum('"kind": "step"' in line for line in open(path)) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{run_dir}: fewer than {n} steps within {timeout}s")


def finished(proc, timeout):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("ffnbench: error")]


LONG = ["--set", "train.steps=100000", "--set", "eval.every=0", "--set", "run.progress=false"]


@pytest.mark.slow
def test_a_stopped_rank_aborts_within_the_timeout(tmp_path):
    out = tmp_path / "run"
    proc = start("run", SMOKE, "--set", "strategy=allreduce", "--set", "ranks=2", "--set", "run.timeout_s=8",
                 *LONG, "--out", str(out))
    wait_for_steps(out, 20)
    stopped = rank_pids(out)[1]
    os.kill(stopped, signal.SIGSTOP)
    began = time.time()
    try:
        code, _, err = finished(proc, 60)
    finally:
        try:
            os.kill(stopped, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert code == 1 and time.time() - began < 40, err
    assert "stalled" in error_lines(err)[0] and len(error_lines(err)) == 1, err
    summary = strict_json(str(out / "summary.json"))
    assert summary["status"] == "stalled" and "no training progress" in summary["error"]
    assert not rank_pids(out)


ELASTIC = ["--set", "strategy=allreduce", "--set", "strategy_options.elastic=true"]


@pytest.mark.slow
@pytest.mark.parametrize("sig,job", [(signal.SIGTERM, ["--set", "strategy=mpi_allreduce"]),
                                     (signal.SIGINT, ["--set", "strategy=mpi_allreduce"]),
                                     (signal.SIGTERM, ELASTIC)], ids=["TERM", "INT", "TERM-elastic"])
def test_a_signal_to_the_launcher_stops_the_whole_job(sig, job, tmp_path):
    out = tmp_path / "run"
    proc = start("run", SMOKE, *job, "--set", "ranks=2", *LONG, "--out", str(out))
    wait_for_steps(out, 10)
    assert len(rank_pids(out)) == 2
    proc.send_signal(sig)
    code, _, err = finished(proc, 60)
    assert code == 128 + sig and "interrupted" in err, err
    time.sleep(1)
    assert not rank_pids(out), "ranks outlived the launcher"
    summary = strict_json(str(out / "summary.json"))
    assert summary["status"] == "interrupted" and summary["steps"] >= 5  # 10 records of 2 ranks


FAILING = textwrap.dedent('''
    """mpi_allreduce whose rank 1 raises at its step 3."""
    from ffnbench.strategies.base import register
    from ffnbench.strategies.mpi_allreduce import MPIAllreduce


    @register
    class Failing(MPIAllreduce):
        """Fails on rank 1."""
        name = "failing_allreduce"

        calls = 0

        def update(self, batch):
            self.calls += 1
            if self.ctx.rank == 1 and self.calls == 3:
                raise RuntimeError("injected failure on rank 1")
            return super().update(batch)
''')


@pytest.mark.slow
def test_an_exception_on_one_rank_aborts_at_once_with_its_own_line(tmp_path):
    (tmp_path / "failing_strategy.py").write_text(FAILING)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), FFNBENCH_STRATEGIES="failing_strategy")
    out = tmp_path / "run"
    began = time.time()
    r = ffnbench("run", SMOKE, "--set", "strategy=failing_allreduce", "--set", "ranks=2", *LONG, "--out", str(out),
                 env=env, timeout=120)
    assert r.returncode == 1 and time.time() - began < 45
    line = one_line_error(r, 1)
    assert "rank 1" in line and "RuntimeError: injected failure on rank 1" in line
    assert "Traceback" not in r.stderr and os.path.exists(out / "rank1.traceback.txt")
    assert strict_json(str(out / "summary.json"))["status"] == "failed"


@pytest.mark.slow
def test_a_lost_rank_is_reported_as_lost(tmp_path):
    out = tmp_path / "run"
    proc = start("run", SMOKE, "--set", "strategy=mpi_allreduce", "--set", "ranks=2", *LONG, "--out", str(out))
    wait_for_steps(out, 10)
    os.kill(rank_pids(out)[1], signal.SIGKILL)
    code, _, err = finished(proc, 60)
    assert code == 1, err
    assert strict_json(str(out / "summary.json"))["status"] == "lost_ranks"
    assert not rank_pids(out)


@pytest.mark.slow
def test_a_diverged_loss_stops_the_run_and_json_stays_strict(tmp_path):
    out = tmp_path / "run"
    r = ffnbench("run", SMOKE, "--set", "train.lr=1e6", "--set", "run.checkpoint_every=1",
                 "--set", "run.progress=false", "--out", str(out), timeout=120)
    line = one_line_error(r, 1)
    assert "diverged" in line and "at step" in line
    summary = strict_json(str(out / "summary.json"))
    records = strict_json(str(out / "metrics.jsonl"))
    steps = [x for x in records if x["kind"] == "step"]
    assert summary["status"] == "diverged" and steps[-1]["loss"] is None
    assert len(steps) < 30  # stopped at the first non-finite loss, not at the end


# ------------------------------------------------------------------ resume

# mpirun takes its ranks down ~1 s after SIGTERM, and a smoke step takes ~5 ms on a 2026 Xeon: the run
# is long enough that an interruption after a few steps still falls well inside the lr warm-up
STEPS, WARMUP = 600, 500
RESUMABLE = ["--set", f"train.steps={STEPS}", "--set", f"train.warmup_steps={WARMUP}", "--set", "train.lr_scaling=linear",
             "--set", "run.checkpoint_every=7", "--set", "eval.every=50", "--set", "run.progress=false"]


def final_weights(run_dir):
    import tensorflow as tf
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")))
    names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("model/"))
    return {n: reader.get_tensor(n) for n in names}


def interrupted(layout, cut, steps):
    """Start a resumable run, SIGTERM it after `steps` step records; its newest checkpoint."""
    proc = start("run", SMOKE, *layout, *RESUMABLE, "--out", str(cut))
    wait_for_steps(cut, steps)
    proc.send_signal(signal.SIGTERM)
    code, _, err = finished(proc, 60)
    assert code == 128 + signal.SIGTERM, err
    assert strict_json(str(cut / "summary.json"))["status"] == "interrupted"
    from ffnbench.bench.run import checkpoints
    return checkpoints.latest(str(cut))


# ps_async with one worker is plain SGD through a server: deterministic, so bitwise too
@pytest.mark.slow
@pytest.mark.parametrize("strategy,ranks,workers", [("single", 1, [0]), ("allreduce", 2, [0, 1]),
                                                    ("ps_async", 2, [1])])
def test_a_resumed_run_ends_with_bitwise_the_weights_of_an_uninterrupted_one(strategy, ranks, workers, tmp_path):
    layout = ["--set", f"strategy={strategy}", "--set", f"ranks={ranks}"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = ffnbench("run", SMOKE, *layout, *RESUMABLE, "--out", str(whole), timeout=300)
    assert r.returncode == 0, r.stderr

    checkpoint = interrupted(layout, cut, 10 * len(workers))
    from ffnbench.bench.run import checkpoints
    step = checkpoints.read_meta(checkpoint)["step"]
    assert 7 <= step < WARMUP, "the interruption is meant to fall inside the lr warm-up"
    stream = checkpoints.split(checkpoints.load_rank(checkpoint, workers[0]), "stream")
    assert any(stream[f"slot{i}_moves"].size and stream[f"slot{i}_offset"].size for i in range(2)), \
        "examples part-way through their FOV moves"

    r = ffnbench("resume", str(cut), timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = final_weights(whole), final_weights(cut)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), "not bitwise equal"
    # the file keeps both attempts; read through the resume rule, each step is there once
    from ffnbench.bench.analyse.results import read_records
    records = read_records(str(cut))
    assert sorted((x.rank, x.step) for x in records.steps) == [(rank, s) for rank in workers for s in range(STEPS)]
    assert sorted((x.rank, x.step) for x in records.resumes) == [(rank, step) for rank in range(ranks)]
    assert len(strict_json(str(cut / "metrics.jsonl"))) > sum(map(len, records)), "the superseded records are kept"
    summary = strict_json(str(cut / "summary.json"))
    assert summary["status"] == "complete" and summary["fovs_total"] == strict_json(str(whole / "summary.json"))["fovs_total"]


@pytest.mark.slow
def test_async_ps_resumes_from_a_consistent_snapshot(tmp_path):
    """The server's shard is saved once it has applied every gradient the workers pushed before the
    checkpoint and none after: the resumed run applies each version exactly once."""
    cut = tmp_path / "cut"
    layout = ["--set", "strategy=ps_async", "--set", "ranks=3"]
    checkpoint = interrupted(layout, cut, 40)
    from ffnbench.bench.run import checkpoints
    step = checkpoints.read_meta(checkpoint)["step"]
    server = checkpoints.split(checkpoints.load_rank(checkpoint, 0), "strategy")
    assert int(server["version"]) == 2 * step and server["pushes"].tolist() == [step, step]
    assert server["optimizer.m"].shape == server["shard"].shape and int(server["optimizer.t"]) == 2 * step
    r = ffnbench("resume", str(cut), timeout=300)
    assert r.returncode == 0, r.stderr
    from ffnbench.bench.analyse.results import read_records
    records = read_records(str(cut))
    assert sorted(x.version for x in records.updates) == list(range(2 * STEPS))
    assert sorted((x.rank, x.step) for x in records.steps) == [(rank, s) for rank in (1, 2) for s in range(STEPS)]
    assert strict_json(str(cut / "summary.json"))["status"] == "complete"


@pytest.mark.slow
def test_the_async_parameter_server_outlives_a_lost_worker(tmp_path):
    out = tmp_path / "run"
    proc = start("run", SMOKE, "--set", "strategy=ps_async", "--set", "ranks=4", "--set", "train.steps=300",
                 "--set", "run.timeout_s=15", "--set", "eval.every=100", "--set", "run.checkpoint_every=100",
                 "--set", "run.progress=false", "--out", str(out))
    wait_for_steps(out, 30)
    os.kill(rank_pids(out)[2], signal.SIGKILL)
    code, stdout, err = finished(proc, 180)
    assert code == 0, err
    summary = strict_json(str(out / "summary.json"))
    assert summary["status"] == "complete"
    lost = summary["lost_workers"]
    assert [w["worker"] for w in lost] == [2] and 0 < lost[0]["steps_done"] < 300
    assert lost[0]["fovs_not_trained"] == (300 - lost[0]["steps_done"]) * 2
    steps = [x for x in strict_json(str(out / "metrics.jsonl")) if x["kind"] == "step"]
    assert {r: sum(s["rank"] == r for s in steps) for r in (1, 3)} == {1: 300, 3: 300}
    assert "lost worker: rank 2" in stdout
    assert not rank_pids(out)
    # rank 0 is a server: the first worker writes the periodic checkpoints (its last pull)
    checkpoints = os.listdir(out / "checkpoints")
    assert "ckpt-200.index" in checkpoints and "ckpt-300.index" in checkpoints  # the last 2 are kept


@pytest.mark.slow
def test_elastic_allreduce_shrinks_the_ring_when_a_worker_is_lost(tmp_path):
    out = tmp_path / "run"
    proc = start("run", SMOKE, *ELASTIC, "--set", "strategy_options.commit_every=7", "--set", "ranks=3",
                 "--set", "train.steps=150", "--set", "run.timeout_s=20", "--set", "run.progress=false",
                 "--out", str(out))
    wait_for_steps(out, 60)
    os.kill(rank_pids(out)[1], signal.SIGKILL)
    code, stdout, err = finished(proc, 180)
    assert code == 0, err
    summary = strict_json(str(out / "summary.json"))
    assert summary["status"] == "complete" and [w["worker"] for w in summary["lost_workers"]] == [1]
    assert "lost worker: rank 1" in stdout
    records = strict_json(str(out / "metrics.jsonl"))
    # each survivor goes back to the last commit, and rank 0 takes the lost worker's steps since it back too
    assert sorted(x["rank"] for x in records if x["kind"] == "resume") == [0, 1, 2]
    [resume] = {x["step"] for x in records if x["kind"] == "resume"}
    [lost] = [x for x in records if x["kind"] == "lost"]
    assert resume % 7 == 0 and 0 < resume < 150 and lost["pushes"] == resume
    # the steps after the last commit were redone by the two left: each step once per worker that made it
    from ffnbench.bench.analyse.results import read_records
    kept = sorted((r.rank, r.step) for r in read_records(str(out)).steps)
    assert kept == sorted([(r, s) for r in (0, 2) for s in range(150)] + [(1, s) for s in range(resume)])
    assert summary["fovs_total"] == 2 * (3 * resume + 2 * (150 - resume))
    assert summary["lost_workers"][0]["fovs_not_trained"] == (150 - resume) * 2
    assert not rank_pids(out)


@pytest.mark.slow
def test_a_diverged_elastic_worker_ends_the_job_rather_than_the_ring_going_on(tmp_path):
    out = tmp_path / "run"
    r = ffnbench("run", SMOKE, *ELASTIC, "--set", "ranks=2", "--set", "train.lr=1e6", "--set", "run.progress=false",
                 "--out", str(out), timeout=120)
    assert r.returncode == 1 and "diverged" in error_lines(r.stderr)[-1], r.stderr
    assert strict_json(str(out / "summary.json"))["status"] == "diverged"
    assert not rank_pids(out)


def test_elastic_allreduce_refuses_more_workers_than_this_machine_has_names(tmp_path):
    code, _, err = finished(start("run", SMOKE, *ELASTIC, "--set", "ranks=64", "--out", str(tmp_path / "r")), 60)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "one per name it answers to" in err, err
    assert not (tmp_path / "r").exists()


def test_faultbench_charges_the_survivors_longest_wait_after_the_victims_last_step():
    from ffnbench.bench.measure.faultbench import survivors_stall
    from ffnbench.strategies.records import StepRecord

    def step(rank, i, t):
        return StepRecord(rank=rank, step=i, time=t, fovs=2, loss=0.5, model_version=i + 1, compute_s=0.5,
                          comm_s=0.0, data_s=0.0, wait_s=0.0, step_s=0.5)
    # rank 2 dies after its step at t=9.6; rank 0 then waits 5 s (detection, re-forming, steps redone)
    survivor = [0.5 * i for i in range(20)] + [14.5 + 0.5 * i for i in range(10)]
    steps = [step(0, i, t) for i, t in enumerate(survivor)] + [step(2, i, 0.4 * i) for i in range(25)]
    assert survivors_stall(steps, victim=2, window_s=5.0) == (5.0, 0.5)
    # a wait that began more than window_s after the victim's last step is not charged to it
    late = [step(0, i, t) for i, t in enumerate(survivor)] + [step(2, i, 0.1 * i) for i in range(25)]
    assert survivors_stall(late, victim=2, window_s=5.0)[0] == 0.5


def test_an_elastic_run_is_not_resumed_from_files(tmp_path):
    import yaml
    from ffnbench.bench import config
    cfg = config.load(SMOKE, ["strategy=allreduce", "strategy_options.elastic=true", "ranks=2"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = finished(start("resume", str(tmp_path)), 60)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "recovers in memory" in err, err


# ------------------------------------------------------------------ lost workers and pauses

# the bug's own settings: the smoke config's evaluation every 10 steps, a 20 s bound, and enough pauses
# after the loss (about 390) that the old pause's sends to the dead worker stopped completing
FREQUENT_PAUSES = ["--set", "train.steps=4000", "--set", "run.timeout_s=20", "--set", "eval.every=10",
                   "--set", "run.progress=false"]


def steps_by_rank(run_dir):
    counts = {}
    for record in strict_json(str(run_dir / "metrics.jsonl")):
        if record["kind"] == "step":
            counts[record["rank"]] = counts.get(record["rank"], 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("servers,victim", [(1, 3), (1, 1)], ids=["follower in a pause", "leader in its evaluation"])
def test_a_lost_async_worker_ends_no_pause_and_the_run_completes(tmp_path, servers, victim):
    """The bug of issue 26: with evaluations every 10 steps, a killed ps_async worker made the pause wait
    on it until the server declared the live workers lost too. Killed inside a pause (right after its
    10th-step record: a follower waiting to go on, or the leader evaluating); a loss between pauses is
    test_the_async_parameter_server_outlives_a_lost_worker's."""
    out = tmp_path / "run"
    proc = start("run", SMOKE, "--set", "strategy=ps_async", "--set", f"ranks={servers + 3}",
                 "--set", f"strategy_options.servers={servers}", *FREQUENT_PAUSES, "--out", str(out))
    wait_for_steps(out, 200)
    deadline = time.time() + 60  # its step count reaches a multiple of eval.every: it is in the pause that follows
    while not (steps_by_rank(out).get(victim, 0) % 10 == 0 and steps_by_rank(out).get(victim, 0) > 20):
        assert time.time() < deadline, "no pause seen"
        time.sleep(0.002)
    os.kill(rank_pids(out)[victim], signal.SIGKILL)
    killed_after = steps_by_rank(out).get(victim, 0)
    code, stdout, err = finished(proc, 240)
    assert code == 0, err
    summary = strict_json(str(out / "summary.json"))
    assert summary["status"] == "complete" and [w["worker"] for w in summary["lost_workers"]] == [victim]
    assert f"lost worker: rank {victim}" in stdout
    done = steps_by_rank(out)
    workers = range(servers, servers + 3)
    assert all(done[w] == 4000 for w in workers if w != victim) and done[victim] <= killed_after + 1
    evals = [r for r in strict_json(str(out / "metrics.jsonl")) if r["kind"] == "eval"]
    later = [e for e in evals if e["rank"] in workers and e["step"] > 2 * 4000 * 0.9]  # evaluations went on
    assert later and all(e["rank"] != victim for e in later)
    assert not rank_pids(out)


@pytest.mark.slow
@pytest.mark.parametrize("in_pause", [False, True], ids=["mid-run", "in a pause"])
def test_a_lost_elastic_worker_ends_no_pause_and_the_ring_goes_on(tmp_path, in_pause):
    """The same with elastic all-reduce: the pause is a Horovod collective, which fails on the lost
    worker; the ring goes back to its last commit without it and pauses go on."""
    out = tmp_path / "run"
    proc = start("run", SMOKE, *ELASTIC, "--set", "ranks=3", "--set", "strategy_options.commit_every=7",
                 "--set", "train.steps=300", "--set", "run.timeout_s=20", "--set", "eval.every=10",
                 "--set", "run.progress=false", "--out", str(out))
    wait_for_steps(out, 60)
    if in_pause:
        deadline = time.time() + 60
        while not (steps_by_rank(out).get(2, 0) % 10 == 0 and steps_by_rank(out).get(2, 0) > 20):
            assert time.time() < deadline, "no pause seen"
            time.sleep(0.002)
    os.kill(rank_pids(out)[2], signal.SIGKILL)
    killed_after = steps_by_rank(out)[2]
    code, stdout, err = finished(proc, 240)
    assert code == 0, err
    summary = strict_json(str(out / "summary.json"))
    assert summary["status"] == "complete" and [w["worker"] for w in summary["lost_workers"]] == [2]
    evals = [r for r in strict_json(str(out / "metrics.jsonl")) if r["kind"] == "eval"]
    assert [e for e in evals if killed_after + 10 < e["step"] < 300], "no periodic evaluation after the loss"
    assert not rank_pids(out)


def test_a_scheduler_signal_swallowed_by_a_c_extension_still_marks_the_run_interrupted(monkeypatch, tmp_path):
    """SIGTERM can land while TensorFlow builds the error of a collective a stopped peer broke; pybind11
    then replaces the handler's exception with a RuntimeError. The rank must still say interrupted."""
    import signal as signals

    from ffnbench.bench import cli
    from ffnbench.bench.run import control, rank

    def train(cfg, run_dir):
        try:
            cli._interrupt(signals.SIGTERM, None)  # the handler's exception, raised inside the C call
        except KeyboardInterrupt:
            raise RuntimeError("pybind11::error_already_set: MISMATCH of original and normalized active "
                               "exception types: ORIGINAL UnknownError REPLACED BY Interrupted: SIGTERM")

    class Rank0:
        rank = 0

        def fail(self, message, status="failed"):
            raise AssertionError(f"blamed the error instead: {message}")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setattr(rank, "train", train)
    monkeypatch.setattr(control, "for_launch", lambda launch, timeout_s: Rank0())
    monkeypatch.setattr(cli, "_SIGNALLED", [])
    previous = signals.getsignal(signals.SIGTERM)
    try:
        assert cli.main(["train", "configs/smoke.yaml", "--run-dir", str(tmp_path)]) == 128 + signals.SIGTERM
    finally:
        signals.signal(signals.SIGTERM, previous)
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
