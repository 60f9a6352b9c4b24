"""One parameter-server rank: its shard, its optimizer, and the message loop every PS strategy shares.

The loop receives each worker's messages as they come and hands them to the strategy's hooks
(`on_pull`, `on_push`, `after_message`): the strategy decides when a pull is answered and what a
gradient does; the server only moves buffers, applies and records. A PUSH_PULL is handed on as a
push, then a pull, as if they had come one after the other.

Nothing is copied or allocated per message. Each worker has one persistent receive (Inbox), started
again as soon as its message is handled; every message lands whole in its buffer, in the order the
worker sent them, with no probe before it. Answers are sent straight out of the shard's buffer
(ShardVersions): an update that would change a buffer a send still reads goes to a fresh copy instead.
"""
import collections
import time

import numpy as np

from ffnbench.strategies import comm
from ffnbench.strategies.numpy_optimizers import ShardUpdater
from ffnbench.strategies.ps_protocol import (DONE, FINAL, PARAMS, PAUSE, PULL, PUSH, PUSH_PULL, READY, RESUME,
                                              SAVED, SNAPSHOT, number, versioned)


class ShardVersions:
    """The shard in buffers [int64 version | float32 values] (ps_protocol.versioned), and the answers
    sent out of them as they are: a persistent send per worker and buffer. An update writes over the
    current buffer in place unless an answer is still being sent from it, and then over a buffer no
    answer reads (a copy of the current one, made at most once per update)."""

    def __init__(self, comm_, values):
        self.comm = comm_
        self.buffers = [versioned(values.size)]
        self.current = 0       # index of the buffer answers go out of
        self.answers = {}      # (buffer, worker) -> persistent send
        self.in_flight = set()  # (buffer, worker) of answers not yet seen done
        self.abandoned = set()  # (buffer, worker) of answers to a lost worker, never to be started again
        self.values[:] = values
        self.version = 0

    @property
    def values(self):
        return self.buffers[self.current][2]

    @property
    def version(self):
        return self._version  # kept as an int too: read once per answer, where microseconds count

    @version.setter
    def version(self, version):
        self.buffers[self.current][1][0] = self._version = version

    def send(self, worker, timeout_s, drive_s=0.0):
        """Start the answer to `worker` from the current buffer (ps_protocol PARAMS) and drive it for up
        to drive_s: a send of more than a few fragments moves only while its sender is inside MPI (no
        single-copy transport), so a server that goes back to Python leaves it waiting. The worker took
        the last answer before it could ask again, so that one is done or about to be (bounded wait)."""
        key = (self.current, worker)
        answer = self.answers.get(key)
        if answer is None or key in self.abandoned:
            answer = self.answers[key] = self.comm.Send_init(self.buffers[self.current][0], dest=worker, tag=PARAMS)
            self.abandoned.discard(key)
        elif key in self.in_flight:
            comm.wait(self.comm, answer, timeout_s, f"rank {worker} to take its last parameters")
        answer.Start()
        if not (drive_s and comm.until(answer.Test, drive_s, drive_s)):
            self.in_flight.add(key)

    def done(self):
        """Forget the answers that are done."""
        self.in_flight = {k for k in self.in_flight if not self.answers[k].Test()}

    def writable(self):
        """The values, in a buffer no answer reads, made current (copied over first if it was not)."""
        self.done()
        busy = {b for b, _ in self.in_flight}
        if self.current in busy:
            free = next((b for b in range(len(self.buffers)) if b not in busy), None)
            if free is None:
                free = len(self.buffers)
                self.buffers.append(versioned(self.values.size))
            self.buffers[free][0][:] = self.buffers[self.current][0]
            self.current = free
        return self.values

    def abandon(self, worker):
        """Stop waiting for answers to a lost worker (they may never be taken)."""
        gone = {k for k in self.in_flight if k[1] == worker}
        self.in_flight -= gone
        self.abandoned |= gone

    def wait_sent(self, timeout_s):
        """Wait until every answer is taken, then free them (the run is over)."""
        comm.wait_all(self.comm, [self.answers[k] for k in self.in_flight], timeout_s, "workers to take the parameters")
        for key, answer in self.answers.items():
            if key not in self.abandoned:
                answer.Free()


#: seconds between looks at the workers' silences while the server waits for a message
CHECK_S = 0.01


class Inbox:
    """A worker's persistent receive of any message (any tag, so they come in the order sent) into a
    buffer the size of its gradient; `gradient` and `number` read what came."""

    def __init__(self, comm_, worker, size, dtype):
        from mpi4py import MPI
        self.buffer = np.empty(max(size * np.dtype(dtype).itemsize, 8), np.uint8)
        self.gradient = self.buffer[:size * np.dtype(dtype).itemsize].view(dtype)
        self.receive = comm_.Recv_init(self.buffer, source=worker, tag=MPI.ANY_TAG)
        self.posted = False

    @property
    def number(self):
        """The int64 a small message carries."""
        return int(self.buffer[:8].view(np.int64)[0])

    def post(self):
        if not self.posted:
            self.receive.Start()
            self.posted = True

    def taken(self):
        self.posted = False

    def close(self):
        """Cancel what will not come (from a lost worker, or after a last message)."""
        if self.posted:
            self.receive.Cancel()
        self.receive.Free()


class ShardServer:
    def __init__(self, ctx, bounds, weights, own_core, wire="float32"):
        """own_core: no other rank shares this server's core (comm.oversubscribed is false);
        wire: how gradients arrive (comm.GRADIENT_WIRES)."""
        self.ctx, self.comm, self.bounds = ctx, ctx.comm, bounds
        lo, hi = bounds[ctx.rank]
        self.shard = ShardVersions(self.comm, weights[lo:hi])
        self.wire, self.wire_dtype = wire, comm.wire_dtype(wire)
        self.updater = ShardUpdater(ctx.settings.optimizer, hi - lo, ctx.settings.clip)
        self.dropped = 0      # gradients a strategy chose not to apply
        self.finished = set()  # workers that said DONE
        self.lost = set()     # workers gone silent, whose work the others carry on (survives_lost_workers)
        # a worker is lost after half the run's wait bound, so its peers' own bounded waits (for the
        # answers this server owes them) outlast the detection
        self.lost_after = ctx.settings.timeout_s / 2
        self.sends = []       # (worker, request) of the small answers still in flight (SAVED, RESUME)
        workers = ctx.layout.worker_ranks
        self.heard = {w: time.monotonic() for w in workers}  # last message from each
        self.pushes = {w: 0 for w in workers}
        self.inboxes = {w: Inbox(self.comm, w, hi - lo, self.wire_dtype) for w in workers}
        # the versions of the answers each worker has not yet pushed a gradient against, oldest first:
        # a gradient is computed on the oldest (a worker pushes against its answers in the order it got them)
        self.answered = {w: collections.deque() for w in workers}
        self.snapshot_asks = {}  # {worker: step} of the workers waiting for a checkpoint
        self.paused = set()   # workers in a pause (PAUSE received, nothing since)
        self.leader = workers[0]  # the worker that leads the pauses (server 0's view)
        self.leader_ready = False
        # a server with a core of its own answers at once (busy-polling, as MPI does); one sharing its
        # cores with workers sleeps between polls, which delays each answer by up to 1 ms
        self.spin_s = float("inf") if own_core else 0.0
        from mpi4py import MPI
        self.testany, self.undefined = MPI.Request.Testany, MPI.UNDEFINED

    @property
    def version(self):
        """Updates applied to this shard."""
        return self.shard.version

    def serve(self, hooks):
        """Run until every worker is done, then record this server's totals."""
        from mpi4py import MPI
        start_wall, start_cpu = time.time(), time.process_time()
        workers = list(self.inboxes)
        for w in workers:
            if w not in self.finished | self.lost:
                self.inboxes[w].post()
        receives = [self.inboxes[w].receive for w in workers]
        self.heard = {w: time.monotonic() for w in self.heard}  # set-up is over: silence counts from now
        status = MPI.Status()
        while len(self.finished | self.lost) < self.ctx.layout.workers:
            index = self.next_message(receives, status, hooks)
            if index is None:
                self.snapshot_if_asked()
                self.resume_if_ready()
                continue  # a worker was declared lost
            worker, tag = workers[index], status.Get_tag()
            inbox = self.inboxes[worker]
            inbox.taken()
            self.heard[worker] = time.monotonic()
            if self.paused and worker in self.paused and tag in (PULL, PUSH, PUSH_PULL, DONE):
                self.pause_is_over()
            self.handle(worker, tag, hooks, inbox)
            if worker not in self.finished:
                inbox.post()
            hooks.after_message()
            self.snapshot_if_asked()
            self.resume_if_ready()
        for inbox in self.inboxes.values():
            inbox.close()
        self.ctx.recorder.server(self.version, self.dropped, time.time() - start_wall,
                                 time.process_time() - start_cpu)

    def handle(self, worker, tag, hooks, inbox):
        """Act on one message from `worker`, in its inbox."""
        if tag == PUSH_PULL or tag == PUSH:
            answered = self.answered[worker]
            if not answered:
                comm.fail(self.comm, f"rank {worker} pushed a gradient before it had any parameters")
            hooks.on_push(worker, answered.popleft(), comm.from_wire(inbox.gradient, self.wire))
            self.pushes[worker] += 1
            if tag == PUSH_PULL:
                hooks.after_message()
                hooks.on_pull(worker)
        elif tag == PULL:
            hooks.on_pull(worker)
        elif tag == DONE:
            self.finished.add(worker)
        elif tag == SNAPSHOT:
            self.snapshot_asks[worker] = inbox.number
        elif tag == PAUSE:
            self.paused.add(worker)
        elif tag == READY and self.ctx.rank == 0:
            self.leader_ready = True
        else:
            comm.fail(self.comm, f"unexpected message tag {tag} from rank {worker}")

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
        self.sends += [(w, self.comm.Isend(number(0), dest=w, tag=SAVED)) for w in asks]
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
        if self.ctx.rank != 0 or not self.paused:
            return
        live = set(self.pushes) - self.finished - self.lost
        if not live or not live <= self.paused:
            return
        if not self.leader_ready and self.leader not in self.lost:
            return
        self.leader, self.leader_ready = min(live), False
        for w in sorted(live):
            self.sends.append((w, self.comm.Isend(number(self.leader), dest=w, tag=RESUME)))
        self.pause_is_over()

    def state(self):
        """The shard, its optimizer's slots, its version and what each worker delivered."""
        workers = sorted(self.pushes)
        return {"shard": self.shard.values.copy(), "version": np.array(self.version),
                "dropped": np.array(self.dropped), "workers": np.array(workers),
                "pushes": np.array([self.pushes[w] for w in workers]), "lost": np.array(sorted(self.lost), np.int64),
                **{f"optimizer.{k}": v for k, v in self.updater.state().items()}}

    def load_state(self, arrays):
        self.shard.writable()[:] = arrays["shard"]
        self.shard.version = int(arrays["version"])
        self.dropped = int(arrays["dropped"])
        self.pushes = dict(zip(arrays["workers"].tolist(), arrays["pushes"].tolist()))
        self.lost = set(arrays["lost"].tolist())
        self.updater.load_state({k[len("optimizer."):]: v for k, v in arrays.items() if k.startswith("optimizer.")})

    def next_message(self, receives, status, hooks):
        """Index into `receives` (each worker's inbox) of the next message in, polling as
        `spin_s` says; None when instead a worker silent for too long was declared lost. The silences
        and the answers in flight are looked at every CHECK_S, not on every poll."""
        testany, undefined = self.testany, self.undefined
        index, done = testany(receives, status)
        if done and index != undefined:
            return index
        found = [None]
        check_at = [time.monotonic() + CHECK_S]
        polls = [0]

        def arrived():
            index, done = testany(receives, status)
            if done and index != undefined:
                found[0] = index
                return True
            polls[0] += 1
            if polls[0] % comm.CLOCK_EVERY:
                return False
            now = time.monotonic()
            if now < check_at[0]:
                return False
            check_at[0] = now + CHECK_S
            self.sends = [(w, r) for w, r in self.sends if not r.Test()]
            self.shard.done()
            return self.declare_lost(hooks)
        comm.poll(self.comm, arrived, self.ctx.settings.timeout_s + 1.0, "any worker", spin_s=self.spin_s)
        return found[0]

    def declare_lost(self, hooks):
        """Go on without workers silent for longer than half the timeout (if the strategy can); whether
        any was. A worker waiting on a server (for a checkpoint, a held pull) is not silent; one in a pause
        is lost only after twice the timeout, or, if it leads the pause on server 0 and is not done, after
        the timeout (an evaluation or a checkpoint takes far less). A worker killed part-way through a
        message is silent from its last whole one."""
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
        self.shard.abandon(worker)
        self.ctx.recorder.lost(worker, self.pushes[worker])
        if self.lost >= set(self.pushes) - self.finished and not self.finished:
            comm.fail(self.comm, f"every worker was lost (the last, rank {worker}, {why})", "lost_ranks")

    def answer_pull(self, worker):
        """Send the version and the shard, straight from its buffer (ShardVersions keeps it unchanged
        until the send is done). A server with a core of its own drives the send to its end (bounded by
        CHECK_S, for a worker that stopped taking it); one sharing its cores leaves it to its next polls."""
        self.answered[worker].append(self.version)
        self.shard.send(worker, self.ctx.settings.timeout_s, CHECK_S if self.spin_s else 0.0)

    def record(self, worker, read, lr):
        """Record a gradient from `worker`, computed on version `read`, going onto this version."""
        self.ctx.recorder.update(worker, read, self.version, lr=lr)

    def apply(self, grad, lr):
        version = self.version
        self.updater.apply(self.shard.writable(), grad, lr)
        self.shard.version = version + 1

    def gather_final(self, final_comm):
        """Every server's shard to rank 0 over `final_comm`; the whole vector there, None elsewhere."""
        timeout = self.ctx.settings.timeout_s
        comm.wait_all(self.comm, [r for _, r in self.sends], timeout, "workers to take the parameters")
        self.shard.wait_sent(timeout)
        values = self.shard.values
        if self.ctx.rank != 0:
            comm.wait(final_comm, final_comm.Isend(values, dest=0, tag=FINAL), timeout,
                      "rank 0 to take the final parameters")
            return None
        final = np.empty(self.bounds[-1][1], np.float32)
        lo, hi = self.bounds[0]
        final[lo:hi] = values
        reqs = [final_comm.Irecv(final[lo:hi], source=s, tag=FINAL)
                for s, (lo, hi) in enumerate(self.bounds) if s != 0]
        comm.wait_all(final_comm, reqs, timeout, "the final shards")
        return final
