"""`ffnbench commbench`: one gradient's exchange, ours against the best plain MPI on the same bytes.

All-reduce. The yardstick is the fastest way plain MPI has to all-reduce these bytes: a blocking
`Allreduce` and an `Iallreduce` + `Wait`, each with Open MPI's waiting ranks yielding the CPU
(`mpi_yield_when_idle=1`, what the strategies run with) and busy-polling (`=0`), each in its own
mpirun. It must bound what it measures from below: ours ÷ raw under 1 (beyond noise) means the
yardstick is wrong, and commbench says so. Then ours: mpi_allreduce's path (Iallreduce and its
bounded, sleeping wait), and Horovod's three ways of taking a gradient (per variable, as `allreduce`
trains by default; grouped_allreduce; one flat buffer) under each of HOROVOD_SETTINGS, each setting
in its own mpirun since Horovod reads them at init. Horovod's cost is then split into what one
4-byte all-reduce costs (its background cycle, negotiation and TF's op dispatch: the floor) and the
rest (the bytes), next to what plain MPI needs for the same bytes.

Parameter server. A worker's step exchange of the whole vector through our protocol (PSWorker and
ShardServer's message loop: the push, which also asks for the next parameters, and the parameters
back, the server answering at once and taking gradients without applying them),
against the fastest raw point-to-point exchange of the same bytes both ways (`Sendrecv`, and a
`Send` then `Recv` ping-pong with the receive posted first, as the protocol posts it), in the same
mpirun, in interleaved blocks: a round trip is tens of microseconds, and two mpiruns of the same
code differ by more than the protocol's own cost. One such mpirun with Open MPI's waiting ranks
yielding, one busy-polling. The server's optimizer step on the vector is timed apart: it is compute,
not communication.

Each all-reduce repetition starts after a barrier, so the times are transfer + reduction, not
waiting for a slow peer (which a step's comm_s also holds). Separate mpiruns on a shared machine
drift apart by tens of per cent, so the whole set runs ROUNDS times, interleaved, and each way's
figure is its median over the rounds.
"""
import json
import subprocess
import time

import numpy as np
from tqdm import tqdm

from ffnbench.bench.run import control, processes

#: plain MPI's ways to all-reduce (the yardstick's candidates), each run under both yield settings
RAW_WAYS = ("Allreduce", "Iallreduce+Wait", "Iallreduce+Test loop")
#: plain MPI's ways to move the bytes there and back (the PS round trip's yardstick)
RAW_P2P_WAYS = ("Sendrecv", "Send then Recv")
#: Sendrecvs across an emulated link, the first SKIPPED not timed (2.55 MB take 0.2 s at 100 Mbit/s)
LINK_REPEATS = 8
#: blocks of each point-to-point way, interleaved in one mpirun, and round trips per block
P2P_BLOCKS, P2P_BLOCK = 5, 200
#: the PS step exchange's row: a push that also pulls, and the parameters back
PS_ROUND_TRIP = "PS push + pull (our protocol)"
#: Horovod's settings tried, each in its own mpirun: the environment Horovod reads at init
HOROVOD_SETTINGS = {
    "cycle 1 ms": {"HOROVOD_CYCLE_TIME": "1"},
    "cycle 0.1 ms": {"HOROVOD_CYCLE_TIME": "0.1"},
    "cycle 0.1 ms, no response cache": {"HOROVOD_CYCLE_TIME": "0.1", "HOROVOD_CACHE_CAPACITY": "0"},
    "cycle 0.1 ms, fusion off": {"HOROVOD_CYCLE_TIME": "0.1", "HOROVOD_FUSION_THRESHOLD": "0"},
    "cycle 5 ms": {"HOROVOD_CYCLE_TIME": "5"},
}
#: the prefix of rank 0's one result line on stdout
RESULT = "commbench-result "
#: a ratio below this is not noise: the yardstick does not bound ours from below
BELOW_RAW = 0.9
#: whole sets of mpiruns, interleaved; each way's figure is its median over them
ROUNDS = 3
REPEATS = 50
#: repetitions dropped at the start of each median (first calls set up buffers)
SKIPPED = 3


def timed(world, fn, repeats=REPEATS):
    """Seconds of each call of fn after a barrier, the first SKIPPED dropped."""
    times = []
    for _ in range(repeats):
        world.Barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times[SKIPPED:]


def timed_median(world, fn, repeats=REPEATS):
    return float(np.median(timed(world, fn, repeats)))


def _report(world, results):
    if world.rank == 0:
        print(RESULT + json.dumps(results), flush=True)


def raw_main(params, way):
    """One rank of a raw all-reduce run: plain MPI's `way` on `params` float32."""
    from mpi4py import MPI
    world = control.init_world()
    flat, out = np.ones(params, np.float32), np.empty(params, np.float32)
    if way == "Allreduce":
        def allreduce():
            world.Allreduce(flat, out, op=MPI.SUM)
    elif way == "Iallreduce+Wait":
        def allreduce():
            world.Iallreduce(flat, out, op=MPI.SUM).Wait()
    else:  # what mpi_allreduce's bounded wait does, without its deadline and naps
        def allreduce():
            request = world.Iallreduce(flat, out, op=MPI.SUM)
            while not request.Test():
                pass
    _report(world, {way: timed_median(world, allreduce)})


def raw_round_trips(world, params):
    """Plain MPI's round trips of `params` float32 each way between ranks 0 and 1: {way: call}."""
    peer = 1 - world.rank
    out, back = np.ones(params, np.float32), np.empty(params, np.float32)

    def ping_pong():  # rank 0 sends first, like a server answering a pull; then the push comes back
        receive = world.Irecv(back, source=peer)  # posted first, as the protocol posts its receives
        if world.rank == 1:
            receive.Wait()
        world.Send(out, dest=peer)
        if world.rank == 0:
            receive.Wait()
    return {"Sendrecv": lambda: world.Sendrecv(out, dest=peer, recvbuf=back, source=peer),
            "Send then Recv": ping_pong}


def _params(cfg):
    """The parameter count of the config's model (no TensorFlow needed)."""
    from ffnbench.model.network import param_count
    return param_count(cfg["model"]["depth"], cfg["model"]["features"])


def _gradient(cfg):
    """The config's model's per-variable gradient shapes, as tensors of ones."""
    import tensorflow as tf
    from ffnbench.model.api import FFNModel
    m = cfg["model"]
    return [tf.ones_like(v) for v in FFNModel(m["fov"], m["depth"], m["features"]).variables]


def mpi_allreduce_main(cfg):
    """One rank: mpi_allreduce's own exchange, as it trains."""
    from ffnbench import strategies
    world = control.init_world()
    ways = strategies.get("mpi_allreduce").exchange_benchmarks(world, _gradient(cfg))
    _report(world, {"mpi_allreduce (Iallreduce + bounded wait)": timed_median(world, ways["float32"])})


#: allreduce's exchange option values, as commbench names them
HOROVOD_WAY_NAMES = {"per_variable": "per variable", "grouped": "grouped_allreduce", "flat": "one flat buffer",
                     "flat_eager": "one flat buffer, eager"}


def horovod_main(cfg):
    """One rank: allreduce's own ways of all-reducing the gradient (built as training builds them),
    under the Horovod settings in the environment; a 4-byte all-reduce (Horovod's floor) and the same
    tf.function without Horovod (TF's dispatch)."""
    from ffnbench import strategies
    world = control.init_world()
    grads = _gradient(cfg)
    ways = strategies.get("allreduce").exchange_benchmarks(world, grads)
    import horovod.tensorflow as hvd
    import tensorflow as tf
    flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
    floors = {
        "4 bytes": tf.function(lambda: hvd.allreduce(grads[-1][:1], op=hvd.Average)),
        "no Horovod": tf.function(lambda: [tf.identity(g) for g in grads]),
        "4 bytes, eager": lambda: hvd.allreduce(flat[:1], op=hvd.Average),  # eager ops, no tf.function
        "no Horovod, eager": lambda: tf.identity(flat)}
    results = {}
    for name, exchange in {**{HOROVOD_WAY_NAMES[w]: call for w, call in ways.items()}, **floors}.items():
        exchange()  # trace
        results[name] = timed_median(world, exchange)
    hvd.shutdown()
    _report(world, results)


def ps_main(cfg):
    """Ranks 0 (server) and 1 (worker): the push + pull round trip of the whole vector through our
    PS protocol and plain MPI's round trips of the same bytes, in interleaved blocks; the server's
    optimizer step on the vector, timed apart."""
    from ffnbench import strategies
    from ffnbench.bench.run.context import training_settings
    world = control.init_world()
    params = _params(cfg)
    settings = training_settings(cfg)
    ps = strategies.get("ps_async")
    raw = raw_round_trips(world, params)
    times = {**{f"raw {way}": [] for way in raw}, PS_ROUND_TRIP: []}
    for _ in range(P2P_BLOCKS):
        for way, call in raw.items():
            times[f"raw {way}"] += timed(world, call, P2P_BLOCK)
        times[PS_ROUND_TRIP] += ps.round_trip_times(world, settings, params, P2P_BLOCK)[SKIPPED:]
    apply_s = ps.measure_costs(settings, params)["server_apply_s_per_byte"] * 4 * params
    _report(world, {**{name: float(np.median(t)) for name, t in times.items()}, "server optimizer step": apply_s})


def link_main(cfg):
    """One rank per emulated node, in a ring: seconds of a `Sendrecv` of the gradient's bytes to the
    next node and from the one before, every node at once (each link busy both ways, as in a ring
    all-reduce); the slowest node's median."""
    from mpi4py import MPI
    world = control.init_world()
    out, back = np.ones(_params(cfg), np.float32), np.empty(_params(cfg), np.float32)
    after, before = (world.rank + 1) % world.size, (world.rank - 1) % world.size

    def call():
        world.Sendrecv(out, dest=after, recvbuf=back, source=before)
    call()  # TCP's slow start, outside the timing
    slowest = world.allreduce(float(np.median(timed(world, call, LINK_REPEATS))), op=MPI.MAX)
    _report(world, {"Sendrecv": slowest})


PARTS = {"mpi_allreduce": mpi_allreduce_main, "horovod": horovod_main, "ps": ps_main, "link": link_main}


def ranks_main(part, cfg):
    """One rank of the mpirun named by `part`: raw:WAY, or one of PARTS."""
    kind, _, way = part.partition(":")
    if kind == "raw":
        raw_main(_params(cfg), way)
    else:
        PARTS[kind](cfg)


def _run_ranks(ranks, argv, mca=None, env=None):
    """Launch one mpirun of commbench ranks; rank 0's results."""
    proc = processes.launch_ranks(ranks, argv, mca=mca, env_extra=env, stdout=subprocess.PIPE, text=True)
    return _result_of(proc, "commbench")


def _result_of(proc, what, timeout_s=600):
    """Rank 0's result line of a launched mpirun of commbench ranks."""
    status, out, _ = processes.finish(proc, timeout_s, what)
    lines = [ln for ln in (out or "").splitlines() if ln.startswith(RESULT)]
    if status != 0 or not lines:
        raise RuntimeError(f"{what}: ranks exited with status {status} and no result")
    return json.loads(lines[-1][len(RESULT):])


def _yields():
    for yield_when_idle in ("1", "0"):
        yield f"yield {'on' if yield_when_idle == '1' else 'off'}", {**processes.MCA_DEFAULTS,
                                                                     "mpi_yield_when_idle": yield_when_idle}


def measure(config_path, cfg, ranks, cli_command, rounds=ROUNDS):
    """Every mpirun commbench makes, `rounds` times over, interleaved (the machine's drift between
    mpiruns falls on every way alike); {section: {name: median over rounds}} and the parameter count."""
    def part(name, **kw):
        return _run_ranks(ranks if name != "ps" else 2, cli_command("commbench", config_path, "--ranks-part", name),
                          **kw)

    def one_round():
        raw, horovod = {}, {}
        for way in RAW_WAYS:
            for label, mca in _yields():
                raw[f"raw {way}, {label}"] = part(f"raw:{way}", mca=mca)[way]
        for setting, env in HOROVOD_SETTINGS.items():
            horovod[setting] = part("horovod", env=env)
        return {"raw": raw, "mpi_allreduce": part("mpi_allreduce"), "horovod": horovod,
                "ps": {label: part("ps", mca=mca) for label, mca in _yields()}}
    return median_of([one_round() for _ in tqdm(range(rounds), desc="commbench rounds", unit="round")]), _params(cfg)


def measure_link(config_path, cfg, link, cli_command, rounds=ROUNDS, nodes=2):
    """Raw MPI between `nodes` nodes of an emulated cluster whose links are shaped to `link` (None:
    unshaped), all sending at once (link_main), brought up for this and torn down after:
    {"seconds", "bits_per_s" (the slowest node's, each way), "link_bits_per_s", "setup_s", "nodes"}."""
    from ffnbench.bench.run import netcluster
    seconds = []
    with netcluster.Cluster("cbench", nodes, link) as cluster:
        for _ in tqdm(range(rounds), desc=f"link {link or 'unshaped'}", unit="round"):
            proc = processes.launch_on_cluster(cluster, [1] * nodes, cli_command("commbench", config_path, "--ranks-part",
                                                                            "link"), stdout=subprocess.PIPE, text=True)
            seconds.append(_result_of(proc, "commbench across the emulated link")["Sendrecv"])
    median = float(np.median(seconds))
    return {"seconds": median, "bits_per_s": 8 * 4 * _params(cfg) / median, "link_bits_per_s": cluster.link_bits_per_s,
            "setup_s": cluster.setup_s, "nodes": nodes}


def print_link(result, params, link):
    """Raw MPI's bandwidth over the emulated link, against the rate it is shaped to."""
    mbit = result["bits_per_s"] / 1e6
    between = "2 emulated nodes" if result["nodes"] == 2 else f"each of {result['nodes']} emulated nodes in a ring, all at once"
    line = (f"raw MPI Sendrecv of {params} float32 ({4 * params / 1e6:.2f} MB) each way between {between} "
            f"(set up in {result['setup_s']:.1f} s): {result['seconds'] * 1e3:.2f} ms, {mbit:.0f} Mbit/s each way"
            f"{' (the slowest node)' if result['nodes'] > 2 else ''}")
    if result["link_bits_per_s"]:
        line += f" = {result['bits_per_s'] / result['link_bits_per_s']:.3f} of the shaped {link}"
    else:
        line += " (unshaped)"
    print(line)


def median_of(results):
    """Nested {name: seconds} dicts of several rounds -> one, each leaf the median over the rounds."""
    first = results[0]
    if isinstance(first, dict):
        return {k: median_of([r[k] for r in results]) for k in first}
    return float(np.median(results))


def _row(name, seconds, best):
    print(f"  {name:66s} {seconds * 1e3:8.3f} ms   / best raw = {seconds / best:6.2f}")


def fastest_of(times):
    """(name, seconds) of the fastest way: the yardstick."""
    name = min(times, key=times.get)
    return name, times[name]


def print_table(results, params, ranks):
    """The measured exchanges as ratios to the fastest raw way; the names that beat it beyond noise."""
    raw, horovod = results["raw"], results["horovod"]
    best_name, best = fastest_of(raw)
    print(f"all-reduce of {params} float32 ({4 * params / 1e6:.2f} MB) over {ranks} ranks, median of "
          f"{REPEATS - SKIPPED} after a barrier in each mpirun, then over the rounds; the yardstick is the "
          f"fastest raw way ({best_name}):")
    ours = dict(results["mpi_allreduce"])
    for setting, times in horovod.items():
        ours.update({f"Horovod {way}, {setting}": times[way] for way in HOROVOD_WAY_NAMES.values()})
    for name, seconds in {**raw, **ours}.items():
        _row(name, seconds, best)
    fastest = min((name for name in ours if name.startswith("Horovod")), key=ours.get)
    setting = next(s for s in horovod if fastest.endswith(s))
    eager = ", eager" if "eager" in fastest else ""
    floor, dispatch = horovod[setting][f"4 bytes{eager}"], horovod[setting][f"no Horovod{eager}"]
    bytes_part = (f"{(ours[fastest] - floor) * 1e3:.3f} ms the bytes" if floor < ours[fastest] else
                  "nothing measurable the bytes (the 4-byte call took as long)")
    print(f"Horovod's best: {fastest} = {ours[fastest] / best:.2f}x raw. Of its {ours[fastest] * 1e3:.3f} ms, "
          f"{floor * 1e3:.3f} ms is what a 4-byte all-reduce costs the same way (the cycle, negotiation and op "
          f"dispatch; TF's {'op' if eager else 'call'} alone {dispatch * 1e3:.3f} ms) and {bytes_part}, which plain MPI moves in {best * 1e3:.3f} ms")
    low = [name for name, seconds in ours.items() if seconds / best < BELOW_RAW]

    print(f"parameter server, 1 server + 1 worker, the whole vector pushed and pulled; plain MPI's round trips "
          f"of the same bytes in the same mpirun, interleaved in {P2P_BLOCKS} blocks of {P2P_BLOCK}; medians, then "
          f"over the rounds; the yardstick is the fastest raw round trip of the same mpirun:")
    for label, ps in results["ps"].items():
        p2p_name, p2p = fastest_of({name: seconds for name, seconds in ps.items() if name.startswith("raw")})
        for name in [n for n in ps if n.startswith("raw")] + [PS_ROUND_TRIP]:
            _row(f"{name}, {label}", ps[name], p2p)
        if ps[PS_ROUND_TRIP] / p2p < BELOW_RAW:
            low.append(f"{PS_ROUND_TRIP}, {label}")
    ps = next(iter(results["ps"].values()))
    print(f"  server optimizer step on the vector (compute, apart): {ps['server optimizer step'] * 1e3:.3f} ms")
    if low:
        print(f"warning: {', '.join(low)} beat the best raw way by more than noise: the yardstick does not bound "
              f"them from below")
    return low
