import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from ffnbench.bench.plan.jobs import SCHEDULERS, render_job


def lines(script):
    return script.splitlines()


def test_cobalt_matches_the_papers_theta_launch():
    s = render_job("cfg.yaml", "cobalt", 1024, walltime="06:00:00", queue="default", account="proj")
    assert s.startswith("#!/bin/bash\n")
    for want in ("#COBALT -n 1024", "#COBALT -t 06:00:00", "#COBALT -q default", "#COBALT -A proj",
                 "export OMP_NUM_THREADS=128", "export KMP_BLOCKTIME=0"):
        assert want in lines(s)
    launch = [ln for ln in lines(s) if ln.startswith("aprun")]
    assert len(launch) == 1
    assert launch[0].startswith("aprun -n 1024 -N 1 -d 128 -j 2 -cc depth -e OMP_NUM_THREADS=128")
    assert launch[0].endswith('ffnbench train cfg.yaml --run-dir "$RUN_DIR" --set ranks=1024')
    assert 'RUN_DIR="results/ffnbench-${COBALT_JOBID}"' in lines(s)


def test_cobalt_splits_a_node_among_ranks_and_refuses_oversubscription():
    s = render_job("cfg.yaml", "cobalt", 4, ranks_per_node=4)
    assert "aprun -n 16 -N 4 -d 32 -j 2 -cc depth" in s
    with pytest.raises(ValueError, match="exceeds"):
        render_job("cfg.yaml", "cobalt", 4, ranks_per_node=2, threads_per_rank=128)


def test_slurm_header_and_srun():
    s = render_job("cfg.yaml", "slurm", 8, ranks_per_node=2, threads_per_rank=16,
                   account="acct", queue="batch", name="scal8")
    for want in ("#SBATCH --nodes=8", "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=16",
                 "#SBATCH --account=acct", "#SBATCH --partition=batch", "#SBATCH --job-name=scal8",
                 "export OMP_NUM_THREADS=16"):
        assert want in lines(s)
    assert ("srun --mpi=pmix -n 16 --ntasks-per-node=2 --cpus-per-task=16 --cpu-bind=cores ffnbench train cfg.yaml "
            '--run-dir "$RUN_DIR" --set ranks=16') in s
    assert 'RUN_DIR="results/ffnbench-${SLURM_JOB_ID}"' in lines(s)


def test_slurm_options_pmi_binding_path_and_overrides():
    s = render_job("/abs/cfg.yaml", "slurm", 1, ranks_per_node=2, mpi="pmi2", cpu_bind=False, bin_dir="/opt/v env/bin",
                   run_dir='/r/a"$b-{job_id}', overrides=["strategy=allreduce", "train.lr=1e-3"])
    assert "export PATH='/opt/v env/bin':\"$PATH\"" in lines(s)
    assert 'RUN_DIR="/r/a\\"\\$b-${SLURM_JOB_ID}"' in lines(s)  # quotes and $ of the path stay literal
    launch = next(ln for ln in lines(s) if ln.startswith("srun"))
    assert launch.startswith("srun --mpi=pmi2 -n 2 ") and "--cpu-bind" not in launch
    assert launch.endswith("--set strategy=allreduce --set train.lr=1e-3 --set ranks=2")


def test_slurm_without_threads_uses_the_nodes_cpus():
    s = render_job("cfg.yaml", "slurm", 2, ranks_per_node=2)
    assert "THREADS=$(( SLURM_CPUS_ON_NODE / 2 ))" in lines(s)
    assert "--cpus-per-task=$THREADS" in s
    assert "#SBATCH --cpus-per-task" not in s


def test_pbs_has_both_launchers():
    s = render_job("cfg.yaml", "pbs", 4, ranks_per_node=2, threads_per_rank=8)
    assert "#PBS -l select=4:mpiprocs=2:ncpus=16" in lines(s)
    assert "#PBS -l walltime=01:00:00" in lines(s)
    assert 'cd "$PBS_O_WORKDIR"' in lines(s)
    assert "mpiexec -n 8 --map-by ppr:2:node:PE=8 --use-hwthread-cpus -x PATH -x OMP_NUM_THREADS" in s
    assert '  mpiexec -n 8 -ppn 2 ffnbench train cfg.yaml --run-dir "$RUN_DIR" --set ranks=8' in lines(s)


def test_optional_lines_only_when_given():
    for sched in SCHEDULERS:
        s = render_job("cfg.yaml", sched, 2)
        assert "-A " not in s and "--account" not in s
        assert "-q " not in s and "--partition" not in s


def test_config_path_is_shell_quoted():
    s = render_job("my runs/cfg; rm -rf x.yaml", "slurm", 1)
    assert "ffnbench train 'my runs/cfg; rm -rf x.yaml'" in s


def test_job_sets_the_ranks_and_refuses_a_layout_the_strategy_cannot_take(tmp_path):
    from conftest import ffnbench
    r = ffnbench("job", "configs/smoke.yaml", "--scheduler", "slurm", "--nodes", "1", "--ranks-per-node", "2")
    assert r.returncode == 2 and r.stderr.strip() == ("ffnbench: error: config field strategy: strategy single runs "
                                                      "on 1 rank (got ranks=2)")
    r = ffnbench("job", "configs/smoke.yaml", "--set", "strategy=allreduce", "--scheduler", "slurm", "--nodes", "1",
                 "--ranks-per-node", "2", "--set", f"run.out={tmp_path}")
    assert r.returncode == 0, r.stderr
    launch = next(ln for ln in lines(r.stdout) if ln.startswith("srun"))
    assert f"ffnbench train {os.path.join(ROOT, 'configs', 'smoke.yaml')} " in launch  # absolute
    assert f'RUN_DIR="{tmp_path}/smoke-allreduce-r2-${{SLURM_JOB_ID}}"' in lines(r.stdout)
    assert lines(r.stdout)[lines(r.stdout).index("set -euo pipefail") + 1].startswith(
        f"export PATH={os.path.dirname(sys.executable)}:")


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("sched", SCHEDULERS)
def test_scripts_are_valid_bash(sched):
    s = render_job("cfg.yaml", sched, 2, ranks_per_node=1, account="a", queue="q")
    assert subprocess.run(["bash", "-n"], input=s, text=True).returncode == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(scheduler="lsf", nodes=2), "unknown scheduler"),
    (dict(scheduler="slurm", nodes=0), "nodes must be >= 1"),
    (dict(scheduler="pbs", nodes=1, ranks_per_node=0), "ranks_per_node"),
    (dict(scheduler="pbs", nodes=1, walltime="1h"), "walltime"),
    (dict(scheduler="slurm", nodes=1, account="a\n#SBATCH --x"), "account"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        render_job("cfg.yaml", **kwargs)
    assert "\n" not in str(err.value)
