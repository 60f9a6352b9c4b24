"""One parameter-server rank: its shard, its optimizer, and the message loop every PS strategy shares.

The loop receives PULL, PUSH and DONE messages as they come and hands them to the strategy's hooks
(`on_pull`, `on_push`, `after_message`): the strategy decides when a pull is answered and what a
gradient does; the server only moves buffers, applies and records. A PUSH that also pulls is handed
on as a push, then a pull, as if they had come one after the other.
"""
import time

import numpy as np

from ffnbench.strategies import comm
from ffnbench.strategies.numpy_optimizers import ShardUpdater
from ffnbench.strategies.ps_protocol import (DONE, FINAL, PARAMS, PARAMS_HEADER, PAUSE, PULL, PUSH, PUSH_HEADER,
                                              READY, RESUME, SAVED, SNAPSHOT)


class ShardServer:
    def __init__(self, ctx, bounds, weights, own_core, wire="float32"):
        """own_core: no other rank shares this server's core (comm.oversubscribed is false);
        wire: how gradients arrive (comm.GRADIENT_WIRES)."""
        self.ctx, self.comm, self.bounds = ctx, ctx.comm, bounds
        lo, hi = bounds[ctx.rank]
        self.shard = weights[lo:hi].copy()
        self.wire, self.wire_dtype = wire, comm.wire_dtype(wire)
        self.wire_bytes = np.dtype(self.wire_dtype).itemsize
        self.updater = ShardUpdater(ctx.settings.optimizer, hi - lo, ctx.settings.clip)
        self.version = 0      # updates applied to this shard
        self.dropped = 0      # gradients a strategy chose not to apply
        self.finished = set()  # workers that said DONE
        self.lost = set()     # workers gone silent, whose work the others carry on (survives_lost_workers)
        # a worker is lost after half the run's wait bound, so its peers' own bounded waits (for the
        # answers this server owes them) outlast the detection
        self.lost_after = ctx.settings.timeout_s / 2
        self.sends = []       # (worker, request) of answers still in flight
        self.heard = {w: time.monotonic() for w in ctx.layout.worker_ranks}  # last message from each
        self.pushes = {w: 0 for w in ctx.layout.worker_ranks}
        self.snapshot_asks = {}  # {worker: step} of the workers waiting for a checkpoint
        self.paused = set()   # workers in a pause (PAUSE received, nothing since)
        self.leader = ctx.layout.worker_ranks[0]  # the worker that leads the pauses (server 0's view)
        self.leader_ready = False
        # a server with a core of its own answers at once (busy-polling, as MPI does); one sharing its
        # cores with workers sleeps between probes, which delays each answer by up to 1 ms
        self.spin_s = float("inf") if own_core else 0.0

    def serve(self, hooks):
        """Run until every worker is done, then record this server's totals."""
        start_wall, start_cpu = time.time(), time.process_time()
        token = np.empty(1, np.int64)
        self.heard = {w: time.monotonic() for w in self.heard}  # set-up is over: silence counts from now
        while len(self.finished | self.lost) < self.ctx.layout.workers:
            found = self.next_message(hooks)
            if found is None:
                self.snapshot_if_asked()
                self.resume_if_ready()
                continue  # a worker was declared lost
            worker, tag = found
            self.heard[worker] = time.monotonic()
            if tag in (PULL, PUSH, DONE) and worker in self.paused:
                self.pause_is_over()
            if tag == PULL:
                self.recv(token, worker, PULL, "a pull request")
                hooks.on_pull(worker)
            elif tag == PUSH:
                message = np.empty(PUSH_HEADER + self.shard.size * self.wire_bytes, np.uint8)
                if self.recv_or_lose(message, worker, PUSH, f"the gradient from rank {worker}", hooks):
                    read, pull = message[:PUSH_HEADER].view(np.int64)
                    hooks.on_push(worker, int(read), comm.from_wire(message[PUSH_HEADER:].view(self.wire_dtype),
                                                                     self.wire))
                    self.pushes[worker] += 1
                    if pull:
                        hooks.after_message()
                        hooks.on_pull(worker)
            elif tag == DONE:
                self.recv(token, worker, DONE, "a done message")
                self.finished.add(worker)
            elif tag == SNAPSHOT:
                self.recv(token, worker, SNAPSHOT, "a checkpoint request")
                self.snapshot_asks[worker] = int(token[0])
            elif tag == PAUSE:
                self.recv(token, worker, PAUSE, "a pause")
                self.paused.add(worker)
            elif tag == READY and self.ctx.rank == 0:
                self.recv(token, worker, READY, "the end of a pause")
                self.leader_ready = True
            else:
                comm.fail(self.comm, f"unexpected message tag {tag} from rank {worker}")
            hooks.after_message()
            self.snapshot_if_asked()
            self.resume_if_ready()
        self.ctx.recorder.server(self.version, self.dropped, time.time() - start_wall,
                                 time.process_time() - start_cpu)

    def snapshot_if_asked(self):
        """Once every worker still training has asked (ps_protocol: after its pushes), save this
        shard's state into their checkpoint and tell them."""
        asks = self.snapshot_asks
        if not asks or not set(asks) >= set(self.pushes) - self.finished - self.lost:
            return
        steps = set(asks.values())
        if len(steps) != 1:
            comm.fail(self.comm, f"workers asked for checkpoints of different steps {sorted(steps)}")
        self.ctx.save_state(steps.pop(), self.state())
        self.sends += [(w, self.comm.Isend(np.zeros(1, np.int64), dest=w, tag=SAVED)) for w in asks]
        asks.clear()

    def pause_is_over(self):
        """A paused worker went on, so server 0 has let every live worker go: the silence of those
        still counted as paused (one that died in the pause) counts from now, as on server 0."""
        now = time.monotonic()
        for w in self.paused:
            self.heard[w] = now
        self.paused.clear()

    def resume_if_ready(self):
        """Server 0: once every live worker has paused and the pause's leader is ready (or lost), let
        them go, naming the lowest live worker the next leader; silence counts from now."""
        live = set(self.pushes) - self.finished - self.lost
        if self.ctx.rank != 0 or not live or not live <= self.paused:
            return
        if not self.leader_ready and self.leader not in self.lost:
            return
        self.leader, self.leader_ready = min(live), False
        for w in sorted(live):
            self.sends.append((w, self.comm.Isend(np.array([self.leader], np.int64), dest=w, tag=RESUME)))
        self.pause_is_over()

    def state(self):
        """The shard, its optimizer's slots, its version and what each worker delivered."""
        workers = sorted(self.pushes)
        return {"shard": self.shard.copy(), "version": np.array(self.version), "dropped": np.array(self.dropped),
                "workers": np.array(workers), "pushes": np.array([self.pushes[w] for w in workers]),
                "lost": np.array(sorted(self.lost), np.int64),
                **{f"optimizer.{k}": v for k, v in self.updater.state().items()}}

    def load_state(self, arrays):
        self.shard[:] = arrays["shard"]
        self.version, self.dropped = int(arrays["version"]), int(arrays["dropped"])
        self.pushes = dict(zip(arrays["workers"].tolist(), arrays["pushes"].tolist()))
        self.lost = set(arrays["lost"].tolist())
        self.updater.load_state({k[len("optimizer."):]: v for k, v in arrays.items() if k.startswith("optimizer.")})

    def next_message(self, hooks):
        """(worker, tag) of the next message (polling as `spin_s` says); None when instead a worker
        silent for half the run's timeout was declared lost."""
        found = []

        def arrived():
            self.sends = [(w, r) for w, r in self.sends if not r.Test()]
            found[:] = [comm.probe_any(self.comm)]
            return found[0] is not None or self.declare_lost(hooks)
        comm.poll(self.comm, arrived, self.ctx.settings.timeout_s + 1.0, "any worker", spin_s=self.spin_s)
        return found[0]

    def declare_lost(self, hooks):
        """Go on without workers silent for longer than half the timeout (if the strategy can); whether
        any was. A worker waiting on a server (for a checkpoint, a held pull) is not silent; one in a pause
        is lost only after twice the timeout, or, if it leads the pause on server 0 and is not done, after
        the timeout (an evaluation or a checkpoint takes far less)."""
        now = time.monotonic()

        def bound(w):
            if w not in self.paused:
                return self.lost_after
            leading = self.ctx.rank == 0 and w == self.leader and not self.leader_ready
            return self.ctx.settings.timeout_s * (1 if leading else 2)
        silent = [w for w, t in self.heard.items() if now - t > bound(w)
                  and w not in self.finished | self.lost | set(self.snapshot_asks) and not hooks.waits_on_server(w)]
        for worker in silent:
            self.lose(worker, hooks, f"sent nothing for {self.lost_after:g}s")
        return bool(silent)

    def lose(self, worker, hooks, why):
        """Go on without `worker` if the strategy survives that; else abort the job."""
        if not self.ctx.layout.traits.survives_lost_workers:
            comm.fail(self.comm, f"worker rank {worker} {why}", "lost_ranks")
        self.lost.add(worker)
        self.paused.discard(worker)
        self.sends = [(w, r) for w, r in self.sends if w != worker]  # never taken: do not wait for them
        self.ctx.recorder.lost(worker, self.pushes[worker])
        if self.lost >= set(self.pushes) - self.finished and not self.finished:
            comm.fail(self.comm, f"every worker was lost (the last, rank {worker}, {why})", "lost_ranks")

    def recv_or_lose(self, buf, worker, tag, what, hooks):
        """Receive a message part from `worker`; False when it died part-way (declared lost)."""
        request = self.comm.Irecv(buf, source=worker, tag=tag)
        give_up = time.monotonic() + self.lost_after
        comm.poll(self.comm, lambda: request.Test() or time.monotonic() > give_up, self.ctx.settings.timeout_s,
                  what)
        if request.Test():
            return True
        request.Cancel()
        self.lose(worker, hooks, f"stopped part-way through {what}")
        return False

    def recv(self, buf, source, tag, what):
        comm.wait(self.comm, self.comm.Irecv(buf, source=source, tag=tag), self.ctx.settings.timeout_s, what)

    def answer_pull(self, worker):
        """Send the version and a copy of the shard (which may change before the send is done)."""
        message = np.empty(PARAMS_HEADER + self.shard.nbytes, np.uint8)
        message[:PARAMS_HEADER].view(np.int64)[0] = self.version
        message[PARAMS_HEADER:].view(np.float32)[:] = self.shard
        self.sends.append((worker, self.comm.Isend(message, dest=worker, tag=PARAMS)))

    def record(self, worker, read, lr):
        """Record a gradient from `worker`, computed on version `read`, going onto this version."""
        self.ctx.recorder.update(worker, read, self.version, lr=lr)

    def apply(self, grad, lr):
        self.updater.apply(self.shard, grad, lr)
        self.version += 1

    def gather_final(self, final_comm):
        """Every server's shard to rank 0 over `final_comm`; the whole vector there, None elsewhere."""
        timeout = self.ctx.settings.timeout_s
        comm.wait_all(self.comm, [r for _, r in self.sends], timeout, "workers to take the parameters")
        if self.ctx.rank != 0:
            comm.wait(final_comm, final_comm.Isend(self.shard, dest=0, tag=FINAL), timeout,
                      "rank 0 to take the final parameters")
            return None
        final = np.empty(self.bounds[-1][1], np.float32)
        lo, hi = self.bounds[0]
        final[lo:hi] = self.shard
        reqs = [final_comm.Irecv(final[lo:hi], source=s, tag=FINAL)
                for s, (lo, hi) in enumerate(self.bounds) if s != 0]
        comm.wait_all(final_comm, reqs, timeout, "the final shards")
        return final
