"""The MPI layer that ranks, strategies and launchers share: start-up, bounded waits, abort, and
starting ranks with one set of MCA settings.

Waits poll nonblocking requests: Open MPI busy-polls inside blocking calls, and a deadline turns a
lost peer into one clear error and an MPI Abort. A nonblocking collective only progresses inside MPI
calls, so the first SPIN_S are polled without sleeping (a quick operation finishes at full speed)
before the sleeps grow to 1 ms, which keeps an idle rank off the CPU.

mpi4py is imported inside the functions: the launching process must never become an MPI rank.
"""
import os
import subprocess
import sys
import time

import numpy as np

ABORT_CODE = 3
SPIN_S = 0.005
#: Open MPI settings every job gets unless a caller passes others: ranks that wait yield the CPU
#: (ranks are oversubscribed here), and shared-memory transfers go through vader's copy-in/copy-out,
#: since CMA (process_vm_readv) is refused inside containers.
MCA_DEFAULTS = {"mpi_yield_when_idle": "1", "btl_vader_single_copy_mechanism": "none"}


def init_world():
    """Initialise MPI (thread-multiple: Horovod shares the process with mpi4py); COMM_WORLD."""
    from mpi4py import MPI
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_MULTIPLE)
    return MPI.COMM_WORLD


def world_for(launch):
    """The communicator of all the job's ranks, for a strategy's launch kind (strategies/base.py
    LAUNCHES): under mpirun (or srun, aprun) that is MPI's COMM_WORLD."""
    if launch != "mpirun":
        raise ValueError(f"launch {launch!r}: no communicator for it (known: mpirun)")
    return init_world()


#: how a job that did not complete ended; fail() prefixes its line with one, the launcher reads it back
FAILURES = ("stalled", "diverged", "lost_ranks", "interrupted", "failed")


def fail(comm, message, status="failed"):
    """Print one line and abort the whole job (every rank), so nothing waits forever.

    Args:
        status: one of FAILURES, for the run's summary.
    """
    print(f"ffnbench: error: rank {comm.rank}: {status}: {message}", file=sys.stderr, flush=True)
    comm.Abort(ABORT_CODE)


def poll(comm, done, timeout_s, what, spin_s=SPIN_S):
    """Call done() until it is true: without sleeping for spin_s, then with sleeps growing to 1 ms;
    abort the job after timeout_s."""
    start = time.monotonic()
    nap = 2e-5
    while not done():
        elapsed = time.monotonic() - start
        if elapsed > timeout_s:
            fail(comm, f"timed out after {timeout_s:g}s waiting for {what}", "stalled")
        if elapsed > spin_s:
            time.sleep(nap)
            nap = min(nap * 2, 1e-3)


def wait(comm, request, timeout_s, what, status=None):
    """Wait for one request; abort the job after timeout_s."""
    poll(comm, lambda: request.Test(status), timeout_s, what)


def wait_all(comm, requests, timeout_s, what):
    from mpi4py import MPI
    poll(comm, lambda: MPI.Request.Testall(requests), timeout_s, what)


def barrier(comm, timeout_s, what="the other ranks"):
    wait(comm, comm.Ibarrier(), timeout_s, what)


def broadcast(comm, array, timeout_s, what, root=0):
    """Bounded in-place broadcast of a numpy buffer from `root`."""
    wait(comm, comm.Ibcast(array, root=root), timeout_s, what)
    return array


def sum_allreduce(comm, send, recv, timeout_s, what):
    """Bounded element-wise sum of numpy buffers over the ranks, into `recv`; bfloat16 buffers in
    their to_wire form (uint16) are summed by BF16_SUM."""
    from mpi4py import MPI
    if send.dtype == np.uint16:
        send, recv_spec, op = [send, MPI.UINT16_T], [recv, MPI.UINT16_T], _bf16_sum()
    else:
        recv_spec, op = recv, MPI.SUM
    wait(comm, comm.Iallreduce(send, recv_spec, op=op), timeout_s, what)
    return recv


#: gradient_wire: how a gradient crosses the network (bfloat16 halves the bytes, rounding each value)
GRADIENT_WIRES = ("float32", "bfloat16")


def wire_dtype(wire):
    """The numpy dtype a gradient has on the wire (bfloat16 travels as its uint16 bits)."""
    return np.float32 if wire == "float32" else np.uint16


def to_wire(array, wire):
    """A float32 array as it is sent: itself, or rounded to bfloat16 (to nearest even) as uint16."""
    if wire == "float32":
        return array
    from ml_dtypes import bfloat16
    return np.asarray(array, np.float32).astype(bfloat16).view(np.uint16)


def from_wire(buffer, wire):
    """What to_wire made, back as float32."""
    if wire == "float32":
        return buffer
    from ml_dtypes import bfloat16
    return buffer.view(bfloat16).astype(np.float32)


_BF16_SUM = []


def _bf16_sum():
    """MPI's sum of bfloat16 (as uint16), which MPI does not have: each pair added in float32 and
    rounded back, as a bfloat16 reduction does."""
    if not _BF16_SUM:
        from mpi4py import MPI
        from ml_dtypes import bfloat16

        def add(incoming, accumulated, datatype):
            a = np.frombuffer(incoming, bfloat16)
            b = np.frombuffer(accumulated, bfloat16)
            b[...] = (a.astype(np.float32) + b.astype(np.float32)).astype(bfloat16)
        _BF16_SUM.append(MPI.Op.Create(add, commute=True))
    return _BF16_SUM[0]


def census(comm, flag, timeout_s):
    """(ranks on this node with `flag` true, nodes in the job): e.g. the compute ranks sharing a node's
    cores, and how many nodes' peaks add up to the job's."""
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    here = sum_allreduce(local, np.array([int(bool(flag))], np.int64), np.zeros(1, np.int64), timeout_s,
                         "the ranks on this node")
    nodes = sum_allreduce(comm, np.array([int(local.rank == 0)], np.int64), np.zeros(1, np.int64), timeout_s,
                          "the node census")
    local.Free()
    return int(here[0]), int(nodes[0])


def oversubscribed(comm):
    """Whether this node runs more of `comm`'s ranks than it has cores (so a spinning rank steals
    a core from a peer)."""
    from mpi4py import MPI
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks = local.size
    local.Free()
    return ranks > (os.cpu_count() or 1)


#: tag of the message that ends a pause (strategies' own tags are small integers)
RELEASE_TAG = 30_000


def hold(comm, leader, followers, timeout_s, what):
    """The followers wait, bounded, until the leader has done its part and releases them.

    Call it on the leader after its work and on every follower; other ranks (e.g. servers) are
    not involved.
    """
    token = np.zeros(1, np.int64)
    if comm.rank == leader:
        wait_all(comm, [comm.Isend(token, dest=f, tag=RELEASE_TAG) for f in followers], timeout_s,
                 f"the other workers to resume after {what}")
    elif comm.rank in followers:
        wait(comm, comm.Irecv(token, source=leader, tag=RELEASE_TAG), timeout_s, f"rank {leader} to finish {what}")


#: tags of the end-of-run roll call
ARRIVED_TAG, FINISHED_TAG = 30_001, 30_002


def duplicate(comm, timeout_s, what):
    """A bounded duplicate of `comm`: bench's own messages travel on it, so no strategy's probe for
    any message ever sees them."""
    new, request = comm.Idup()
    wait(comm, request, timeout_s, what)
    return new


def report_in(comm, absent, timeout_s, what):
    """A barrier that outlives lost ranks: every rank but `absent` (known on rank 0) tells rank 0 it
    is here; rank 0 waits for them, bounded."""
    if comm.rank == 0:
        reqs = [comm.Irecv(np.zeros(1, np.int64), source=r, tag=ARRIVED_TAG)
                for r in range(1, comm.size) if r not in absent]
        wait_all(comm, reqs, timeout_s, what)
    else:
        wait(comm, comm.Isend(np.zeros(1, np.int64), dest=0, tag=ARRIVED_TAG), timeout_s, what)


def release(comm, absent, timeout_s, what):
    """Rank 0 lets every rank but `absent` go; the others wait for it, bounded."""
    token = np.zeros(1, np.int64)
    if comm.rank == 0:
        wait_all(comm, [comm.Isend(token, dest=r, tag=FINISHED_TAG) for r in range(1, comm.size) if r not in absent],
                 timeout_s, what)
    else:
        wait(comm, comm.Irecv(token, source=0, tag=FINISHED_TAG), timeout_s, what)


def isend_parts(comm, arrays, dest, tag):
    """Send contiguous arrays as one message without copying them into one buffer (an MPI datatype
    over their addresses): one message costs one latency and one probe. Keep the arrays alive and
    unchanged until the request completes."""
    return _parts(comm.Isend, arrays, dest, tag)


def irecv_parts(comm, arrays, source, tag):
    """Receive one message into contiguous arrays, in order (as isend_parts sends them)."""
    return _parts(comm.Irecv, arrays, source, tag)


def _parts(post, arrays, peer, tag):
    from mpi4py import MPI
    datatype = MPI.BYTE.Create_hindexed([a.nbytes for a in arrays], [MPI.Get_address(a) for a in arrays]).Commit()
    try:
        return post([MPI.BOTTOM, 1, datatype], peer, tag)
    finally:
        datatype.Free()  # MPI keeps it until the posted request is done


def probe_any(comm):
    """(source, tag) of a message waiting from any rank, or None."""
    from mpi4py import MPI
    status = MPI.Status()
    if comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
        return status.Get_source(), status.Get_tag()
    return None


# ------------------------------------------------------------------ starting ranks

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
