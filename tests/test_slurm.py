"""The cluster path under a real Slurm: job scripts from `ffnbench job` and `ffnbench sweep
--scheduler slurm`, submitted to a private cluster (tests/slurm_cluster.py) of one node, and of two
emulated nodes (network namespaces, one slurmd each). Skipped, with the reason, where the daemons or
the namespaces cannot start."""
import json
import os
import subprocess
import time
from datetime import datetime

import pytest
import yaml

from conftest import ffnbench
import slurm_cluster

# a generous bound on waits: the jobs share 2 cores with each other (and whatever else runs)
QUICK = ["--set", "train.steps=4", "--set", "eval.every=2", "--set", "run.progress=false", "--set", "run.timeout_s=180"]
ON_THE_NODE = ["--scheduler", "slurm", "--ranks-per-node", "2", "--threads", "1", "--no-cpu-bind"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("slurm"))
    try:
        env, stop = slurm_cluster.start(root)
    except slurm_cluster.Unavailable as why:
        pytest.skip(f"no Slurm cluster: {why}")
    yield env
    stop()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("slurm2"))
    try:
        env, stop = slurm_cluster.start(root, nodes=2)
    except slurm_cluster.Unavailable as why:
        pytest.skip(f"no 2-node Slurm cluster: {why}")
    yield env
    stop()


def submit(env, script, cwd):
    """sbatch the script as a user would: from `cwd`, with nothing added."""
    out = subprocess.run(["sbatch", "--parsable", script], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def wait_gone(env, jobs, timeout_s):
    """Wait (bounded) until Slurm no longer lists the jobs."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(jobs)], capture_output=True, text=True,
                             env=env, timeout=60)
        if not set(out.stdout.split()) & set(jobs):
            return
        time.sleep(2)
    subprocess.run(["scancel", *jobs], env=env, timeout=60)
    pytest.fail(f"Slurm jobs {jobs} still queued or running after {timeout_s} s")


def job_script(tmp_path, strategy, *options, nodes=1):
    path = tmp_path / f"{strategy}.sh"
    r = ffnbench("job", "configs/smoke.yaml", "--set", f"strategy={strategy}", "--set", f"run.out={tmp_path}",
                 *QUICK, *options, "--scheduler", "slurm", "--nodes", str(nodes), "--ranks-per-node", str(2 // nodes),
                 "--threads", "1", "--out", str(path))
    assert r.returncode == 0, r.stderr
    return str(path)


@pytest.mark.slow
def test_a_cancelled_job_is_marked_interrupted(cluster, tmp_path):
    script = job_script(tmp_path, "allreduce", "--set", "train.steps=100000", "--set", "eval.every=0", "--no-cpu-bind")
    job = submit(cluster, script, tmp_path)
    metrics = tmp_path / f"smoke-allreduce-r2-{job}" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and '"kind": "step"' in metrics.read_text()):
        assert time.time() < deadline, "the job never started training"
        time.sleep(2)
    subprocess.run(["scancel", job], env=cluster, check=True, timeout=60)
    wait_gone(cluster, [job], 120)
    summary = json.loads((metrics.parent / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]


@pytest.mark.slow
def test_a_sweep_runs_as_slurm_jobs_with_the_local_report_columns(cluster, tmp_path):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(yaml.safe_dump({"name": "tiny", "base": os.path.abspath("configs/smoke.yaml"),
                                     "set": {"train.steps": 4, "eval.every": 2, "run.timeout_s": 180},
                                     "runs": [{"strategy": "single", "ranks": 1}, {"strategy": "allreduce", "ranks": 2}]}))
    r = ffnbench("sweep", str(sweep), "--out", str(tmp_path / "slurm"), *ON_THE_NODE, "--one-at-a-time",
                 env=cluster, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    index = json.loads((tmp_path / "slurm" / "index.json").read_text())
    assert [e["status"] for e in index["runs"]] == ["complete", "complete"] and all(e["job"] for e in index["runs"])
    first, second = (e["run_dir"] for e in index["runs"])  # one at a time: the second began after the first ended
    began = json.loads(open(os.path.join(second, "manifest.json")).read())["start_time"]
    ended = os.path.getmtime(os.path.join(first, "summary.json"))
    assert datetime.strptime(began, "%Y-%m-%dT%H:%M:%S%z").timestamp() >= int(ended)
    again = ffnbench("sweep", str(sweep), "--out", str(tmp_path / "slurm"), *ON_THE_NODE, env=cluster)
    assert again.returncode == 0 and "0 Slurm jobs" in again.stdout  # resumed: nothing resubmitted
    local = ffnbench("sweep", str(sweep), "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr

    def columns(directory):
        assert ffnbench("report", str(directory)).returncode == 0
        return next(line for line in (directory / "report.md").read_text().splitlines() if line.startswith("| strategy"))
    assert columns(tmp_path / "slurm") == columns(tmp_path / "local")


@pytest.mark.slow
def test_generated_jobs_train_on_two_emulated_nodes(two_nodes, tmp_path):
    elsewhere = tmp_path / "submitted_from"
    elsewhere.mkdir()
    jobs = {strategy: submit(two_nodes, job_script(tmp_path, strategy, "--no-cpu-bind", nodes=2), elsewhere)
            for strategy in ("allreduce", "ps_async")}  # ps_async: the server alone on node 0, a worker on node 1
    wait_gone(two_nodes, list(jobs.values()), 600)
    for strategy, job in jobs.items():
        run_dir = tmp_path / f"smoke-{strategy}-r2-{job}"  # a directory of its own per job
        log = (tmp_path / f"ffnbench-smoke-{job}.out").read_text()  # the job's log beside its runs
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["strategy"] == strategy and summary["ranks"] == 2, log
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["ranks"] == 2  # resume/evaluate/export find it
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["nodes"] == 2, manifest  # two host names: Open MPI had to use TCP between them
    assert not list(elsewhere.iterdir())  # nothing written where it was submitted
    roles = json.loads((tmp_path / f"smoke-ps_async-r2-{jobs['ps_async']}" / "manifest.json").read_text())["roles"]
    assert roles == ["server", "worker"]
