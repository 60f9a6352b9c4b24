"""A private Slurm cluster for the tests: a munge key, munged, slurmctld and slurmd, all under one
temporary directory, on ports of their own, stopped by PID afterwards. On one node (this machine), or
on N emulated nodes (bench/run/netcluster.py): one slurmd per network namespace, each with a host name
of its own, slurmctld on node 0, and the clients (sbatch, squeue, scancel, sinfo) run inside node 0
by wrappers first in the PATH, so a job's ranks on two nodes talk over TCP between namespaces.

Needs root (slurmd runs jobs as their user) and Debian's slurmctld, slurmd, slurm-client and munge
(`make setup` installs them). `start` raises Unavailable with the reason when it cannot run.
"""
import os
import shutil
import signal
import socket
import subprocess
import time

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


class Unavailable(Exception):
    """The cluster cannot start here; the message says why."""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root, host, ctl_port, d_port, munge_socket, nodes=None):
    """The configuration this fixture runs: one node, no cgroups (linuxproc tracking, no task binding),
    consumable cores, jobs sharing the node. It declares at least 4 CPUs, so a job of 1 server + 2
    workers fits a 2-core machine, as mpirun --oversubscribe lets it locally. `nodes`: [(name,
    address)] of emulated nodes instead (the controller on the first), each slurmd's files its own (%n)."""
    if nodes:
        host = f"{nodes[0][0]}({nodes[0][1]})"
        node_lines = [f"NodeName={n} NodeAddr={a} CPUs={max(4, os.cpu_count())} State=UNKNOWN" for n, a in nodes]
        names, per_node = ",".join(n for n, _ in nodes), ".%n"
    else:
        node_lines = [f"NodeName={host} CPUs={max(4, os.cpu_count())} State=UNKNOWN"]
        names, per_node = host, ""
    return "\n".join([
        "ClusterName=ffnbench-test", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={munge_socket}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "MpiDefault=none", "ReturnToService=2", "KillWait=10",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool{per_node}",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd{per_node}.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd{per_node}.log",
        f"SlurmctldPort={ctl_port}", f"SlurmdPort={d_port}", *node_lines,
        "SlurmdParameters=config_overrides",  # take the declared CPUs, not the cores slurmd finds
        f"PartitionName=test Nodes={names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
    ]) + "\n"


def _wait_for(what, check, timeout_s, root):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    logs = " ".join(f"{root}/{name}" for name in ("munged.log", "slurmctld.log", "slurmd.log"))
    raise Unavailable(f"{what} did not come up within {timeout_s} s (logs: {logs})")


def start(root, nodes=1):
    """Start the cluster under `root` (nodes > 1: on that many emulated nodes); returns (environment
    for its clients, stop function)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not os.path.exists(f"/usr/sbin/{d}")]
    if missing:
        raise Unavailable(f"Slurm or munge not installed ({', '.join(missing)} missing; `make setup` installs them)")
    if os.geteuid() != 0:
        raise Unavailable("not root: slurmd must run as root to start jobs")
    if nodes > 1:
        from ffnbench.bench.run import netcluster
        why = netcluster.unavailable_reason()
        if why:
            raise Unavailable(why)
        emulated = netcluster.Cluster("slurm", nodes)
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(root, sub))
    key = os.path.join(root, "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_socket = os.path.join(root, "munge.socket")
    pids = {}

    env = {**os.environ, "SLURM_CONF": os.path.join(root, "slurm.conf")}
    slurmds = ["slurmd"] if nodes == 1 else [f"slurmd.{emulated.namespace(i)}" for i in range(nodes)]

    def stop():
        if pids.get("slurmctld"):  # the tests' jobs first, so none outlives its cluster
            subprocess.run(["scancel", "--me"], env=env, capture_output=True, timeout=30)
            time.sleep(2)
        # by PID, nothing else on the machine is touched; all at once, then each waited for
        _kill([pids.get(name) or _read_pid(os.path.join(root, f"{name}.pid")) for name in (*slurmds, "slurmctld", "munged")])
        if nodes > 1:
            netcluster.down(emulated.name)

    try:
        _start("munged", [f"--socket={munge_socket}", f"--key-file={key}", f"--log-file={root}/munged.log",
                          f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed", "--force"], os.environ)
        _wait_for("munged", lambda: os.path.exists(munge_socket), 20, root)
        pids["munged"] = _read_pid(f"{root}/munged.pid")
        host = socket.gethostname().split(".")[0]
        conf = env["SLURM_CONF"]
        if nodes == 1:
            with open(conf, "w") as f:
                f.write(slurm_conf(root, host, _free_port(), _free_port(), munge_socket))
            for daemon in ("slurmctld", "slurmd"):
                _start(daemon, ["-f", conf], env)
                _wait_for(daemon, lambda: _read_pid(f"{root}/{daemon}.pid"), 20, root)
                pids[daemon] = _read_pid(f"{root}/{daemon}.pid")
        else:
            _start_on_emulated_nodes(root, emulated, conf, munge_socket, env, pids)

        def idle():
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env, timeout=10)
            return out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc")
        _wait_for("the node", idle, 60, root)
    except BaseException:
        stop()
        raise
    return env, stop


def _start_on_emulated_nodes(root, cluster, conf, munge_socket, env, pids):
    """slurmctld inside node 0, a slurmd inside each node (its own host name, spool and PMIx directory:
    two slurmds on one file system would share /tmp's), and client wrappers that run inside node 0."""
    from ffnbench.bench.run import netcluster
    cluster.up()
    names = [cluster.namespace(i) for i in range(cluster.nodes)]
    with open(conf, "w") as f:
        f.write(slurm_conf(root, None, 6817, 6818, munge_socket, [(n, cluster.address(i)) for i, n in enumerate(names)]))
    pmix = os.path.join(root, "pmix")
    with open(os.path.join(root, "mpi.conf"), "w") as f:  # beside slurm.conf, where Slurm looks for it
        f.write(f"PMIxCliTmpDirBase={pmix}\n")
    os.makedirs(pmix)
    _start("slurmctld", ["-f", conf], env, prefix=netcluster.as_node(names[0]))
    _wait_for("slurmctld", lambda: _read_pid(f"{root}/slurmctld.pid"), 20, root)
    pids["slurmctld"] = _read_pid(f"{root}/slurmctld.pid")
    for n in names:
        os.makedirs(os.path.join(root, f"spool.{n}"))
        os.makedirs(os.path.join(root, f"pmix.{n}"))
        # nsenter, not `ip netns exec`: that remounts /sys, and slurmd needs the host's cgroup mounts
        node = ["nsenter", f"--net=/run/netns/{n}", "unshare", "--uts", "--mount", "sh", "-c",
                f'mount --bind "{root}/pmix.{n}" "{pmix}" && hostname "{n}" && exec "$@"', n]
        _start("slurmd", ["-f", conf, "-N", n], env, prefix=node)
        _wait_for(f"slurmd of {n}", lambda: _read_pid(f"{root}/slurmd.{n}.pid"), 20, root)
        pids[f"slurmd.{n}"] = _read_pid(f"{root}/slurmd.{n}.pid")
    bin_dir = os.path.join(root, "bin")
    os.makedirs(bin_dir)
    for client in ("sbatch", "squeue", "scancel", "sinfo"):
        path = os.path.join(bin_dir, client)
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\nexec ip netns exec {names[0]} {shutil.which(client)} "$@"\n')
        os.chmod(path, 0o755)
    env["PATH"] = bin_dir + os.pathsep + env["PATH"]


def _start(daemon, args, env, prefix=()):
    """Run a daemon's start command (it forks into the background); Unavailable with its complaint."""
    try:
        out = subprocess.run([*prefix, daemon, *args], capture_output=True, text=True, env=env, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"{daemon} did not start ({e})")
    if out.returncode != 0:
        raise Unavailable(f"{daemon} did not start: {(out.stderr.strip().splitlines() or ['no message'])[-1]}")


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _kill(pids, grace_s=10):
    """SIGTERM to each of `pids` (None: none), then SIGKILL to those still there after grace_s."""
    left = []
    for pid in filter(None, pids):
        try:
            os.kill(pid, signal.SIGTERM)
            left.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace_s
    while left and time.time() < deadline:
        time.sleep(0.2)
        left = [pid for pid in left if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
