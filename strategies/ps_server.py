"""One parameter-server rank: its shard, its optimizer, and the message loop every PS strategy shares.

The loop receives PULL, PUSH and DONE messages as they come and hands them to the strategy's hooks
(`on_pull`, `on_push`, `after_message`): the strategy decides when a pull is answered and what a
gradient does; the server only moves buffers, applies and records.
"""
import time

import numpy as np

from ffnbench.strategies import comm
from ffnbench.strategies.numpy_optimizers import ShardUpdater
from ffnbench.strategies.ps_protocol import DONE, FINAL, GRAD, PARAMS, PULL, PUSH, VERSION


class ShardServer:
    def __init__(self, ctx, bounds, weights):
        self.ctx, self.comm, self.bounds = ctx, ctx.comm, bounds
        lo, hi = bounds[ctx.rank]
        self.shard = weights[lo:hi].copy()
        self.updater = ShardUpdater(ctx.settings.optimizer, hi - lo, ctx.settings.clip)
        self.version = 0      # updates applied to this shard
        self.dropped = 0      # gradients a strategy chose not to apply
        self.finished = set()  # workers that said DONE
        self.sends = []       # answers still in flight

    def serve(self, hooks):
        """Run until every worker is done, then record this server's totals."""
        start_wall, start_cpu = time.time(), time.process_time()
        token = np.empty(1, np.int64)
        while len(self.finished) < self.ctx.layout.workers:
            worker, tag = self.next_message()
            if tag == PULL:
                self.recv(token, worker, PULL, "a pull request")
                hooks.on_pull(worker)
            elif tag == PUSH:
                self.recv(token, worker, PUSH, f"the gradient header from rank {worker}")
                grad = np.empty_like(self.shard)
                self.recv(grad, worker, GRAD, f"the gradient from rank {worker}")
                hooks.on_push(worker, int(token[0]), grad)
            elif tag == DONE:
                self.recv(token, worker, DONE, "a done message")
                self.finished.add(worker)
            else:
                comm.fail(self.comm, f"unexpected message tag {tag} from rank {worker}")
            hooks.after_message()
        self.ctx.recorder.server(self.version, self.dropped, time.time() - start_wall,
                                 time.process_time() - start_cpu)

    def next_message(self):
        """Wait for any message, sleeping from the start so an idle server stays off the CPU."""
        found = []

        def arrived():
            self.sends = [r for r in self.sends if not r.Test()]
            found[:] = [comm.probe_any(self.comm)]
            return found[0] is not None
        comm.poll(self.comm, arrived, self.ctx.settings.timeout_s, "any worker", spin_s=0.0)
        return found[0]

    def recv(self, buf, source, tag, what):
        comm.wait(self.comm, self.comm.Irecv(buf, source=source, tag=tag), self.ctx.settings.timeout_s, what)

    def answer_pull(self, worker):
        self.sends.append(self.comm.Isend(np.array([self.version], np.int64), dest=worker, tag=VERSION))
        self.sends.append(self.comm.Isend(self.shard.copy(), dest=worker, tag=PARAMS))

    def record(self, worker, read, lr):
        """Record a gradient from `worker`, computed on version `read`, going onto this version."""
        self.ctx.recorder.update(worker, read, self.version, lr=lr)

    def apply(self, grad, lr):
        self.updater.apply(self.shard, grad, lr)
        self.version += 1

    def gather_final(self):
        """Every server's shard to rank 0; the whole vector there, None elsewhere."""
        timeout = self.ctx.settings.timeout_s
        comm.wait_all(self.comm, self.sends, timeout, "workers to take the parameters")
        if self.ctx.rank != 0:
            comm.wait(self.comm, self.comm.Isend(self.shard, dest=0, tag=FINAL), timeout,
                      "rank 0 to take the final parameters")
            return None
        final = np.empty(self.bounds[-1][1], np.float32)
        lo, hi = self.bounds[0]
        final[lo:hi] = self.shard
        reqs = [self.comm.Irecv(final[lo:hi], source=s, tag=FINAL)
                for s, (lo, hi) in enumerate(self.bounds) if s != 0]
        comm.wait_all(self.comm, reqs, timeout, "the final shards")
        return final
