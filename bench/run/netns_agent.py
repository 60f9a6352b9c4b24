"""mpirun's launch agent on an emulated cluster (netcluster.py): instead of ssh HOST COMMAND, run
COMMAND inside the namespace of the node whose address is HOST.

Open MPI calls it as `python netns_agent.py [agent options] HOST COMMAND...` (it keeps no more of the
agent's setting than that), with the cluster named in FFNBENCH_CLUSTER=NAME:NODES; it needs nothing
but the standard library, so it starts fast and never imports TensorFlow or MPI.
"""
import os
import sys


def main(argv):
    name, nodes = os.environ["FFNBENCH_CLUSTER"].split(":")
    nodes, rest = int(nodes), argv
    while rest and rest[0].startswith("-"):  # options meant for ssh (Open MPI adds none for an unknown agent)
        rest = rest[1:]
    host, command = rest[0], " ".join(rest[1:])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from netcluster import Cluster, as_node  # a sibling module: no package import, nothing heavy
    node = Cluster(name, nodes).node_of(host)
    if node is None:
        print(f"netns_agent: {host} is no node of emulated cluster {name}", file=sys.stderr)
        return 2
    os.execvp("ip", as_node(Cluster(name, nodes).namespace(node)) + ["sh", "-c", command])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
