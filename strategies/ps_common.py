"""Parameter-server plumbing shared by ps_async and ps_sync.

The first `servers` ranks hold contiguous, balanced slices of the flat float32 parameter vector;
the other ranks are workers. Everything on the wire is a numpy buffer (Isend/Irecv/Iprobe):

  worker -> server  PULL  int64[1]            (answered with VERSION int64[1] + PARAMS float32[shard])
  worker -> server  PUSH  int64[2] [version read, worker step], then GRAD float32[shard]
  worker -> server  DONE  int64[1]
  server -> rank 0  FINAL float32[shard]       (the final parameters, for checkpoint and evaluation)
"""
import time

import numpy as np
from mpi4py import MPI

from strategies.base import LayoutError, Strategy
from strategies.mpi_wait import poll, wait, wait_all
from strategies.ps_optimizer import ShardUpdater

PULL, VERSION, PARAMS, PUSH, GRAD, DONE, FINAL = range(1, 8)


def shard_bounds(size, servers):
    """Start/stop of each server's contiguous slice; sizes differ by at most one."""
    edges = np.linspace(0, size, servers + 1).round().astype(int)
    return list(zip(edges[:-1], edges[1:]))


class ParameterServerStrategy(Strategy):
    options = {"servers": 1, "straggle_s": []}

    @classmethod
    def roles(cls, ranks, options):
        servers, straggle = options["servers"], options["straggle_s"]
        if not isinstance(servers, int) or servers < 1:
            raise LayoutError(f"strategy_options.servers must be an integer >= 1 (got {servers!r})")
        if ranks <= servers:
            raise LayoutError(f"strategy {cls.name} needs ranks > servers for at least one worker "
                              f"(got ranks={ranks}, servers={servers})")
        if not isinstance(straggle, list) or straggle and len(straggle) != ranks - servers:
            raise LayoutError(f"strategy_options.straggle_s must list one injected delay in seconds per "
                              f"worker (got {straggle!r} for {ranks - servers} workers)")
        return ["server"] * servers + ["worker"] * (ranks - servers)

    def setup(self):
        self.servers = self.opts["servers"]
        self.bounds = shard_bounds(self.model.num_params, self.servers)
        weights = self.model.get_flat()
        wait(self.comm, self.comm.Ibcast(weights, root=0), self.run.timeout, "initial weights")
        if self.run.role == "server":
            lo, hi = self.bounds[self.comm.rank]
            self.shard = weights[lo:hi].copy()
            t = self.run.cfg["train"]
            self.updater = ShardUpdater(t["optimizer"], hi - lo, t["clip"])
            self.version = 0
            self.sends = []

    def loop(self):
        if self.run.role == "server":
            start_wall, start_cpu = time.time(), time.process_time()
            self.serve()
            wall, cpu = time.time() - start_wall, time.process_time() - start_cpu
            self.run.recorder.write({"kind": "server", "rank": self.comm.rank, "time": self.run.recorder.now(),
                                     "updates": self.version, "wall_s": wall, "cpu_s": cpu,
                                     "cpu_share": cpu / wall if wall else 0.0})
        else:
            self.work()

    # ---- worker side ----
    def pull(self, params, versions):
        """Post receives for every shard into `params`/`versions`, then ask; returns the requests."""
        reqs = []
        for s, (lo, hi) in enumerate(self.bounds):
            reqs.append(self.comm.Irecv(versions[s:s + 1], source=s, tag=VERSION))
            reqs.append(self.comm.Irecv(params[lo:hi], source=s, tag=PARAMS))
        for s in range(self.servers):
            reqs.append(self.comm.Isend(np.zeros(1, np.int64), dest=s, tag=PULL))
        return reqs

    def push(self, grad, versions, step):
        reqs = []
        for s, (lo, hi) in enumerate(self.bounds):
            reqs.append(self.comm.Isend(np.array([versions[s], step], np.int64), dest=s, tag=PUSH))
            reqs.append(self.comm.Isend(grad[lo:hi], dest=s, tag=GRAD))
        wait_all(self.comm, reqs, self.run.timeout, "a server to take the gradient")

    def say_done(self):
        reqs = [self.comm.Isend(np.zeros(1, np.int64), dest=s, tag=DONE) for s in range(self.servers)]
        wait_all(self.comm, reqs, self.run.timeout, "a server to take the done message")

    # ---- server side ----
    def next_message(self):
        """Wait for any message, sleeping from the start so an idle server stays off the CPU."""
        status = MPI.Status()

        def arrived():
            self.sends = [r for r in self.sends if not r.Test()]
            return self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
        poll(self.comm, arrived, self.run.timeout, "any worker", spin_s=0.0)
        return status.Get_source(), status.Get_tag()

    def recv(self, buf, source, tag, what):
        wait(self.comm, self.comm.Irecv(buf, source=source, tag=tag), self.run.timeout, what)

    def answer_pull(self, worker):
        self.sends.append(self.comm.Isend(np.array([self.version], np.int64), dest=worker, tag=VERSION))
        self.sends.append(self.comm.Isend(self.shard.copy(), dest=worker, tag=PARAMS))

    def receive_push(self, worker):
        header = np.empty(2, np.int64)
        self.recv(header, worker, PUSH, f"the gradient header from rank {worker}")
        grad = np.empty_like(self.shard)
        self.recv(grad, worker, GRAD, f"the gradient from rank {worker}")
        return int(header[0]), int(header[1]), grad

    def apply(self, grad, lr):
        self.updater.apply(self.shard, grad, lr)
        self.version += 1

    def record_update(self, worker, read_version, staleness, **extra):
        self.run.recorder.write({"kind": "update", "rank": self.comm.rank, "worker": worker,
                                 "version": self.version, "read": read_version, "staleness": staleness,
                                 "time": self.run.recorder.now(), **extra})

    def serve(self):
        raise NotImplementedError

    def updates(self):
        return self.version if self.run.role == "server" else None

    def work(self):
        """Pull, compute, push. With prefetch the next pull overlaps this step's compute, so the
        gradient is computed on older parameters; the servers measure that extra staleness."""
        run, rec, model = self.run, self.run.recorder, self.model
        prefetch = self.opts.get("prefetch", False)
        n = model.num_params
        straggle = self.opts["straggle_s"]
        delay = straggle[run.worker_ranks.index(self.comm.rank)] if straggle else 0.0
        buffers = [(np.empty(n, np.float32), np.zeros(self.servers, np.int64)) for _ in range(1 + prefetch)]
        pending = None
        for step in range(run.steps):
            with rec.phase("data"):
                batch = run.stream.next_batch()
            with rec.phase("comm"):
                params, versions = buffers[step % len(buffers)]
                reqs = pending if pending is not None else self.pull(params, versions)
                wait_all(self.comm, reqs, run.timeout, "the parameters from the servers")
            if delay:
                with rec.phase("wait"):  # injected straggling, between reading and pushing
                    time.sleep(delay)
            with rec.phase("compute"):
                model.set_flat(params)
                if prefetch:
                    pending = self.pull(*buffers[(step + 1) % 2]) if step + 1 < run.steps else None
                grad, loss, logits = model.flat_gradients(batch)
            with rec.phase("comm"):
                self.push(grad, versions, step)
            with rec.phase("compute"):
                run.stream.feedback(logits)
            rec.step(step, len(batch), loss, version=int(versions[0]))
            run.after_step(step, fovs_total=int(versions[0] + 1) * len(batch), global_step=int(versions[0]))
        self.say_done()

    def finish(self):
        """Servers send their shards to rank 0, which returns the whole vector."""
        if self.run.role == "server":
            wait_all(self.comm, self.sends, self.run.timeout, "workers to take the parameters")
            if self.comm.rank != 0:
                wait(self.comm, self.comm.Isend(self.shard, dest=0, tag=FINAL), self.run.timeout,
                     "rank 0 to take the final parameters")
                return None
            final = np.empty(self.model.num_params, np.float32)
            lo, hi = self.bounds[0]
            final[lo:hi] = self.shard
            reqs = [self.comm.Irecv(final[lo:hi], source=s, tag=FINAL)
                    for s, (lo, hi) in enumerate(self.bounds) if s != 0]
            wait_all(self.comm, reqs, self.run.timeout, "the final shards")
            return final
        return None
