"""A private single-node Slurm cluster for the tests: a munge key, munged, slurmctld and slurmd, all
under one temporary directory, on ports of their own, stopped by PID afterwards.

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


def slurm_conf(root, host, ctl_port, d_port, munge_socket):
    """The configuration this fixture runs: one node, no cgroups (linuxproc tracking, no task binding),
    consumable cores, jobs sharing the node. It declares at least 4 CPUs, so a job of 1 server + 2
    workers fits a 2-core machine, as mpirun --oversubscribe lets it locally."""
    return "\n".join([
        "ClusterName=ffnbench-test", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={munge_socket}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "MpiDefault=none", "ReturnToService=2", "KillWait=10",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
        f"SlurmctldPort={ctl_port}", f"SlurmdPort={d_port}",
        f"NodeName={host} CPUs={max(4, os.cpu_count())} State=UNKNOWN",
        "SlurmdParameters=config_overrides",  # take the declared CPUs, not the cores slurmd finds
        f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
    ]) + "\n"


def _wait_for(what, check, timeout_s, root):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    logs = " ".join(f"{root}/{name}" for name in ("munged.log", "slurmctld.log", "slurmd.log"))
    raise Unavailable(f"{what} did not come up within {timeout_s} s (logs: {logs})")


def start(root):
    """Start the cluster under `root`; returns (environment for its clients, stop function)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not os.path.exists(f"/usr/sbin/{d}")]
    if missing:
        raise Unavailable(f"Slurm or munge not installed ({', '.join(missing)} missing; `make setup` installs them)")
    if os.geteuid() != 0:
        raise Unavailable("not root: slurmd must run as root to start jobs")
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(root, sub))
    key = os.path.join(root, "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_socket = os.path.join(root, "munge.socket")
    pids = {}

    def stop():
        if pids.get("slurmctld"):  # the tests' jobs first, so none outlives its cluster
            subprocess.run(["scancel", "--me"], env={**os.environ, "SLURM_CONF": os.path.join(root, "slurm.conf")},
                           capture_output=True, timeout=30)
            time.sleep(2)
        for name in ("slurmd", "slurmctld", "munged"):  # by PID: nothing else on the machine is touched
            pid = pids.get(name) or _read_pid(os.path.join(root, f"{name}.pid"))
            if pid:
                _kill(pid)

    try:
        _start("munged", [f"--socket={munge_socket}", f"--key-file={key}", f"--log-file={root}/munged.log",
                          f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed", "--force"], os.environ)
        _wait_for("munged", lambda: os.path.exists(munge_socket), 20, root)
        pids["munged"] = _read_pid(f"{root}/munged.pid")
        host = socket.gethostname().split(".")[0]
        conf = os.path.join(root, "slurm.conf")
        with open(conf, "w") as f:
            f.write(slurm_conf(root, host, _free_port(), _free_port(), munge_socket))
        env = {**os.environ, "SLURM_CONF": conf}
        for daemon in ("slurmctld", "slurmd"):
            _start(daemon, ["-f", conf], env)
            _wait_for(daemon, lambda: _read_pid(f"{root}/{daemon}.pid"), 20, root)
            pids[daemon] = _read_pid(f"{root}/{daemon}.pid")

        def idle():
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env, timeout=10)
            return out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc")
        _wait_for("the node", idle, 60, root)
    except Unavailable:
        stop()
        raise
    return env, stop


def _start(daemon, args, env):
    """Run a daemon's start command (it forks into the background); Unavailable with its complaint."""
    try:
        out = subprocess.run([daemon, *args], capture_output=True, text=True, env=env, timeout=30)
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


def _kill(pid, grace_s=10):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
