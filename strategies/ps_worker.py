"""A parameter-server worker: pull the shards, compute a gradient, push it back, until its steps are done.

A push also asks for the next step's parameters (ps_protocol), so a step is one push and one answer
per shard. With prefetch the next pull overlaps this step's compute instead, so the gradient is
computed on older parameters; the servers measure that extra staleness.
"""
import time

import numpy as np

from ffnbench.strategies import comm
from ffnbench.strategies.ps_protocol import (DONE, PARAMS, PAUSE, PULL, PUSH, PUSH_PULL, READY, RESUME, SAVED,
                                              SNAPSHOT, as_bytes, number, versioned)


class Slot:
    """Where one step's parameters arrive: each shard's answer [version | values] in a buffer of its
    own, and a persistent receive into each (started again for each pull, so nothing is allocated or
    built per step)."""

    def __init__(self, comm_, bounds):
        answers = [versioned(hi - lo) for lo, hi in bounds]
        self.buffers = [buffer for buffer, _, _ in answers]
        self.version_views = [version for _, version, _ in answers]
        self.shards = [values for _, _, values in answers]
        self.receives = [comm_.Recv_init(buffer, source=s, tag=PARAMS) for s, buffer in enumerate(self.buffers)]
        from mpi4py import MPI
        self.start_all = MPI.Prequest.Startall

    @property
    def versions(self):
        """The version of each shard in this slot."""
        return [int(version[0]) for version in self.version_views]

    @property
    def params(self):
        """The whole vector: the shard itself with one server, else the shards joined (a copy)."""
        return self.shards[0] if len(self.shards) == 1 else np.concatenate(self.shards)

    def expect(self):
        """Post the receives of every shard's answer; the requests."""
        self.start_all(self.receives)
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
        size = np.dtype(comm.wire_dtype(wire)).itemsize  # each shard's bytes in a gradient on the wire
        self.byte_bounds = [(size * lo, size * hi) for lo, hi in bounds]

    def tell_servers(self, tag, value=0):
        """Send every server a small message (ps_protocol); the requests."""
        return [self.comm.Isend(number(value), dest=s, tag=tag) for s in range(len(self.bounds))]

    def pull(self, slot):
        """Post receives for every shard into `slot`, then ask; returns the requests."""
        reqs = slot.expect()
        comm.wait_all(self.comm, self.tell_servers(PULL), self.ctx.settings.timeout_s, "a server to take the pull")
        return reqs

    def push(self, grad, pull_into=None):
        """Send the gradient; with pull_into (a Slot) the same message asks for the next parameters,
        whose receives are returned. They are posted once the gradient is sent, while the server
        applies it: the answer cannot come before that, and MPI matches a receive posted late."""
        wire = as_bytes(comm.to_wire(grad, self.wire))
        tag = PUSH if pull_into is None else PUSH_PULL
        sends = [self.comm.Isend(wire[lo:hi], dest=s, tag=tag) for s, (lo, hi) in enumerate(self.byte_bounds)]
        comm.wait_all(self.comm, sends, self.ctx.settings.timeout_s, "a server to take the gradient")
        return pull_into.expect() if pull_into is not None else []

    def say_done(self):
        comm.wait_all(self.comm, self.tell_servers(DONE), self.ctx.settings.timeout_s,
                      "a server to take the done message")
        for slot in self.slots:
            slot.close()

    def snapshot(self, step):
        """Ask every server to save its shard for the checkpoint after `step` steps; wait until saved."""
        reqs = self.tell_servers(SNAPSHOT, step)
        reqs += [self.comm.Irecv(np.zeros(1, np.int64), source=s, tag=SAVED) for s in range(len(self.bounds))]
        comm.wait_all(self.comm, reqs, self.ctx.settings.timeout_s, "the servers to save their checkpoint")

    def pause(self):
        """Tell every server this worker stops for a pause: its silence until its next message is no loss."""
        comm.wait_all(self.comm, self.tell_servers(PAUSE), self.ctx.settings.timeout_s, "a server to take the pause")

    def resume(self, led):
        """This worker's part of the pause is done (led: it did the pause's work); wait until server 0
        lets every live worker go (bounded: server 0 gives up on a leader silent for the run's timeout),
        and return the worker that leads the next pause."""
        timeout = self.ctx.settings.timeout_s
        if led:
            comm.wait(self.comm, self.comm.Isend(number(0), dest=0, tag=READY), timeout,
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
            read = slot.versions[0]  # before the push: its answer lands in the same slot
            with rec.phase("comm"):
                if self.prefetch or step + 1 == steps:
                    self.push(grad)
                else:
                    pending = self.push(grad, pull_into=self.slots[0])
            with rec.phase("compute"):
                ctx.stream.feedback(logits)
            rec.step(step, len(batch), loss, model_version=read)
        self.say_done()
