"""manifest.json: what a run ran on and with (config, layout, versions, host, CPU, precision, the
initial weights, the matmul peak), written by rank 0 before training starts."""
import os
import platform
import socket
import subprocess
import time

from ffnbench.model.network import bf16_flags


def manifest(cfg, layout, ranks, threads, params, nodes, init_from):
    """The manifest of this run, without its matmul peak (rank 0 adds it after set-up)."""
    return {"config": cfg, "strategy": layout.strategy, "ranks": ranks, "roles": list(layout.roles),
            "role_counts": layout.role_counts(), "workers": layout.workers, "emulated": layout.traits.emulated,
            "threads_per_rank": threads, "params": params, **versions(), "host": os.environ.get("FFNBENCH_MACHINE") or socket.gethostname(),
            "cpu": cpu_model(), "cores": os.cpu_count(), "nodes": nodes,
            "precision": {"train": cfg["train"]["precision"], "forced": cfg["train"]["force_precision"],
                          "cpu_bf16_flags": bf16_flags()},
            "init_from": init_from, "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(),
            "network": network(cfg, layout), "compute": compute(cfg)}


def compute(cfg):
    """Whether the workers computed for real, or waited as long (train.compute emulated)."""
    t = cfg["train"]
    if t["compute"] == "real":
        return {"mode": "real"}
    return {"mode": "emulated", "mean_s": t["compute_mean_s"], "cv": t["compute_cv"], "from": t["compute_from"] or None}


def network(cfg, layout):
    """How the ranks reach each other: emulated nodes (run.nodes > 1) or one machine's shared memory
    (on a real cluster, `nodes` above counts its nodes and Open MPI picks the transport)."""
    r = cfg["run"]
    if r["nodes"] == 1:
        return {"emulated_nodes": 1, "between_ranks": "shared memory (vader) on one node, or the cluster's own"}
    from ffnbench.bench.run.netcluster import slots_for
    return {"emulated_nodes": r["nodes"], "link": r["link"] or "unshaped",
            "ranks_per_node": slots_for(list(layout.roles), r["nodes"], r["server_nodes"]),
            "between_nodes": "TCP over veths and a bridge (network namespaces on one machine)",
            "within_a_node": "shared memory (vader)"}


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions():
    from mpi4py import MPI
    import mpi4py
    import tensorflow as tf
    try:
        import horovod
        hvd_version = horovod.__version__
    except ImportError:
        hvd_version = None
    return {"python": platform.python_version(), "tensorflow": tf.__version__, "horovod": hvd_version,
            "mpi4py": mpi4py.__version__, "mpi": MPI.Get_library_version().splitlines()[0].strip(),
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}



def cpu_model():
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
