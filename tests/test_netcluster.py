"""The emulated cluster is what it says: raw MPI between two of its nodes moves the bytes at the rate
their links are shaped to (within 10 %, never above it), over TCP between namespaces; and a
cluster is made and removed by name, leaving nothing behind."""
import json
import os
import re
import subprocess
import sys

import pytest

from ffnbench.bench.run import netcluster

REASON = netcluster.unavailable_reason()
needs_clusters = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def commbench(*args):
    return subprocess.run([sys.executable, "-m", "ffnbench.bench.cli", "commbench", *args], capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_names_and_rates_are_checked_before_anything_is_made():
    with pytest.raises(netcluster.ClusterError, match="1-6 lower-case"):
        netcluster.Cluster("Bad-Name", 2)
    with pytest.raises(netcluster.ClusterError, match="between 2 and"):
        netcluster.Cluster("c", 1)
    with pytest.raises(netcluster.ClusterError, match="kbit, mbit or gbit"):
        netcluster.Cluster("c", 2, "fast")
    cluster = netcluster.Cluster("c", 3, "1gbit")
    assert cluster.link_bits_per_s == 1e9 and cluster.node_of(cluster.address(2)) == 2
    assert cluster.node_of("10.0.0.1") is None


@needs_clusters
def test_a_cluster_is_made_and_removed_by_name_and_a_stale_one_is_replaced():
    cluster = netcluster.Cluster("tst", 2, "100mbit")
    try:
        cluster.up()
        cluster.up()  # the stale one (the same name) goes first
        assert netcluster.clusters().get("tst") == 2
        qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", cluster.twin(1)], capture_output=True, text=True).stdout
        assert "tbf" in qdiscs and "100Mbit" in qdiscs
        routes = subprocess.run(["ip", "netns", "exec", cluster.namespace(0), "ip", "route"], capture_output=True,
                                text=True).stdout
        assert "default" not in routes  # no route out
    finally:
        netcluster.down("tst")
    assert "tst" not in netcluster.clusters()
    assert subprocess.run(["ip", "link", "show", cluster.bridge], capture_output=True).returncode != 0


@pytest.mark.slow
@needs_clusters
@pytest.mark.parametrize("link", ["100mbit", "500mbit", "1gbit"])
def test_raw_mpi_between_two_nodes_runs_at_the_shaped_rate(link):
    proc = commbench("configs/paper.yaml", "--link", link)  # the median of 3 rounds
    assert proc.returncode == 0, proc.stderr[-2000:]
    ratio = float(re.search(r"= (\d\.\d+) of the shaped", proc.stdout).group(1))
    assert 0.9 <= ratio <= 1.02, proc.stdout


@pytest.mark.slow
@needs_clusters
def test_the_rate_holds_with_four_nodes_sending_at_once():
    proc = commbench("configs/paper.yaml", "--link", "1gbit", "--ranks", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "each of 4 emulated nodes in a ring, all at once" in proc.stdout
    ratio = float(re.search(r"= (\d\.\d+) of the shaped", proc.stdout).group(1))
    assert 0.9 <= ratio <= 1.02, proc.stdout


@pytest.mark.slow
@needs_clusters
def test_calibration_across_an_emulated_link_finds_its_rate(run_cli, tmp_path):
    out = tmp_path / "cal.json"
    r = run_cli("calibrate", "--link", "1gbit", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    cal = json.load(open(out))
    link_bytes_per_s = 1e9 / 8
    assert 0.9 <= (1 / cal["beta_s_per_byte"]) / link_bytes_per_s <= 1.02, cal["pingpong"]
    assert 0 < cal["alpha_s"] < 1e-3 and cal["network"].startswith("2 emulated nodes, links 1gbit")
    assert [k for k, _ in cal["fan_in"]] == [2, 4, 8, 16] and all(0 < e <= 1 for _, e in cal["fan_in"])


def test_without_root_or_tools_the_cluster_commands_say_why_in_one_line(monkeypatch, capsys):
    from ffnbench.bench import cli
    monkeypatch.setattr(netcluster, "unavailable_reason", lambda: "emulated clusters need root (test)")
    assert cli.main(["cluster", "up", "x", "--nodes", "2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ffnbench: error: emulated clusters need root (test)"]
    assert cli.main(["cluster", "check"]) == 2  # what `make demo` asks before its network comparison
    assert capsys.readouterr().out.strip() == "emulated clusters: emulated clusters need root (test)"


def _records(run_dir, kind):
    return [r for r in map(json.loads, open(run_dir / "metrics.jsonl")) if r["kind"] == kind]


@pytest.mark.slow
@needs_clusters
def test_a_parameter_server_alone_on_its_node_trains_workers_over_tcp(run_cli, tmp_path):
    out = tmp_path / "run"
    r = run_cli("run", "configs/smoke.yaml", "--set", "strategy=ps_async", "--set", "ranks=3", "--set",
                "run.nodes=2", "--set", "run.server_nodes=1", "--set", "run.link=1gbit", "--set", "train.steps=20",
                "--set", "eval.every=0", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["nodes"] == 2  # Open MPI's own census: one host per namespace
    assert manifest["network"]["emulated_nodes"] == 2 and manifest["network"]["ranks_per_node"] == [1, 2]
    assert manifest["peak"]["nodes"] == 1  # the nodes share this machine's cores
    assert len(_records(out, "update")) == 40
    assert "tst" not in netcluster.clusters() and not [c for c in netcluster.clusters() if c.startswith("r")]


@pytest.mark.slow
@needs_clusters
def test_horovod_all_reduces_across_two_emulated_nodes(run_cli, tmp_path):
    out = tmp_path / "run"
    r = run_cli("run", "configs/smoke.yaml", "--set", "strategy=allreduce", "--set", "ranks=2", "--set",
                "run.nodes=2", "--set", "train.steps=10", "--set", "eval.every=0", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.load(open(out / "manifest.json"))["nodes"] == 2
    assert json.load(open(out / "summary.json"))["status"] == "complete"


def test_nodes_the_layout_cannot_fill_are_refused_in_one_line(run_cli, tmp_path):
    r = run_cli("run", "configs/smoke.yaml", "--set", "strategy=ps_async", "--set", "ranks=3", "--set",
                "run.nodes=2", "--set", "run.server_nodes=2", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "ffnbench: error: config field run.server_nodes: must leave nodes for the workers (got 2 of 2 nodes)"]
    r = run_cli("run", "configs/smoke.yaml", "--set", "run.link=1gbit", "--out", str(tmp_path / "run2"))
    assert r.returncode == 2 and "run.link: needs emulated nodes" in r.stderr
    r = run_cli("run", "configs/smoke.yaml", "--set", "strategy=tf_multiworker", "--set", "ranks=2", "--set",
                "run.nodes=2", "--out", str(tmp_path / "run3"))
    assert r.returncode == 2 and "runs on one machine only" in r.stderr
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "run3")


@needs_clusters
def test_a_cluster_that_fails_part_way_up_leaves_nothing_behind(monkeypatch):
    add_node = netcluster.Cluster._add_node

    def fail_on_the_second(self, node):
        if node == 1:
            raise netcluster.ClusterError("injected: the second node failed")
        add_node(self, node)
    monkeypatch.setattr(netcluster.Cluster, "_add_node", fail_on_the_second)
    cluster = netcluster.Cluster("fail", 3)
    with pytest.raises(netcluster.ClusterError, match="injected"):
        cluster.up()
    assert "fail" not in netcluster.clusters()
    assert subprocess.run(["ip", "link", "show", cluster.bridge], capture_output=True).returncode != 0
    assert subprocess.run(["ip", "link", "show", cluster.twin(0)], capture_output=True).returncode != 0


@needs_clusters
def test_a_run_whose_ranks_fail_to_start_takes_its_cluster_down(monkeypatch, tmp_path):
    from ffnbench.bench import config
    from ffnbench.bench.run import launcher, processes
    from ffnbench.bench.run.context import layout_of
    cfg = config.load("configs/smoke.yaml", [("strategy", "allreduce"), ("ranks", 2), ("run.nodes", 2),
                                             ("run.link", "1gbit")])

    def fail(*args, **kwargs):
        assert launcher.cluster_name(str(tmp_path)) in netcluster.clusters()  # up when the launch came
        raise OSError("injected: mpirun could not be started")
    monkeypatch.setattr(processes, "launch_on_cluster", fail)
    with pytest.raises(OSError, match="injected"):
        launcher.launch(cfg, layout_of(cfg), str(tmp_path))
    assert launcher.cluster_name(str(tmp_path)) not in netcluster.clusters()


@needs_clusters
def test_a_cluster_used_as_a_context_is_down_after_an_error_inside():
    with pytest.raises(RuntimeError, match="injected"):
        with netcluster.Cluster("ctx", 2, "100mbit") as cluster:
            assert "ctx" in netcluster.clusters() and cluster.setup_s > 0
            raise RuntimeError("injected")
    assert "ctx" not in netcluster.clusters()
