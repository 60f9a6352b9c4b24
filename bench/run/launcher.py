"""`ffnbench run`: resolve the config, make the run directory, start the ranks, report the outcome."""
import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import yaml

from ffnbench import strategies
from ffnbench.bench.run import context, peak, summary as summ
from ffnbench.bench.config import ConfigError
from ffnbench.bench.analyse.results import is_complete, read_summary
from ffnbench.bench.run import netcluster, processes

# Open MPI's multi-line banners around an abort add nothing to our one-line error.
_MPI_NOISE = re.compile(r"^(-{20,}|MPI_ABORT|NOTE: invoking|You may or may not|exactly when|with errorcode|"
                        r"Primary job|a non-zero exit|Process name|Exit code|mpirun (noticed|detected|has exited)|"
                        r"  Process name|  Exit code|\s*$|\[[^\]]+\] \d+ more process|\[[^\]]+\] Set MCA|\[[^\]]+\] .*(PMIX ERROR|ORTE_ERROR_LOG)|"
                        # on emulated nodes the launch agent has exec'd before mpirun sets its process group
                        r"\[[^\]]+\] plm:rsh: Warning: setpgid)")


def cli_command(*args):
    """The command that runs `ffnbench ARGS` with this interpreter (every rank runs one)."""
    return [sys.executable, "-m", "ffnbench.bench.cli", *args]


def check_inputs(cfg, layout, resuming=False, here=True):
    """Fail before launching anything (ConfigError, one line) when an input cannot work: a missing or
    malformed HDF5 volume, or more ranks than this machine's memory holds (the layout is checked with
    the config), or model.init_from's weights do not fit (unless `resuming`: then the run's own
    checkpoint is loaded). Prints a warning when the ranks oversubscribe the cores. `here=False`: the
    job runs elsewhere (a cluster's nodes), so this machine's memory and cores say nothing."""
    if cfg["data"]["source"] == "hdf5":
        from ffnbench.model.data import check_hdf5
        for key in ("image", "labels"):
            path = cfg["data"][key].rsplit(":", 1)[0]
            if not os.path.isfile(path):
                raise ConfigError(f"config field data.{key}: file {path} not found")
        try:
            check_hdf5(cfg["data"], cfg["model"]["fov"], cfg["model"]["deltas"])
        except ValueError as e:
            raise ConfigError(str(e))
    if cfg["model"]["init_from"] and not resuming:  # a resumed run starts from its own checkpoint
        context.initial_weights(cfg)  # ConfigError naming the first tensor that does not fit
    if layout.traits.launch == "horovodrun_elastic":
        names = processes.local_host_names()
        if cfg["ranks"] > len(names):
            raise ConfigError(f"config field ranks: elastic allreduce runs at most {len(names)} workers on this "
                              f"machine, one per name it answers to ({', '.join(names)}), got {cfg['ranks']}")
    netcluster.check_config(cfg, layout)
    if here:
        check_memory(cfg)


#: resident memory of one idle rank (Python, TensorFlow, MPI), measured here: about 230 MB
RANK_BASE_BYTES = 250e6


def memory_estimate(cfg):
    """Bytes the job's ranks need on this machine: each rank's base, its copy of both volumes
    (float32 image and int32 labels) and the step's activations (forward and backward; none where
    the passes are emulated)."""
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    if d["source"] == "synthetic":
        voxels = 2 * float(np.prod(d["shape"]))
    else:
        import h5py
        path, _, name = d["image"].rpartition(":")
        with h5py.File(path, "r") as f:
            voxels = float(np.prod(f[name].shape))
    layers = 2 * m["depth"] + 1
    activations = 3 * t["batch_size"] * float(np.prod(m["fov"])) * m["features"] * layers * 4
    if t["compute"] == "emulated":
        activations = 0.0
    return cfg["ranks"] * (RANK_BASE_BYTES + 8 * voxels + activations)


def available_memory():
    """MemAvailable of /proc/meminfo in bytes, or None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(cfg):
    need, have = memory_estimate(cfg), available_memory()
    cores = os.cpu_count() or 1
    if have is not None and need > have:
        raise ConfigError(f"config field ranks: {cfg['ranks']} ranks need about {need / 1e9:.1f} GB here, more "
                          f"than the {have / 1e9:.1f} GB available")
    if cfg["ranks"] > cores and cfg["train"]["compute"] == "real":  # emulated passes wait without the cores
        print(f"ffnbench: warning: {cfg['ranks']} ranks on {cores} cores are oversubscribed (about "
              f"{need / 1e9:.1f} GB of memory{f' of {have / 1e9:.1f} GB available' if have else ''})",
              file=sys.stderr, flush=True)


LOCK = "run.lock"


def claim(run_dir):
    """Take RUN_DIR/run.lock for this process (atomically); ConfigError when a live process holds it."""
    path = os.path.join(run_dir, LOCK)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise ConfigError(f"--out {run_dir}: in use by ffnbench process {pid}")
            os.remove(path)  # left by a process that is gone
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return path
    raise ConfigError(f"--out {run_dir}: cannot take {path}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_run_dir(cfg, out=None):
    """The run's directory, created and claimed atomically: RUN.OUT/NAME-STRATEGY-rRANKS-TIME (with a
    suffix when two runs start in the same second), or `out`. Returns (run_dir, lock path)."""
    try:
        if out is None:
            base = os.path.join(cfg["run"]["out"],
                                f"{cfg['name']}-{cfg['strategy']}-r{cfg['ranks']}-{time.strftime('%Y%m%d-%H%M%S')}")
            os.makedirs(cfg["run"]["out"], exist_ok=True)
            out = next(path for path in (base if k == 0 else f"{base}-{k + 1}" for k in range(1000))
                       if _made(path))
        else:
            os.makedirs(out, exist_ok=True)
        lock = claim(out)
    except OSError as e:
        raise ConfigError(f"--out {out or cfg['run']['out']}: cannot create the run directory ({e.strerror})")
    if is_complete(out):
        os.remove(lock)
        raise ConfigError(f"--out {out}: holds a completed run; choose another directory")
    for stale in ("metrics.jsonl", "manifest.json", "summary.json"):  # a previous, incomplete attempt
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return out, lock


def _made(path):
    try:
        os.mkdir(path)
        return True
    except FileExistsError:
        return False


class Interrupted(KeyboardInterrupt):
    """The launcher got a signal; the job was stopped and marked interrupted."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: how long mpirun gets to take its ranks down after a forwarded signal, before SIGKILL
STOP_GRACE_S = 20.0


def _die_with_parent():
    """In the child: get SIGTERM if the launcher dies, however it dies (Linux)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def synthetic_volumes(cfg, directory):
    """DIRECTORY/synthetic-HASH.npz of the config's synthetic volumes, made once (e.g. per sweep)."""
    from ffnbench.model.data import save_synthetic
    d = cfg["data"]
    key = hashlib.sha1(json.dumps([d["shape"], d["seed"], d["density"]]).encode()).hexdigest()[:12]
    path = os.path.join(directory, f"synthetic-{key}.npz")
    if not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        save_synthetic(d, path)
    return path


def launch(cfg, layout, run_dir, env=None):
    """Run the job; returns (exit status, first error line or None, the signal that stopped it or None).

    SIGTERM, SIGINT and SIGHUP reach the whole job: mpirun or horovodrun (in its own session) gets
    SIGTERM and takes its ranks down, and is killed with them if it has not within STOP_GRACE_S. The
    job also dies with the launcher.
    """
    argv = cli_command("train", os.path.join(run_dir, "config.yaml"), "--run-dir", run_dir)
    received, job = [], []

    def forward(signum, frame):
        received.append(signum)
        if job and job[0].poll() is None:
            job[0].send_signal(signal.SIGTERM)

    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED} if in_main else {}
    try:
        popen = dict(stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_die_with_parent, env_extra=env)
        if layout.traits.launch == "horovodrun_elastic":
            hosts = write_host_discovery(run_dir, cfg["ranks"])
            proc = processes.launch_elastic(cfg["ranks"], argv, hosts, cfg["run"]["timeout_s"], stdout=subprocess.PIPE,
                                       **popen)
        elif cfg["run"]["nodes"] > 1:
            cluster = emulated_cluster(cfg, run_dir)
            proc = processes.launch_on_cluster(cluster, netcluster.slots_for(layout.roles, cfg["run"]["nodes"],
                                                                            cfg["run"]["server_nodes"]), argv, **popen)
        else:
            proc = processes.launch_ranks(cfg["ranks"], argv, **popen)
        job.append(proc)
        if received:  # a signal came while it started
            proc.send_signal(signal.SIGTERM)
        errors, deaths = [], []

        def relay_stderr():
            for line in _lines(proc.stderr):
                if line.startswith("ffnbench: error"):
                    errors.append(line.strip())
                    if layout.traits.launch == "horovodrun_elastic" and proc.poll() is None:
                        # the elastic ring goes on without a worker that died, not one that reported a
                        # failure (divergence, an exception, a stall): that ends the job
                        proc.send_signal(signal.SIGTERM)
                elif "noticed that process rank" in line:
                    deaths.append("ffnbench: error: lost_ranks: " + line.split("noticed that ", 1)[1].strip())
                elif not _MPI_NOISE.match(line):
                    sys.stderr.write(line)
                    sys.stderr.flush()

        def relay_stdout():
            for line in _lines(proc.stdout):
                sys.stdout.write(line)
                sys.stdout.flush()
        readers = [threading.Thread(target=relay, daemon=True)
                   for relay, stream in ((relay_stderr, proc.stderr), (relay_stdout, proc.stdout)) if stream]
        for reader in readers:
            reader.start()
        status = wait_for_job(proc, run_dir, received, cfg["run"]["timeout_s"])
        for reader in readers:
            reader.join(timeout=5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if cfg["run"]["nodes"] > 1:
            netcluster.down(cluster_name(run_dir))
    first = (errors or deaths or [None])[0]
    return status, first, (received[0] if received else None)


def cluster_name(run_dir):
    """The emulated cluster of a run: named after its directory, so concurrent runs never share one."""
    return "r" + hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:5]


def emulated_cluster(cfg, run_dir):
    """Bring up the run's emulated cluster (run.nodes namespaces, links shaped to run.link)."""
    cluster = netcluster.Cluster(cluster_name(run_dir), cfg["run"]["nodes"], cfg["run"]["link"] or None)
    seconds = cluster.up()
    print(f"emulated cluster {cluster.name}: {cluster.nodes} nodes, links {cfg['run']['link'] or 'unshaped'}, "
          f"up in {seconds:.1f} s", flush=True)
    return cluster


def wait_for_job(proc, run_dir, received, timeout_s):
    """The job's exit status. Bounded: after a forwarded signal, STOP_GRACE_S; after rank 0 wrote a
    complete summary, run.timeout_s for the ranks to finalize (a rank stuck in MPI_Finalize after a
    lost peer must not hang the launcher). Past a bound the job is killed."""
    signalled = finalizing = None
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        signalled = signalled or (now if received else None)
        finalizing = finalizing or (now if is_complete(run_dir) else None)
        if signalled and now - signalled > STOP_GRACE_S or finalizing and now - finalizing > timeout_s:
            os.killpg(proc.pid, signal.SIGKILL)


#: horovodrun's prefix on each line of a worker's output
_WORKER_PREFIX = re.compile(r"^\[\d+\]<std(?:out|err)>:")


def _lines(stream):
    """The lines of a job's output stream (bytes), with horovodrun's worker prefixes removed; a
    carriage return ends a line too, so progress bars still redraw in place."""
    pending = b""
    while True:
        chunk = os.read(stream.fileno(), 65536)
        pending += chunk
        parts = re.split(rb"(?<=[\r\n])", pending) if chunk else [pending]
        pending = parts.pop() if chunk else b""
        for part in parts:
            if part:
                yield _WORKER_PREFIX.sub("", part.decode(errors="replace"))
        if not chunk:
            return


def write_host_discovery(run_dir, ranks):
    """RUN_DIR/horovod_hosts.sh, horovodrun's host discovery: one slot under each of `ranks` of this
    machine's names, so a lost worker takes only its own slot out of the ring."""
    path = os.path.join(run_dir, "horovod_hosts.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n# one slot per name of this machine (elastic Horovod drops a failed worker's host)\n")
        f.writelines(f"echo {name}:1\n" for name in processes.local_host_names()[:ranks])
    os.chmod(path, 0o755)
    return path


_STATUS = re.compile(r"^ffnbench: error: (?:rank \d+: )?(\w+): (.*)$")


def failure(error_line, status, signum):
    """(summary status, one-line message) of a job that did not complete."""
    if signum is not None:
        return "interrupted", f"interrupted by {signal.Signals(signum).name}; the job was stopped"
    if error_line:
        match = _STATUS.match(error_line)
        if match and match.group(1) in processes.FAILURES:
            return match.group(1), error_line.split("error: ", 1)[1]
        return "failed", error_line.split("error: ", 1)[1]
    return "failed", f"mpirun exited with status {status}"


def run_experiment(cfg, out=None, node_peak=None, volumes_dir=None):
    """Validate, make the run directory, train in a fresh process (mpirun for ranks > 1).

    The node's matmul peak is measured here, before any rank starts, unless given (a sweep measures
    it once before its first run). Synthetic volumes are made once into `volumes_dir` when given (a
    sweep's), else by the ranks. A job that does not complete leaves a summary.json whose status
    says how it ended.

    Returns:
        (run_dir, error line or None); a run is complete only if its summary says so.
    Raises:
        Interrupted: a signal stopped the job (after its summary was written).
    """
    layout = context.layout_of(cfg)
    check_inputs(cfg, layout)
    node_peak = node_peak or peak.node_peak(during="before any rank started")
    run_dir, lock = make_run_dir(cfg, out)
    return _train(cfg, layout, run_dir, lock, context.Handoff(node_peak=node_peak), volumes_dir)


def resume_experiment(run_dir, node_peak=None, volumes_dir=None):
    """Continue an interrupted run from its newest complete checkpoint; as run_experiment."""
    from ffnbench.bench.run import checkpoints
    from ffnbench.bench import config
    cfg = config.load(os.path.join(run_dir, "config.yaml"))
    layout = context.layout_of(cfg)
    if not layout.traits.resumable:
        able = ", ".join(n for n in strategies.names() if strategies.get(n).traits.resumable)
        raise ConfigError(f"{run_dir}: strategy {cfg['strategy']} with these options cannot resume (resumable: "
                          f"{able}; elastic allreduce recovers in memory instead)")
    if is_complete(run_dir):
        raise ConfigError(f"{run_dir}: the run is already complete")
    check_inputs(cfg, layout, resuming=True)
    node_peak = node_peak or peak.node_peak(during="before any rank started")
    lock = claim(run_dir)
    checkpoint = checkpoints.latest(run_dir)
    if checkpoint is None:
        os.remove(lock)
        raise ConfigError(f"{run_dir}: no complete checkpoint to resume from (run.checkpoint_every is "
                          f"{cfg['run']['checkpoint_every']})")
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        os.remove(os.path.join(run_dir, "summary.json"))
    print(f"resuming {run_dir} after step {checkpoints.read_meta(checkpoint)['step']}", flush=True)
    return _train(cfg, layout, run_dir, lock, context.Handoff(resume_from=checkpoint, node_peak=node_peak), volumes_dir)


#: Open MPI 4.1 (ORTE) ends the whole job when one process dies, unless recovery is enabled
RECOVERY_ENV = {"OMPI_MCA_orte_enable_recovery": "1"}


def can_resume(run_dir):
    """Whether RUN_DIR holds an incomplete run of a resumable strategy with a complete checkpoint."""
    from ffnbench.bench.run import checkpoints
    from ffnbench.bench.analyse.results import stored_config
    cfg = stored_config(run_dir)
    return bool(cfg and not is_complete(run_dir) and cfg.get("strategy") in strategies.names()
                and context.layout_of(cfg).traits.resumable and checkpoints.latest(run_dir))


def _train(cfg, layout, run_dir, lock, handoff, volumes_dir):
    try:
        print(f"run directory: {run_dir}", flush=True)
        if volumes_dir and cfg["data"]["source"] == "synthetic":
            handoff = dataclasses.replace(handoff, synthetic_npz=synthetic_volumes(cfg, volumes_dir))
        context.write_handoff(run_dir, dataclasses.replace(
            handoff, strategy=strategies.get(layout.strategy).launch_info(layout)))
        env = RECOVERY_ENV if layout.traits.survives_lost_workers else {}
        status, error, signum = launch(cfg, layout, run_dir, env)
        if signum is None and is_complete(run_dir):
            # every rank's records were in before the summary: a nonzero status after it is a lost
            # worker's, or ranks stopped while finalizing
            if status != 0 and not read_summary(run_dir).get("lost_workers"):
                print(f"ffnbench: warning: the job exited with status {status} after its complete summary "
                      f"(ranks stopped while finalizing)", file=sys.stderr)
            return run_dir, None
        kind, message = failure(error, status, signum)
        if status == 0 and signum is None and not error:  # (with MPI recovery enabled an abort exits 0)
            kind, message = "failed", f"run in {run_dir} ended without a summary"
        summ.write_failure(run_dir, kind, message)
        if signum is not None:
            raise Interrupted(signum)
        return run_dir, message
    finally:
        os.remove(lock)
