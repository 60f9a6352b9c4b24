"""The parameter server's answers go out of the shard's buffer without a copy, yet unchanged by the
updates made while they are in flight (run under mpirun: a real rendezvous send is needed)."""
import shutil
import subprocess
import sys

import pytest

SCRIPT = """
import os
import numpy as np
from mpi4py import MPI
from ffnbench.strategies.ps_server import ShardVersions
from ffnbench.strategies.ps_protocol import versioned
world = MPI.COMM_WORLD
n = 100_000  # 400 KB: far above any eager limit, so a send stays in flight until the receive is posted
if world.rank == 0:
    shard = ShardVersions(world, np.zeros(n, np.float32))
    shard.send(1, 30)                      # version 0 goes out, but rank 1 has not posted its receive
    first = shard.current
    shard.writable()[:] = 1.0              # so the update must go to another buffer
    shard.version = 1
    assert shard.current != first and len(shard.buffers) == 2
    world.Barrier()                        # now rank 1 receives version 0
    world.Barrier()                        # rank 1 has it
    shard.done()
    assert not shard.in_flight
    shard.writable()[:] = 2.0              # nothing in flight: in place, no new buffer
    shard.version = 2
    assert len(shard.buffers) == 2
    shard.send(1, 30)                      # version 2, from the same persistent requests as before
    shard.wait_sent(30)
    os.write(1, b"SERVER OK\\n")
else:
    buffer, version, values = versioned(n)
    world.Barrier()
    world.Recv(buffer, 0)
    assert version[0] == 0 and not values.any(), (version, values[:3])
    world.Barrier()
    world.Recv(buffer, 0)
    assert version[0] == 2 and (values == 2.0).all(), (version, values[:3])
    os.write(1, b"WORKER OK\\n")
"""


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun")
def test_answers_in_flight_keep_their_version_while_the_shard_is_updated():
    proc = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", sys.executable, "-c",
                           SCRIPT], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "SERVER OK" in proc.stdout and "WORKER OK" in proc.stdout, (proc.stdout, proc.stderr)
