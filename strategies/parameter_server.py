"""What every parameter-server strategy shares: the layout (servers first, then workers), the start
from rank 0's weights, a server or worker per rank, and the final parameters gathered on rank 0.

A PS strategy adds only its policy, as the server loop's hooks: `on_pull` (answer now or hold),
`on_push` (what a gradient does; the gradient is the worker's inbox, valid during the call only) and
`after_message` (release what may go on).
"""
import time

import numpy as np

from ffnbench.strategies import comm
from ffnbench.strategies.base import Final, Strategy, TrainingContext
from ffnbench.strategies.declare import LayoutError, Option, Traits
from ffnbench.strategies.numpy_optimizers import ShardUpdater
from ffnbench.strategies.ps_protocol import shard_bounds
from ffnbench.strategies.ps_server import ShardServer
from ffnbench.strategies.ps_worker import PSWorker


class ParameterServerStrategy(Strategy):
    traits = Traits(resumable=True)  # the workers' streams and the servers' shards, snapshotted together
    options = {"servers": Option(1, "the first `servers` ranks are parameter servers, the rest workers", at_least=1),
               "gradient_wire": comm.GRADIENT_WIRE,
               "straggle_s": Option([], "injected delay in seconds per worker per step, to study stragglers "
                                        "(recorded as wait_s)", items=float, at_least=0)}

    @classmethod
    def roles(cls, ranks, options):
        servers, straggle = options["servers"], options["straggle_s"]
        if ranks <= servers:
            raise LayoutError(f"strategy {cls.name} needs ranks > servers for at least one worker "
                              f"(got ranks={ranks}, servers={servers})")
        if straggle and len(straggle) != ranks - servers:
            raise LayoutError(f"config field strategy_options.straggle_s: must list one injected delay in seconds "
                              f"per worker (got {straggle!r} for {ranks - servers} workers)")
        return ["server"] * servers + ["worker"] * (ranks - servers)

    @classmethod
    def measure_costs(cls, settings, params, repeats=20):
        """Seconds per gradient byte of a server's clip + optimizer update (numpy, best of repeats)."""
        updater = ShardUpdater(settings.optimizer, params, settings.clip)
        w = np.zeros(params, np.float32)
        g = np.random.default_rng(0).normal(size=params).astype(np.float32)
        best = float("inf")
        for _ in range(repeats):
            grad = g.copy()
            t = time.perf_counter()
            updater.apply(w, grad, 1e-3)
            best = min(best, time.perf_counter() - t)
        return {"server_apply_s_per_byte": best / (4 * params)}

    @classmethod
    def round_trip_times(cls, world, settings, params, repeats):
        """Seconds of each of `repeats` step exchanges of all `params` through this protocol (the push
        that also pulls, and the parameters back), on ranks 0 (the server, answering at once and
        dropping gradients: no optimizer step) and 1 (the worker) of `world`; every rank returns rank
        1's figures (commbench's yardstick compares them)."""
        ctx = TrainingContext(settings=settings, layout=cls.resolve_layout(2, {}), rank=world.rank, comm=world,
                              recorder=_Unrecorded(), run_dir=".", model=None, make_stream=None)
        bounds = shard_bounds(params, 1)
        own_core = not comm.oversubscribed(world)
        times = np.zeros(repeats)
        if world.rank == 0:
            hooks = _TakeWithoutApplying()
            hooks.server = ShardServer(ctx, bounds, np.zeros(params, np.float32), own_core)
            hooks.server.serve(hooks)
        else:
            worker = PSWorker(ctx, bounds)
            slot, grad = worker.slots[0], np.ones(params, np.float32)
            comm.wait_all(world, worker.pull(slot), settings.timeout_s, "the parameters")
            for i in range(repeats):
                start = time.perf_counter()
                receives = worker.push(grad, slot)
                comm.wait_all(world, receives, settings.timeout_s, "the parameters")
                times[i] = time.perf_counter() - start
            worker.say_done()
        return comm.broadcast(world, times, settings.timeout_s, "the worker's round trips", root=1).tolist()

    def setup(self):
        ctx = self.ctx
        o = ctx.layout.options
        bounds = shard_bounds(self.model.num_params, o["servers"])
        weights = comm.broadcast(self.comm, self.model.get_flat(), ctx.settings.timeout_s, "initial weights")
        # the final shards travel on their own communicator: a server still serving never takes them
        self.final_comm = comm.duplicate(self.comm, ctx.settings.timeout_s, "every rank to set up")
        own_core = not comm.oversubscribed(self.comm)
        if ctx.role == "server":
            self.server = ShardServer(ctx, bounds, weights, own_core, o["gradient_wire"])
        else:
            straggle = o["straggle_s"]
            delay = straggle[ctx.layout.worker_ranks.index(ctx.rank)] if straggle else 0.0
            self.worker = PSWorker(ctx, bounds, o.get("prefetch", False), delay, o["gradient_wire"])

    def train(self):
        if self.ctx.role == "server":
            self.server.serve(self)
        else:
            self.worker.work(self.model)

    def snapshot(self, step):
        self.worker.snapshot(step)

    def load_state(self, arrays):
        if self.ctx.role == "server":
            self.server.load_state(arrays)

    def pause_begins(self):
        self.worker.pause()

    def pause_ends(self, led):
        """Server 0 ends the pause, so that a lost worker holds no one up."""
        return self.worker.resume(led)

    def on_pull(self, worker):
        raise NotImplementedError

    def on_push(self, worker, read, grad):
        raise NotImplementedError

    def after_message(self):
        """Called after every message; by default nothing is waiting to be released."""

    def waits_on_server(self, worker):
        """Whether `worker` is silent because the server holds its pull back (so not lost)."""
        return False

    def finish(self):
        if self.ctx.role != "server":
            return Final(None, None)
        final = self.server.gather_final(self.final_comm)
        if final is None:
            return Final(None, None)
        # a worker lost before the checkpoint a run resumed from runs again (with no steps left)
        return Final(final, self.server.version, tuple(sorted(self.server.lost - self.server.finished)))


class _Unrecorded:
    """The records of a timed round trip: none (nothing is trained)."""

    def server(self, *args, **kwargs):
        pass

    def lost(self, *args, **kwargs):
        pass


class _TakeWithoutApplying:
    """Server hooks of a timed round trip: answer every pull at once, drop every gradient."""
    server = None

    def on_pull(self, worker):
        self.server.answer_pull(worker)

    def on_push(self, worker, read, grad):
        pass

    def after_message(self):
        pass

    def waits_on_server(self, worker):
        return False
