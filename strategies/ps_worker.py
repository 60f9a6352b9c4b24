"""A parameter-server worker: pull the shards, compute a gradient, push it back, until its steps are done.

A push also asks for the next step's parameters (ps_protocol), so a step exchanges one message each
way per shard. With prefetch the next pull overlaps this step's compute instead, so the gradient is
computed on older parameters; the servers measure that extra staleness.
"""
import time

import numpy as np

from ffnbench.strategies import comm
from ffnbench.strategies.ps_protocol import DONE, PARAMS, PAUSE, PULL, PUSH, READY, RESUME, SAVED, SNAPSHOT


class PSWorker:
    def __init__(self, ctx, bounds, prefetch=False, straggle_s=0.0, wire="float32"):
        self.ctx, self.comm, self.bounds = ctx, ctx.comm, bounds
        self.prefetch, self.straggle_s, self.wire = prefetch, straggle_s, wire

    def pull(self, params, versions):
        """Post receives for every shard into `params`/`versions`, then ask; returns the requests."""
        reqs = self.receive(params, versions)
        reqs += [self.comm.Isend(np.zeros(1, np.int64), dest=s, tag=PULL) for s in range(len(self.bounds))]
        return reqs

    def receive(self, params, versions):
        return [comm.irecv_parts(self.comm, [versions[s:s + 1], params[lo:hi]], s, PARAMS)
                for s, (lo, hi) in enumerate(self.bounds)]

    def push(self, grad, versions, pull_into=None):
        """Send the gradient computed on `versions`; with pull_into=(params, versions) the same
        message asks for the next parameters, whose receives are returned."""
        grad = comm.to_wire(grad, self.wire)
        headers = [np.array([read, pull_into is not None], np.int64) for read in versions]
        reqs = self.receive(*pull_into) if pull_into is not None else []
        sends = [comm.isend_parts(self.comm, [headers[s], grad[lo:hi]], s, PUSH)
                 for s, (lo, hi) in enumerate(self.bounds)]
        comm.wait_all(self.comm, sends, self.ctx.settings.timeout_s, "a server to take the gradient")
        return reqs

    def say_done(self):
        reqs = [self.comm.Isend(np.zeros(1, np.int64), dest=s, tag=DONE) for s in range(len(self.bounds))]
        comm.wait_all(self.comm, reqs, self.ctx.settings.timeout_s, "a server to take the done message")

    def snapshot(self, step):
        """Ask every server to save its shard for the checkpoint after `step` steps; wait until saved."""
        reqs = [self.comm.Isend(np.array([step], np.int64), dest=s, tag=SNAPSHOT) for s in range(len(self.bounds))]
        reqs += [self.comm.Irecv(np.zeros(1, np.int64), source=s, tag=SAVED) for s in range(len(self.bounds))]
        comm.wait_all(self.comm, reqs, self.ctx.settings.timeout_s, "the servers to save their checkpoint")

    def pause(self):
        """Tell every server this worker stops for a pause: its silence until its next message is no loss."""
        reqs = [self.comm.Isend(np.zeros(1, np.int64), dest=s, tag=PAUSE) for s in range(len(self.bounds))]
        comm.wait_all(self.comm, reqs, self.ctx.settings.timeout_s, "a server to take the pause")

    def resume(self, led):
        """This worker's part of the pause is done (led: it did the pause's work); wait until server 0
        lets every live worker go (bounded: server 0 gives up on a leader silent for the run's timeout),
        and return the worker that leads the next pause."""
        timeout = self.ctx.settings.timeout_s
        if led:
            comm.wait(self.comm, self.comm.Isend(np.zeros(1, np.int64), dest=0, tag=READY), timeout,
                      "server 0 to take the end of the pause")
        leader = np.zeros(1, np.int64)
        comm.wait(self.comm, self.comm.Irecv(leader, source=0, tag=RESUME), 2 * timeout,
                  "the other workers to finish the pause")
        return int(leader[0])

    def work(self, model):
        ctx, rec = self.ctx, self.ctx.recorder
        steps = ctx.settings.steps
        buffers = [(np.empty(model.num_params, np.float32), np.zeros(len(self.bounds), np.int64))
                   for _ in range(1 + self.prefetch)]
        pending = None
        for step in range(ctx.start_step, steps):
            with rec.phase("data"):
                batch = ctx.stream.next_batch()
            with rec.phase("comm"):
                params, versions = buffers[step % len(buffers)]
                reqs = pending if pending is not None else self.pull(params, versions)
                comm.wait_all(self.comm, reqs, ctx.settings.timeout_s, "the parameters from the servers")
            if self.straggle_s:
                with rec.phase("wait"):  # injected straggling, between reading and pushing
                    time.sleep(self.straggle_s)
            with rec.phase("compute"):
                model.set_flat(params)
                if self.prefetch:
                    pending = self.pull(*buffers[(step + 1) % 2]) if step + 1 < steps else None
                grad, loss, logits = model.flat_gradients(batch)
            read = int(versions[0])  # before the push: its answer lands in the same buffers
            with rec.phase("comm"):
                if self.prefetch or step + 1 == steps:
                    self.push(grad, versions)
                else:
                    pending = self.push(grad, versions, pull_into=buffers[0])
            with rec.phase("compute"):
                ctx.stream.feedback(logits)
            rec.step(step, len(batch), loss, model_version=read)
        self.say_done()
