"""Batch-job scripts that launch `ffnbench train CONFIG` with one MPI rank per slot.

One renderer per scheduler, because the launch line is where placement and
thread affinity are decided and each site spells it differently:
- slurm:  sbatch header + srun.
- pbs:    PBS Pro header (`select=...:mpiprocs=`) + mpiexec. The launcher is
          detected at run time: Open MPI gets `--map-by ppr:R:node:PE=T
          --use-hwthread-cpus -x VAR` (T counts logical CPUs, as nproc does;
          it does not forward the environment by itself); MPICH/Hydra gets
          `-n N -ppn R` (Hydra forwards the environment).
- cobalt: ALCF Theta (Cray XC40, KNL) + aprun, where Dong et al. 2019 ran FFN
          (one rank per 64-core KNL node): `-N 1 -d 128 -j 2 -cc depth`, i.e.
          128 threads on 64 cores x 2 hyper-threads per rank, pinned by depth.
OMP/KMP variables follow Intel's advice for TensorFlow on Xeon Phi: one OpenMP
thread per slot, threads released at once after a parallel region
(KMP_BLOCKTIME=0) and packed onto neighbouring cores (KMP_AFFINITY).

Every script runs as written: the `ffnbench` found when it was generated is put on PATH, the
config path is absolute, the rank count is the job's (`--set ranks=N`), and each job trains into
its own run directory, named after the scheduler's job id unless one is given.
"""
import os
import re
import shlex
from typing import Optional

SCHEDULERS = ("slurm", "pbs", "cobalt")
#: the variable each scheduler sets to the job's id, which names the job's run directory
JOB_ID_VARS = {"slurm": "SLURM_JOB_ID", "pbs": "PBS_JOBID", "cobalt": "COBALT_JOBID"}
#: srun's --mpi plugin: Debian's Open MPI under Slurm initialises through PMIx
SRUN_MPI = ("pmix", "pmi2", "none")
THETA_CPUS_PER_NODE = 128  # 64 KNL cores x 2 hyper-threads with `aprun -j 2`
KMP_AFFINITY = "granularity=fine,compact,1,0"


def _env_lines(threads: str) -> list:
    return [f"export OMP_NUM_THREADS={threads}",
            "export KMP_BLOCKTIME=0",
            f"export KMP_AFFINITY={KMP_AFFINITY}"]


def _slurm(cmd, nodes, rpn, threads, walltime, account, queue, name, output, mpi="pmix", cpu_bind=True):
    head = [f"#SBATCH --job-name={name}", f"#SBATCH --nodes={nodes}",
            f"#SBATCH --ntasks-per-node={rpn}", f"#SBATCH --time={walltime}",
            f"#SBATCH --output={output}"]
    if threads is not None:
        head.append(f"#SBATCH --cpus-per-task={threads}")
    else:  # whole nodes, so SLURM_CPUS_ON_NODE is the node's CPUs, not one per rank
        head.append("#SBATCH --exclusive")
    if account:
        head.append(f"#SBATCH --account={account}")
    if queue:
        head.append(f"#SBATCH --partition={queue}")
    body = []
    if threads is None:  # split whatever the node has among its ranks
        body.append(f"THREADS=$(( SLURM_CPUS_ON_NODE / {rpn} ))")
        threads = "$THREADS"
    body += _env_lines(threads)
    bind = " --cpu-bind=cores" if cpu_bind else ""
    body.append(f"srun --mpi={mpi} -n {nodes * rpn} --ntasks-per-node={rpn} --cpus-per-task={threads}{bind} {cmd}")
    return head, body


def _pbs(cmd, nodes, rpn, threads, walltime, account, queue, name, output, **_):
    ncpus = "" if threads is None else f":ncpus={rpn * threads}"
    head = [f"#PBS -N {name}", f"#PBS -l select={nodes}:mpiprocs={rpn}{ncpus}",
            f"#PBS -l walltime={walltime}", "#PBS -j oe"]
    if account:
        head.append(f"#PBS -A {account}")
    if queue:
        head.append(f"#PBS -q {queue}")
    body = ['cd "$PBS_O_WORKDIR"']
    if threads is None:  # the script runs on the first node of the job
        body.append(f"THREADS=$(( $(nproc) / {rpn} ))")
        threads = "$THREADS"
    body += _env_lines(threads)
    n = nodes * rpn
    body += ['if mpiexec --version 2>&1 | grep -qiE "open ?mpi|openrte"; then',
             f"  mpiexec -n {n} --map-by ppr:{rpn}:node:PE={threads} --use-hwthread-cpus "
             f"-x PATH -x OMP_NUM_THREADS -x KMP_BLOCKTIME -x KMP_AFFINITY {cmd}",
             "else",
             f"  mpiexec -n {n} -ppn {rpn} {cmd}",
             "fi"]
    return head, body


def _cobalt(cmd, nodes, rpn, threads, walltime, account, queue, name, output, **_):
    threads = THETA_CPUS_PER_NODE // rpn if threads is None else threads
    if rpn * threads > THETA_CPUS_PER_NODE:
        raise ValueError(f"ranks_per_node x threads_per_rank = {rpn * threads} exceeds "
                         f"{THETA_CPUS_PER_NODE} CPUs of a Theta node under aprun -j 2")
    head = [f"#COBALT -n {nodes}", f"#COBALT -t {walltime}", f"#COBALT --jobname {name}"]
    if queue:
        head.append(f"#COBALT -q {queue}")
    if account:
        head.append(f"#COBALT -A {account}")
    body = _env_lines(threads)
    env = " ".join(f"-e {v}" for v in (f"OMP_NUM_THREADS={threads}", "KMP_BLOCKTIME=0",
                                       f"KMP_AFFINITY={KMP_AFFINITY}"))
    body.append(f"aprun -n {nodes * rpn} -N {rpn} -d {threads} -j 2 -cc depth {env} {cmd}")
    return head, body


_RENDERERS = {"slurm": _slurm, "pbs": _pbs, "cobalt": _cobalt}


def render_job(config_path: str, scheduler: str, nodes: int, ranks_per_node: int = 1,
               threads_per_rank: Optional[int] = None, walltime: str = "01:00:00",
               account: Optional[str] = None, queue: Optional[str] = None,
               name: str = "ffnbench", run_dir: str = "results/ffnbench-{job_id}", overrides=(),
               bin_dir: Optional[str] = None, mpi: str = "pmix", cpu_bind: bool = True,
               output: Optional[str] = None) -> str:
    """A submit-ready bash script running `ffnbench train CONFIG` on nodes x ranks_per_node ranks.

    threads_per_rank=None means: all CPUs of a node shared among its ranks
    (128 on Theta; read from the node at run time for slurm and pbs).
    run_dir: the job's run directory; `{job_id}` in it becomes the scheduler's job id.
    overrides: KEY=VALUE for `ffnbench train --set` (`ranks` is always the job's).
    bin_dir: put first on PATH (the directory of the `ffnbench` to run).
    mpi, cpu_bind: slurm only: srun's --mpi plugin (SRUN_MPI) and --cpu-bind=cores.
    output: slurm only: the job's log (%j: the job id; default NAME-%j.out where it is submitted).
    """
    if scheduler not in _RENDERERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose from {', '.join(SCHEDULERS)}")
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    if ranks_per_node < 1 or (threads_per_rank is not None and threads_per_rank < 1):
        raise ValueError("ranks_per_node and threads_per_rank must be >= 1")
    if not re.fullmatch(r"\d+:\d{2}:\d{2}", walltime):
        raise ValueError(f"walltime must be HH:MM:SS, got {walltime!r}")
    if not re.fullmatch(r"[A-Za-z][\w.-]*", name):
        raise ValueError(f"job name must be letters, digits, '_', '.', '-': {name!r}")
    for label, value in (("account", account), ("queue", queue)):
        if value is not None and not re.fullmatch(r"[\w.@-]+", value):
            raise ValueError(f"{label} must be one word of letters, digits, '_.@-': {value!r}")
    if mpi not in SRUN_MPI:
        raise ValueError(f"mpi must be one of {', '.join(SRUN_MPI)}, got {mpi!r}")
    sets = [*overrides, f"ranks={nodes * ranks_per_node}"]
    cmd = " ".join(["ffnbench train", shlex.quote(str(config_path)), '--run-dir "$RUN_DIR"',
                    *(f"--set {shlex.quote(o)}" for o in sets)])
    head, body = _RENDERERS[scheduler](cmd, nodes, ranks_per_node, threads_per_rank, walltime, account, queue,
                                       name, output or f"{name}-%j.out", mpi=mpi, cpu_bind=cpu_bind)
    literal = [_double_quoted(part) for part in run_dir.split("{job_id}")]
    setup = [f'RUN_DIR="{("${" + JOB_ID_VARS[scheduler] + "}").join(literal)}"']
    if bin_dir:
        setup.insert(0, f'export PATH={shlex.quote(bin_dir)}:"$PATH"')
    return "\n".join(["#!/bin/bash", *head, "set -euo pipefail", *setup, *body]) + "\n"


def _double_quoted(text: str) -> str:
    """`text` safe inside a double-quoted bash string (no expansion of $, ` or \\)."""
    return re.sub(r'([\\"$`])', r"\\\1", text)


def job_script(config_path, scheduler, nodes, ranks_per_node=1, threads_per_rank=None, overrides=(), **options):
    """render_job for a config as it will run: checked with its overrides and the job's rank count
    (one ConfigError/LayoutError line otherwise), its path absolute, its run directory and log under
    run.out named after the job, and this installation's `ffnbench` on PATH."""
    from ffnbench.bench import config
    from ffnbench.bench.run.context import layout_of
    from ffnbench.bench.plan.sweep_jobs import ffnbench_dir
    ranks = nodes * ranks_per_node
    cfg = config.load(config_path, [*overrides, f"ranks={ranks}"])
    layout_of(cfg)  # e.g. strategy single cannot run in 2 ranks
    out = os.path.abspath(cfg["run"]["out"])
    name = "ffnbench-" + re.sub(r"[^\w.-]", "_", cfg["name"])
    return render_job(os.path.abspath(config_path), scheduler, nodes, ranks_per_node, threads_per_rank,
                      run_dir=os.path.join(out, f"{cfg['name']}-{cfg['strategy']}-r{ranks}-{{job_id}}"),
                      output=os.path.join(out, f"{name}-%j.out"), name=name, overrides=overrides,
                      bin_dir=ffnbench_dir(), **options)


def scheduler_job_id():
    """The id of the batch job this process runs in, or None outside one."""
    return next((os.environ[v] for v in JOB_ID_VARS.values() if os.environ.get(v)), None)


def scheduler_run_dir(cfg):
    """`ffnbench train` without --run-dir: run.out/NAME-STRATEGY-rRANKS-JOBID, from the scheduler's job
    id (the same on every rank); ValueError where no scheduler set one."""
    job_id = scheduler_job_id()
    if job_id:
        return os.path.join(cfg["run"]["out"], f"{cfg['name']}-{cfg['strategy']}-r{cfg['ranks']}-{job_id}")
    raise ValueError("train: give --run-dir (no scheduler job id in the environment to name one: "
                     f"{', '.join(JOB_ID_VARS.values())})")
