"""Starting a job's ranks (mpirun, or horovodrun for an elastic job) with one set of Open MPI
settings, and waiting for them with a bound. Only launching processes use this: a strategy never
starts ranks, and the launching process never becomes an MPI rank."""
import os
import subprocess
import sys

#: Open MPI settings every job gets unless a caller passes others: ranks that wait yield the CPU
#: (ranks are oversubscribed here), and shared-memory transfers go through vader's copy-in/copy-out,
#: since CMA (process_vm_readv) is refused inside containers.
MCA_DEFAULTS = {"mpi_yield_when_idle": "1", "btl_vader_single_copy_mechanism": "none"}


#: how a job that did not complete ended; fail() prefixes its line with one, the launcher reads it back
FAILURES = ("stalled", "diverged", "lost_ranks", "interrupted", "failed")


def mpirun_command(ranks, argv, cores=None):
    """mpirun for `ranks` ranks on this machine: no binding, oversubscribed when ranks > cores, and
    allowed as root (containers and CI run as root)."""
    cores = cores or os.cpu_count() or 1
    cmd = ["mpirun", "-np", str(ranks), "--bind-to", "none"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    if ranks > cores:
        cmd.append("--oversubscribe")
    return cmd + list(argv)


def rank_environment(mca=None):
    """This process's environment plus MCA settings: `mca` if given, else MCA_DEFAULTS where the
    environment does not already set them."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for key, value in (mca or {}).items():
        env[f"OMPI_MCA_{key}"] = str(value)
    if mca is None:
        for key, value in MCA_DEFAULTS.items():
            env.setdefault(f"OMPI_MCA_{key}", value)
    return env


def local_host_names():
    """The names this machine answers to: localhost, 127.0.0.1, its hostname and its IPv4 addresses.

    Elastic Horovod drops the *host* of a failed worker with all its slots, so on one machine each
    worker gets a name of its own (horovodrun runs a host whose address is local without ssh)."""
    import socket

    import psutil  # a Horovod dependency
    names = ["localhost", "127.0.0.1", socket.gethostname()]
    names += sorted(a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                    if a.family == socket.AF_INET)
    return list(dict.fromkeys(names))


def launch_elastic(ranks, argv, discovery_script, timeout_s, env_extra=None, **popen_kwargs):
    """Start `argv` as an elastic Horovod job of `ranks` workers over Gloo (horovodrun): it goes on
    with as few as one worker. Gloo's waits and the driver's re-forming of the ring are each bounded
    by half of timeout_s, so a lost worker is over and done before the ranks' own watchdogs (at
    timeout_s) would call the job stalled.

    Args:
        discovery_script: horovodrun's host discovery (an executable that prints host:slots lines).
    Returns:
        The Popen of horovodrun.
    """
    t, half = str(int(max(1, timeout_s))), str(int(max(1, timeout_s / 2)))
    horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    cmd = [horovodrun if os.path.exists(horovodrun) else "horovodrun", "-np", str(ranks), "--min-np", "1",
           "--max-np", str(ranks), "--host-discovery-script", discovery_script, "--slots-per-host", "1",
           "--elastic-timeout", half, "--gloo-timeout-seconds", half, "--start-timeout", t] + list(argv)
    return subprocess.Popen(cmd, env={**rank_environment(), **(env_extra or {})}, **popen_kwargs)


def launch_ranks(ranks, argv, mca=None, env_extra=None, **popen_kwargs):
    """Start `argv` as `ranks` MPI ranks (a lone rank runs directly, as an MPI singleton).

    Args:
        ranks: number of ranks.
        argv: the command each rank runs.
        mca: Open MPI MCA settings instead of MCA_DEFAULTS (a yardstick that needs others).
        env_extra: more environment variables for the ranks.
        popen_kwargs: passed to subprocess.Popen.
    Returns:
        The Popen of mpirun (or of the lone rank).
    """
    cmd = mpirun_command(ranks, argv) if ranks > 1 else list(argv)
    return subprocess.Popen(cmd, env={**rank_environment(mca), **(env_extra or {})}, **popen_kwargs)


def launch_on_cluster(cluster, slots, argv, mca=None, env_extra=None, **popen_kwargs):
    """Start `argv` as MPI ranks on an emulated cluster (netcluster.Cluster, up), `slots[i]` of them on
    node i: TCP between nodes, shared memory within one. Returns the Popen of mpirun."""
    from ffnbench.bench.run import netcluster
    prefix, hosts, cluster_mca = netcluster.mpirun_settings(cluster, slots)
    cmd = prefix + mpirun_command(sum(slots), ["--host", hosts] + list(argv), cores=sum(slots))
    mca = {**MCA_DEFAULTS, **(mca or {}), **cluster_mca}
    return subprocess.Popen(cmd, env={**rank_environment(mca), **(env_extra or {})}, **popen_kwargs)


def finish(proc, timeout_s, what):
    """Wait for launched ranks with a bound; past it, kill them (mpirun takes its ranks down).

    Returns:
        (exit status, stdout, stderr) as communicate() gives them.
    Raises:
        RuntimeError: the bound passed.
    """
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"{what}: not finished within {timeout_s:g}s, stopped")
    return proc.returncode, out, err
