"""Asynchronous parameter server over mpi4py: each gradient is applied the moment it arrives."""
import numpy as np

from strategies.base import register
from strategies.mpi_wait import fail
from strategies.ps_common import DONE, PULL, PUSH, ParameterServerStrategy


@register
class PSAsync(ParameterServerStrategy):
    """Async parameter server (mpi4py): gradients applied as they arrive, staleness measured."""
    name = "ps_async"
    options = {"servers": 1, "prefetch": False}

    def expected_updates(self):
        return self.run.steps * self.run.workers

    def serve(self):
        run, token = self.run, np.empty(1, np.int64)
        done = 0
        while done < run.workers:
            worker, tag = self.next_message()
            if tag == PULL:
                self.recv(token, worker, PULL, "a pull request")
                self.answer_pull(worker)
            elif tag == PUSH:
                read, _, grad = self.receive_push(worker)
                staleness = self.version - read
                self.apply(grad, run.lr(self.version // run.workers))
                self.record_update(worker, read, staleness)
                run.tick()
            elif tag == DONE:
                self.recv(token, worker, DONE, "a done message")
                done += 1
            else:
                fail(self.comm, f"unexpected message tag {tag} from rank {worker}")
