"""A parameter-server worker: pull the shards, compute a gradient, push it back, until its steps are done.

A push also asks for the next step's parameters (ps_protocol), so a step is one push and one answer
per shard. With prefetch the next pull overlaps this step's compute instead, so the gradient is
computed on older parameters; the servers measure that extra staleness.
"""
import time

import numpy as np

from ffnbench.strategies import comm
from ffnbench.strategies.ps_protocol import (DONE, GRADIENT, HEADER, PARAMS, PAUSE, PULL, PUSH, READY, RESUME, SAVED,
                                              SNAPSHOT)


class Slot:
    """Where one step's parameters arrive: the vector, each shard's version, and persistent receives
    into them (posted again for each pull, so nothing is allocated or built per step). A server sends
    the version, then the values, with one tag; posted in that order, the receives take them in it."""

    def __init__(self, comm_, bounds):
        self.params = np.empty(bounds[-1][1], np.float32)
        self.versions = np.zeros(len(bounds), np.int64)
        self.receives = [comm_.Recv_init(part, source=s, tag=PARAMS) for s, (lo, hi) in enumerate(bounds)
                         for part in (self.versions[s:s + 1], self.params[lo:hi])]

    def expect(self):
        """Post the receives of every shard's answer; the requests."""
        from mpi4py import MPI
        MPI.Prequest.Startall(self.receives)
        return list(self.receives)

    def close(self):
        for request in self.receives:
            request.Free()


class PSWorker:
    def __init__(self, ctx, bounds, prefetch=False, straggle_s=0.0, wire="float32"):
        self.ctx, self.comm, self.bounds = ctx, ctx.comm, bounds
        self.prefetch, self.straggle_s, self.wire = prefetch, straggle_s, wire
        # with prefetch one slot is read while the next step's parameters arrive in the other
        self.slots = [Slot(self.comm, bounds) for _ in range(1 + prefetch)]
        self.headers = np.zeros((len(bounds), HEADER), np.int64)  # a push's (version read, pull) per shard
        self.header_sends = [self.comm.Send_init(self.headers[s], dest=s, tag=PUSH) for s in range(len(bounds))]

    def pull(self, slot):
        """Post receives for every shard into `slot`, then ask; returns the requests."""
        reqs = slot.expect()
        reqs += [self.comm.Isend(np.zeros(1, np.int64), dest=s, tag=PULL) for s in range(len(self.bounds))]
        return reqs

    def push(self, grad, versions, pull_into=None):
        """Send the gradient computed on `versions`; with pull_into (a Slot) the same message asks for
        the next parameters, whose receives are returned."""
        grad = comm.to_wire(grad, self.wire)
        self.headers[:, 0] = versions
        self.headers[:, 1] = pull_into is not None
        reqs = pull_into.expect() if pull_into is not None else []
        sends = []
        for s, (lo, hi) in enumerate(self.bounds):
            self.header_sends[s].Start()
            sends += [self.header_sends[s], self.comm.Isend(grad[lo:hi], dest=s, tag=GRADIENT)]
        comm.wait_all(self.comm, sends, self.ctx.settings.timeout_s, "a server to take the gradient")
        return reqs

    def say_done(self):
        reqs = [self.comm.Isend(np.zeros(1, np.int64), dest=s, tag=DONE) for s in range(len(self.bounds))]
        comm.wait_all(self.comm, reqs, self.ctx.settings.timeout_s, "a server to take the done message")
        for request in self.header_sends:
            request.Free()
        for slot in self.slots:
            slot.close()

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
        pending = None
        for step in range(ctx.start_step, steps):
            with rec.phase("data"):
                batch = ctx.stream.next_batch()
            with rec.phase("comm"):
                slot = self.slots[step % len(self.slots)]
                reqs = pending if pending is not None else self.pull(slot)
                comm.wait_all(self.comm, reqs, ctx.settings.timeout_s, "the parameters from the servers")
            if self.straggle_s:
                with rec.phase("wait"):  # injected straggling, between reading and pushing
                    time.sleep(self.straggle_s)
            with rec.phase("compute"):
                model.set_flat(slot.params)
                if self.prefetch:
                    pending = self.pull(self.slots[(step + 1) % 2]) if step + 1 < steps else None
                grad, loss, logits = model.flat_gradients(batch)
            read = int(slot.versions[0])  # before the push: its answer lands in the same slot
            with rec.phase("comm"):
                if self.prefetch or step + 1 == steps:
                    self.push(grad, slot.versions)
                else:
                    pending = self.push(grad, slot.versions, pull_into=self.slots[0])
            with rec.phase("compute"):
                ctx.stream.feedback(logits)
            rec.step(step, len(batch), loss, model_version=read)
        self.say_done()
