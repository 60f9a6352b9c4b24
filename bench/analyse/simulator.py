"""Predict FFN training throughput and scaling efficiency at N workers.

Model choice: Monte Carlo / discrete-event, not closed form. What decides
scaling at 1000+ nodes is (a) the slowest of N workers in every synchronous
step and (b) queueing and staleness at parameter servers under asynchrony.
Closed forms for both need assumptions (i.i.d. exponential times, M/M/1
queues) that measured step times do not satisfy, whereas sampling the measured
(or lognormal) step times directly needs none. Sync strategies are vectorised
over steps x workers with numpy; async PS is an event simulation with one FIFO
per server link, capped at a fixed number of updates so N=4096 stays fast.

Network costs use the alpha-beta model (alpha s per message, beta s per byte).
"""
import heapq
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import numpy as np

from ffnbench.model.network import param_count
from ffnbench.strategies.declare import SIMULATOR_MODELS

#: the paper's network: convstack_3d at depth 12 with 32 features (Dong et al. 2019, after google/ffn)
PAPER_PARAMS = param_count(depth=12, features=32)

# Nominal Cray XC40 (Theta) Aries figures, not measurements of ours:
# - Alverson, Froese, Kaplan, Roweth, "Cray XC Series Network", Cray white paper
#   WP-Aries01-1112 (2012), "Aries Performance": nearest-neighbour MPI latency
#   of about 1.3 us and about 8-10 GB/s of MPI bandwidth per node (the NIC sits
#   on a PCIe Gen3 x16 link). We take 1.5 us and 8 GB/s as round, slightly
#   pessimistic values for a dragonfly with multi-hop routes.
# - ALCF's "Aries Network on Theta" page warns that latency and bandwidth vary
#   with node placement and with traffic from other jobs; treat these as a
#   starting point and prefer calibrate_network() on the target machine.
NETWORK_PRESETS = {
    "theta_aries": {"alpha_s": 1.5e-6, "beta_s_per_byte": 1.0 / 8e9},
}


@dataclass(frozen=True)
class SimInputs:
    """Per-step compute distribution, model size and network of one run.

    Compute times come from `samples` (resampled with replacement) when given,
    else from a lognormal with mean `mean_s` and coefficient of variation `cv`
    (lognormal: positive and right-skewed, like real step-time jitter).
    """
    mean_s: float = 1.0
    cv: float = 0.0
    samples: Optional[Sequence[float]] = None
    grad_bytes: float = 4.0 * PAPER_PARAMS
    batch_per_worker: int = 4
    alpha_s: float = 0.0
    beta_s_per_byte: float = 0.0
    servers: int = 1
    server_apply_s_per_byte: float = 0.0
    backup_workers: int = 0
    #: ((k, efficiency), ...): the share of its rate a server's link receives at when k workers push
    #: at once (TCP incast; `ffnbench calibrate --link`); none: the full rate at any k
    fan_in: Optional[Tuple[Tuple[int, float], ...]] = None

    def __post_init__(self):
        if self.samples is not None:
            s = np.asarray(self.samples, dtype=float)
            if s.size == 0 or np.any(s <= 0):
                raise ValueError("samples must be a non-empty list of positive seconds")
        if self.mean_s <= 0 or self.cv < 0:
            raise ValueError("need mean_s > 0 and cv >= 0")
        if self.servers < 1 or self.backup_workers < 0 or self.batch_per_worker < 1:
            raise ValueError("need servers >= 1, backup_workers >= 0, batch_per_worker >= 1")
        if min(self.grad_bytes, self.alpha_s, self.beta_s_per_byte, self.server_apply_s_per_byte) < 0:
            raise ValueError("sizes and costs must be >= 0")

    def inbound_beta(self, pushing: int) -> float:
        """Seconds per byte into a server's link while `pushing` workers push at once (the calibrated
        efficiency, interpolated in k; 1 for a lone sender)."""
        if not self.fan_in or pushing < 2:
            return self.beta_s_per_byte
        ks, shares = zip(*((1, 1.0), *self.fan_in))
        return self.beta_s_per_byte / float(np.interp(pushing, ks, shares))

    def draw(self, rng: np.random.Generator, size) -> np.ndarray:
        """Compute seconds for `size` worker-steps."""
        if self.samples is not None:
            return rng.choice(np.asarray(self.samples, dtype=float), size=size)
        if self.cv == 0:
            return np.full(size, float(self.mean_s))
        s2 = np.log1p(self.cv ** 2)
        return self.mean_s * np.exp(np.sqrt(s2) * rng.standard_normal(size) - s2 / 2)


def ring_allreduce_s(n_bytes: float, p: int, alpha_s: float, beta_s_per_byte: float) -> float:
    """Seconds of a ring all-reduce: 2(p-1) messages of n/p bytes each (reduce-scatter then all-gather;
    Patarasuk and Yuan, "Bandwidth optimal all-reduce algorithms for clusters of workstations", JPDC 2009).

    Args:
        n_bytes: bytes reduced; p: ranks; alpha_s: seconds per message; beta_s_per_byte: seconds per byte.
    Returns:
        Seconds, in the alpha-beta model.
    """
    return 2 * (p - 1) * alpha_s + 2 * (p - 1) / p * n_bytes * beta_s_per_byte


def _kth_fastest_compute(inp: SimInputs, rng, steps: int, width: int, k: int) -> np.ndarray:
    """Per step, the k-th smallest of `width` compute draws (k=width: the max)."""
    out = np.empty(steps)
    rows = max(1, 2_000_000 // width)  # bound memory at ~16 MB per chunk
    for lo in range(0, steps, rows):
        hi = min(steps, lo + rows)
        block = inp.draw(rng, (hi - lo, width))
        out[lo:hi] = np.partition(block, k - 1, axis=1)[:, k - 1]
    return out


def sync_ps_rounds(n: int, inp: SimInputs, steps: int, rng) -> np.ndarray:
    """Seconds of each synchronous PS round through S servers, each on a link of its own.

    A round starts when the last gradient of the one before has been applied. Each server then
    answers the workers one after another on its link out (alpha + (n/S) beta each), so worker w has
    its parameters after (w + 1) answers (and no sooner than its own link takes the whole gradient);
    it computes and pushes its S shards, one after another on its link, and each server takes the
    pushes in their order of arrival on its link in (alpha + (n/S)(beta + apply) each; beta as its
    link takes n + b workers pushing at once, `fan_in`). Answers and
    pushes overlap, as the two directions of a link do: the early workers push while the server
    still answers the late ones. The round ends at the first n of n + b pushes (backups: Chen et al.
    2016) applied on every server.
    """
    S, width = inp.servers, n + inp.backup_workers
    shard = inp.grad_bytes / S
    out = inp.alpha_s + shard * inp.beta_s_per_byte
    into = inp.alpha_s + shard * (inp.inbound_beta(width) + inp.server_apply_s_per_byte)
    own_link = S * inp.alpha_s + inp.grad_bytes * inp.beta_s_per_byte
    answered = np.maximum(out * np.arange(1, width + 1), own_link)
    sent = out * np.arange(S)[:, None]  # shard s leaves a worker after its s shards before it
    k = np.arange(width)
    rounds = np.empty(steps)
    for i in range(steps):
        done = np.sort(answered + inp.draw(rng, width))
        arrive = np.sort(done[None, :] + sent, axis=1)  # (server, push) in order of arrival
        # a FIFO of fixed service: the k-th push is taken at max over j <= k of (arrival_j + (k - j + 1) into)
        taken = np.maximum.accumulate(arrive - k * into, axis=1) + (k + 1) * into
        rounds[i] = taken[:, n - 1].max()
    return rounds


def _run_sync(model: str, n: int, inp: SimInputs, steps: int, rng) -> dict:
    if model == "ring_allreduce":
        comp = _kth_fastest_compute(inp, rng, steps, n, n)
        step = comp + ring_allreduce_s(inp.grad_bytes, n, inp.alpha_s, inp.beta_s_per_byte)
    else:
        step = sync_ps_rounds(n, inp, steps, rng)
    step_mean = float(step.mean())
    return {"fovs_per_s": n * inp.batch_per_worker / step_mean, "step_s_mean": step_mean}


def _run_async(n: int, inp: SimInputs, steps: int, rng, max_events: int) -> dict:
    """Workers loop compute -> push a shard to each server -> pull; servers are FIFOs.

    Each server has an inbound FIFO (receive + apply, alpha + (n/S)beta + apply, beta as its link
    takes n workers pushing at once, `fan_in`)
    and an outbound FIFO (reply with its fresh shard, alpha + (n/S)beta); a worker's
    own link must also send its S shards (S alpha + n beta) and take the last one's answer (alpha +
    (n/S)beta) per step: the answers to earlier shards come back while later ones go out, the
    link's other direction. Events are processed in
    time order, so a FIFO reduces to a "free at" time per link. Staleness of an
    update = server version when applied - version the worker read from it.
    """
    S = inp.servers
    shard = inp.grad_bytes / S
    svc_in = inp.alpha_s + shard * (inp.inbound_beta(n) + inp.server_apply_s_per_byte)
    svc_out = inp.alpha_s + shard * inp.beta_s_per_byte
    nic_floor = S * inp.alpha_s + inp.grad_bytes * inp.beta_s_per_byte + svc_out
    total = max(min(steps * n, max_events // S), 4 * n)  # >= 4 rounds reach steady state
    comp = inp.draw(rng, total)

    version = [0] * S
    in_free = [0.0] * S
    out_free = [0.0] * S
    read = [0] * (n * S)  # version worker w last read from server s, at w*S + s
    pending = [S] * n
    pull_done = [0.0] * n
    compute_done = [0.0] * n
    staleness = []
    applied_at = []  # apply times at server 0: one per completed worker step
    heap = []
    for w in range(n):
        compute_done[w] = float(comp[w])
        heap.extend((compute_done[w], w * S + s, w, s) for s in range(S))
    heapq.heapify(heap)
    issued, seq = n, n * S
    while heap:
        t, _, w, s = heapq.heappop(heap)
        applied = max(t, in_free[s]) + svc_in
        in_free[s] = applied
        staleness.append(version[s] - read[w * S + s])
        version[s] += 1
        read[w * S + s] = version[s]
        if s == 0:
            applied_at.append(applied)
        out_free[s] = max(applied, out_free[s]) + svc_out
        pull_done[w] = max(pull_done[w], out_free[s])
        pending[w] -= 1
        if pending[w] == 0 and issued < total:
            start = max(pull_done[w], compute_done[w] + nic_floor)
            compute_done[w] = start + float(comp[issued])
            issued += 1
            pending[w], pull_done[w] = S, 0.0
            for s2 in range(S):
                heapq.heappush(heap, (compute_done[w], seq, w, s2))
                seq += 1

    # Steady-state rate: drop the first 20 % of updates, and keep a whole number
    # of rounds of n so equal-speed workers' bursts are not cut in half.
    k0 = len(applied_at) // 5
    span = len(applied_at) - 1 - k0  # >= 2, since total >= 4 n
    if span >= n:
        span -= span % n
    steps_per_s = span / (applied_at[k0 + span] - applied_at[k0])
    tau = np.asarray(staleness[len(staleness) // 5:])  # same warm-up cut
    counts, edges = np.histogram(tau, bins=min(50, int(tau.max()) + 1), range=(0, int(tau.max()) + 1))
    return {
        "fovs_per_s": steps_per_s * inp.batch_per_worker,
        "step_s_mean": n / steps_per_s,
        "staleness": {
            "mean": float(tau.mean()),
            "p50": float(np.percentile(tau, 50)),
            "p99": float(np.percentile(tau, 99)),
            "max": int(tau.max()),
            "hist": {"edges": edges.tolist(), "counts": counts.tolist()},
            "counts_by_tau": np.bincount(tau).tolist(),  # for emulated_async's staleness_histogram
        },
    }


def _run(model, n, inp, steps, seed, max_events):
    rng = np.random.default_rng(seed)
    if model == "async_ps":
        return _run_async(n, inp, steps, rng, max_events)
    return _run_sync(model, n, inp, steps, rng)


def simulate(model: str, n_workers: int, inputs: SimInputs, steps: int = 200,
             seed: int = 0, max_events: int = 400_000) -> dict:
    """Predicted throughput of one simulator model at `n_workers`.

    Args:
        model: one of SIMULATOR_MODELS (ring_allreduce, async_ps, sync_ps); a strategy declares
            which one describes it (`simulator_model`).
        n_workers: workers.
        inputs: compute-time distribution, sizes and network costs.
        steps: sync models sample this many steps; async_ps runs this many updates per worker,
            capped at `max_events` shard updates but never fewer than 4 rounds.
        seed: random seed (common random numbers across worker counts).
    Returns:
        {fovs_per_s, step_s_mean, efficiency, model, n_workers}, plus `staleness` (after warm-up)
        for async_ps. Efficiency = FOVs/s over (machines x FOVs/s of the same model and inputs at
        one worker without backups); backup workers count as machines because they are paid for.
    """
    if model not in SIMULATOR_MODELS:
        raise ValueError(f"unknown simulator model {model!r}; choose from {', '.join(SIMULATOR_MODELS)}")
    if n_workers < 1 or steps < 1:
        raise ValueError("need n_workers >= 1 and steps >= 1")
    out = _run(model, n_workers, inputs, steps, seed, max_events)
    # The one-worker reference is cheap, so run it long enough (20k steps) that
    # its sampling noise does not push efficiency above 1.
    one = _run(model, 1, replace(inputs, backup_workers=0), max(steps, 20_000), seed, max_events)
    machines = n_workers + (inputs.backup_workers if model == "sync_ps" else 0)
    out["efficiency"] = out["fovs_per_s"] / (machines * one["fovs_per_s"])
    out.update(model=model, n_workers=n_workers)
    return out


def paper_calibration_check(fovs_per_s_1node: float = 0.7, nodes: int = 1024,
                            target_efficiency: float = 520 / 730, batch_per_worker: int = 4,
                            network: str = "theta_aries", steps: int = 200, seed: int = 0) -> dict:
    """Straggler spread (cv) that makes sync all-reduce hit the paper's efficiency.

    Dong et al. 2019 (arXiv 1905.06236) report about 0.7 FOVs/s on one KNL node and
    about 520 of about 730 ideal FOVs/s at 1024 nodes. With Aries costs the all-reduce of 2.55 MB is milliseconds against a
    ~5.7 s step, so the model must attribute the loss to the max over nodes of
    step time. Bisection is valid because, with common random numbers, the
    expected max grows monotonically with cv. Everything the model leaves out
    (Horovod negotiation, I/O, Python overhead) is folded into this cv, so it
    is an upper bound on true compute jitter.

    Args:
        fovs_per_s_1node: measured rate of one node; nodes: the scale to match;
        target_efficiency: the efficiency reported there; the rest: simulation inputs.
    Returns:
        {cv, efficiency, fovs_per_s, step_mean_s, allreduce_s, nodes}.
    """
    mean_s = batch_per_worker / fovs_per_s_1node
    base = SimInputs(mean_s=mean_s, batch_per_worker=batch_per_worker,
                     grad_bytes=4.0 * PAPER_PARAMS, **NETWORK_PRESETS[network])

    def eff(cv):
        return simulate("ring_allreduce", nodes, replace(base, cv=cv), steps=steps, seed=seed)

    lo, hi = 0.0, 2.0
    if eff(hi)["efficiency"] > target_efficiency:
        raise ValueError("target efficiency not reachable with cv <= 2")
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eff(mid)["efficiency"] > target_efficiency else (lo, mid)
    res = eff(hi)
    comm = ring_allreduce_s(base.grad_bytes, nodes, base.alpha_s, base.beta_s_per_byte)
    return {"cv": hi, "efficiency": res["efficiency"], "fovs_per_s": res["fovs_per_s"],
            "step_mean_s": mean_s, "allreduce_s": comm, "nodes": nodes}
