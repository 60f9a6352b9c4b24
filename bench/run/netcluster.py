"""An emulated cluster on this machine: each node a network namespace on one bridge, each node's link
shaped to a rate, so ranks on different nodes talk over TCP through a real (if virtual) network.

Node i of cluster NAME is the namespace `ffnb-NAME-i`, with one veth: `eth0` inside, with the address
10.77.K.(i+1)/24 and no route out, and its twin `fbNAME-i` on the bridge `fbNAME`. A shaped link is a
token-bucket filter (tc's `tbf`) on both ends of the veth: node -> bridge on `eth0`, bridge -> node
on its twin. mpirun runs inside node 0 and starts its daemons on the other nodes through a launch
agent (netns_agent.py) that runs them inside their node's namespace: no ssh. Open MPI then treats each
namespace as a host of its own: TCP between nodes, shared memory within one.

Everything is made by name and torn down by name (`ffnbench cluster down NAME`); bringing a cluster
up first removes a stale one of the same name. Needs root and the kernel's veth, bridge and tbf.
"""
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import time

PREFIX = "ffnb"
#: a cluster's name: short, since Linux caps an interface name at 15 characters
NAME = re.compile(r"^[a-z0-9]{1,6}$")
#: the most nodes a cluster may have (one /24 subnet, and names within 15 characters)
MAX_NODES = 64
#: seconds any one `ip`/`tc` command may take
COMMAND_S = 20
#: jumbo frames, as on a cluster's Ethernet: tbf cuts a segment larger than its bucket into MTU-sized
#: packets, and 1500-byte ones cost 2 cores more to forward than N links at 1 Gbit/s need
MTU = 9000


class ClusterError(RuntimeError):
    """The cluster cannot be made here, or a command failed; the message says why in one line."""


def unavailable_reason():
    """Why emulated clusters cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "emulated clusters need root (network namespaces, veths and qdiscs)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"emulated clusters need iproute2 ({', '.join(missing)} not found)"
    return None


def _run(*argv, namespace=None, check=True):
    cmd = (["ip", "netns", "exec", namespace] if namespace else []) + list(argv)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`{' '.join(cmd)}` did not finish within {COMMAND_S}s")
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return proc


def bits_per_s(rate):
    """A tc rate ('100mbit', '1gbit', '2gbit', '500kbit') in bits per second."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(k|m|g)?bit", rate.strip().lower())
    if not match:
        raise ClusterError(f"config field run.link: must be a number and kbit, mbit or gbit, e.g. 1gbit (got {rate!r})")
    return float(match.group(1)) * {None: 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]


class Cluster:
    """The names and addresses of cluster `name`'s `nodes` nodes (nothing is made by building one)."""

    def __init__(self, name, nodes, link=None):
        if not NAME.match(name):
            raise ClusterError(f"cluster name {name!r}: 1-6 lower-case letters or digits")
        if not 2 <= nodes <= MAX_NODES:
            raise ClusterError(f"cluster of {nodes} nodes: between 2 and {MAX_NODES}")
        self.name, self.nodes, self.link = name, nodes, link
        self.link_bits_per_s = bits_per_s(link) if link else None
        # one /24 per name, so clusters of different names can be up at once
        self.subnet = ipaddress.ip_network(f"10.77.{sum(map(ord, name)) % 250}.0/24")

    @property
    def bridge(self):
        return f"fb{self.name}"

    def namespace(self, node):
        return f"{PREFIX}-{self.name}-{node}"

    def twin(self, node):
        """The bridge end of node's veth."""
        return f"fb{self.name}-{node}"

    def address(self, node):
        return str(self.subnet.network_address + node + 1)

    def node_of(self, address):
        """The node that has `address`, or None."""
        for node in range(self.nodes):
            if self.address(node) == address:
                return node
        return None

    def __enter__(self):
        self.up()
        return self

    def __exit__(self, *exc):
        down(self.name)

    def up(self, timeout_s=60):
        """Make the cluster (first tearing down a stale one of this name); bounded by timeout_s.
        Returns the seconds it took (also kept as `setup_s`)."""
        down(self.name)
        start = time.monotonic()
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "link", "set", self.bridge, "up")
            for node in range(self.nodes):
                if time.monotonic() - start > timeout_s:
                    raise ClusterError(f"setting up {self.nodes} nodes took over {timeout_s}s")
                self._add_node(node)
        except BaseException:
            down(self.name)
            raise
        self.setup_s = time.monotonic() - start
        return self.setup_s

    def _add_node(self, node):
        ns, twin = self.namespace(node), self.twin(node)
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", twin, "mtu", str(MTU), "type", "veth", "peer", "name", "eth0", "mtu", str(MTU),
             "netns", ns)
        _run("ip", "link", "set", twin, "master", self.bridge)
        _run("ip", "link", "set", twin, "up")
        _run("ip", "addr", "add", f"{self.address(node)}/{self.subnet.prefixlen}", "dev", "eth0", namespace=ns)
        _run("ip", "link", "set", "eth0", "up", namespace=ns)
        _run("ip", "link", "set", "lo", "up", namespace=ns)
        if self.link:
            for device, where in ((twin, None), ("eth0", ns)):
                _run("tc", "qdisc", "add", "dev", device, "root", "tbf", *self._tbf(), namespace=where)

    def _tbf(self):
        """tbf's settings for the link: a bucket of 250 µs at the rate, at least 32 KB (a larger one lets
        a message of its size through at memory speed, which a real link never does; tbf splits a
        segment larger than its bucket rather than dropping it), and a queue of 50 ms at the rate."""
        bytes_per_s = self.link_bits_per_s / 8
        burst = max(int(bytes_per_s * 2.5e-4), 32 * 1024)
        return ["rate", self.link, "burst", str(burst), "limit", str(max(int(bytes_per_s * 0.05), 2 * burst))]

    def exists(self):
        return self.namespace(0) in namespaces()


def namespaces():
    """The network namespaces on this machine, by name."""
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def clusters():
    """{name: nodes} of the emulated clusters that are up."""
    found = {}
    for ns in namespaces():
        match = re.fullmatch(rf"{PREFIX}-([a-z0-9]+)-(\d+)", ns)
        if match:
            found[match.group(1)] = found.get(match.group(1), 0) + 1
    return found


def down(name):
    """Remove every veth, namespace and bridge of cluster `name` (whatever is left of it). The veths
    go first, from this side: a deleted namespace takes its end with it only later, when the kernel
    gets round to it, and a cluster of the same name made meanwhile would find the names taken."""
    links = _run("ip", "-o", "link", "show", check=False).stdout
    for twin in re.findall(rf"^\d+: (fb{re.escape(name)}-\d+)@", links, re.MULTILINE):
        _run("ip", "link", "delete", twin, check=False)
    for ns in namespaces():
        if re.fullmatch(rf"{PREFIX}-{re.escape(name)}-\d+", ns):
            _run("ip", "netns", "delete", ns, check=False)
    _run("ip", "link", "delete", f"fb{name}", check=False)


AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netns_agent.py")


def slots_for(roles, nodes, server_nodes=0):
    """Ranks per node, in rank order (mpirun fills the nodes in order; a layout's servers come
    first): with server_nodes, the servers spread evenly over the first server_nodes nodes and the
    workers over the others; else every rank spread evenly over all."""
    servers = roles.count("server")
    if not server_nodes:
        return _spread(len(roles), nodes, "run.nodes", "ranks")
    if not servers:
        raise ClusterError("config field run.server_nodes: the layout has no parameter servers")
    if server_nodes >= nodes:
        raise ClusterError(f"config field run.server_nodes: must leave nodes for the workers (got {server_nodes} "
                           f"of {nodes} nodes)")
    return (_spread(servers, server_nodes, "run.server_nodes", "servers")
            + _spread(len(roles) - servers, nodes - server_nodes, "run.nodes", "workers"))


def _spread(ranks, nodes, field, what):
    if ranks < nodes:
        raise ClusterError(f"config field {field}: {nodes} nodes for {ranks} {what} would leave a node empty")
    q, r = divmod(ranks, nodes)
    return [q + (i < r) for i in range(nodes)]


def mpirun_settings(cluster, slots):
    """How to start ranks on the cluster: (command prefix, mpirun's --host value, MCA settings).
    `slots` is the ranks per node, in order (mpirun fills node 0's with the first ranks, then node
    1's, ...). TCP between nodes goes over the cluster's subnet only; mpirun runs inside node 0."""
    hosts = ",".join(f"{cluster.address(node)}:{n}" for node, n in enumerate(slots) if n)
    subnet = str(cluster.subnet)
    mca = {"btl": "tcp,vader,self", "btl_tcp_if_include": subnet, "oob_tcp_if_include": subnet,
           "plm_rsh_agent": f"{sys.executable} {AGENT}", "plm_rsh_no_tree_spawn": "1"}
    # ranks name the machine, not their node, as the host they ran on
    prefix = ["env", f"FFNBENCH_CLUSTER={cluster.name}:{cluster.nodes}",
              f"FFNBENCH_MACHINE={os.uname().nodename}"] + as_node(cluster.namespace(0))
    return prefix, hosts, mca


def as_node(namespace):
    """The command prefix that runs a command as node `namespace`: inside its network namespace, with a
    host name of its own (Open MPI tells nodes apart by name: ranks of one node share memory)."""
    return ["ip", "netns", "exec", namespace, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', namespace]


def check_config(cfg, layout):
    """run.nodes, run.link and run.server_nodes against the layout (ConfigError naming the field)."""
    from ffnbench.bench.config import ConfigError  # here: the launch agent imports this module bare
    r = cfg["run"]
    if r["nodes"] == 1:
        for key, unset in (("link", ""), ("server_nodes", 0)):
            if r[key] != unset:
                raise ConfigError(f"config field run.{key}: needs emulated nodes (run.nodes > 1)")
        return
    if layout.traits.launch != "mpirun" or layout.traits.one_machine:
        raise ConfigError(f"config field run.nodes: strategy {layout.strategy} runs on one machine only (got "
                          f"{r['nodes']} nodes)")
    try:
        if r["link"]:
            bits_per_s(r["link"])
        slots_for(layout.roles, r["nodes"], r["server_nodes"])
    except ClusterError as e:
        raise ConfigError(str(e))
    reason = unavailable_reason()
    if reason:
        raise ConfigError(f"config field run.nodes: {reason}")
