import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.stats import norm

from ffnbench.bench.measure.calibrate import calibrate_network
from ffnbench.bench.analyse.simulator import (NETWORK_PRESETS, SimInputs, paper_calibration_check,
                                      ring_allreduce_s, simulate)
from ffnbench.strategies import comm


@pytest.mark.parametrize("strategy", ["ring_allreduce", "sync_ps", "async_ps"])
@pytest.mark.parametrize("n", [1, 7, 4096])
def test_no_jitter_no_network_scales_perfectly(strategy, n):
    r = simulate(strategy, n, SimInputs(mean_s=2.0, cv=0.0, batch_per_worker=4))
    assert r["efficiency"] == pytest.approx(1.0, abs=1e-9)
    assert r["fovs_per_s"] == pytest.approx(n * 4 / 2.0, rel=1e-9)


def test_straggler_effect_grows_with_workers():
    inp = SimInputs(mean_s=1.0, cv=0.3)
    eff = [simulate("ring_allreduce", n, inp)["efficiency"] for n in (1, 4, 64, 1024, 4096)]
    assert eff[0] == pytest.approx(1.0, abs=0.02)
    assert all(a > b for a, b in zip(eff, eff[1:])), eff
    assert eff[-1] < 0.6


def test_two_workers_match_lognormal_expected_max():
    # For i.i.d. lognormals with log-sd s, E[max of 2] = 2 * mean * Phi(s / sqrt 2).
    cv = 0.5
    s = np.sqrt(np.log1p(cv ** 2))
    r = simulate("ring_allreduce", 2, SimInputs(mean_s=1.0, cv=cv), steps=50_000)
    assert r["step_s_mean"] == pytest.approx(2 * norm.cdf(s / np.sqrt(2)), rel=0.01)


def test_ring_allreduce_formula_and_step_time():
    assert ring_allreduce_s(1e6, 8, 1e-6, 1e-9) == pytest.approx(14e-6 + 1.75e-3)
    assert ring_allreduce_s(1e6, 1, 1e-6, 1e-9) == 0.0
    inp = SimInputs(mean_s=0.5, grad_bytes=4e6, alpha_s=2e-6, beta_s_per_byte=1e-9)
    r = simulate("ring_allreduce", 64, inp, steps=10)
    assert r["step_s_mean"] == pytest.approx(0.5 + 2 * 63 * 2e-6 + 2 * 63 / 64 * 4e6 * 1e-9)


def test_a_sync_ps_round_overlaps_early_pushes_with_late_answers():
    # one server, equal workers: worker k has its parameters after k + 1 answers (p each), pushes after
    # c, and the server takes each push as it comes: the round is (N + 1) p + c, not c + 2 N p
    p, c = 1e-6 + 1e6 * 1e-9, 0.5
    inp = SimInputs(mean_s=c, grad_bytes=1e6, alpha_s=1e-6, beta_s_per_byte=1e-9)
    for n in (1, 100):
        assert simulate("sync_ps", n, inp, steps=5)["step_s_mean"] == pytest.approx((n + 1) * p + c)
    # compute shorter than one answer: still (N + 1) p + c, the link busy both ways at once
    quick = simulate("sync_ps", 100, SimInputs(mean_s=1e-5, grad_bytes=1e6, alpha_s=1e-6, beta_s_per_byte=1e-9),
                     steps=5)
    assert quick["step_s_mean"] == pytest.approx(101 * p + 1e-5)
    # 4 servers: each link carries a quarter; one worker is bound by its own link (the whole gradient)
    sharded = SimInputs(mean_s=c, grad_bytes=1e6, alpha_s=1e-6, beta_s_per_byte=1e-9, servers=4)
    assert simulate("sync_ps", 1, sharded, steps=5)["step_s_mean"] == pytest.approx(c + 2 * (4e-6 + 1e-3))


def test_backup_workers_cut_the_tail():
    inp = SimInputs(mean_s=1.0, cv=0.5)
    plain = simulate("sync_ps", 64, inp)
    backed = simulate("sync_ps", 64, SimInputs(mean_s=1.0, cv=0.5, backup_workers=4))
    assert backed["step_s_mean"] < 0.9 * plain["step_s_mean"]


@pytest.mark.parametrize("n", [8, 32])
def test_async_staleness_is_workers_minus_one(n):
    r = simulate("async_ps", n, SimInputs(mean_s=1.0, cv=0.0), steps=50)
    st = r["staleness"]
    assert st["mean"] == pytest.approx(n - 1, rel=0.05)
    assert st["p50"] == n - 1
    assert sum(st["hist"]["counts"]) == 50 * n - (50 * n) // 5  # warm-up dropped
    jittery = simulate("async_ps", n, SimInputs(mean_s=1.0, cv=0.5), steps=50)["staleness"]
    assert jittery["max"] > n - 1  # unequal speeds spread staleness out


def test_async_ignores_stragglers_that_hurt_sync():
    inp = SimInputs(mean_s=1.0, cv=0.3)
    assert simulate("async_ps", 64, inp)["efficiency"] > 0.97
    assert simulate("ring_allreduce", 64, inp)["efficiency"] < 0.8


def test_single_server_saturates_and_more_servers_relieve_it():
    # Each push occupies the server 1e6 B * 1e-8 s/B = 10 ms: at most ~100 updates/s.
    inp = SimInputs(mean_s=1.0, batch_per_worker=1, grad_bytes=1e6, beta_s_per_byte=1e-8)
    few = simulate("async_ps", 16, inp)
    many = simulate("async_ps", 400, inp, steps=20)
    more = simulate("async_ps", 800, inp, steps=20)
    assert few["efficiency"] > 0.95
    assert many["fovs_per_s"] == pytest.approx(100, rel=0.03)
    assert more["fovs_per_s"] == pytest.approx(many["fovs_per_s"], rel=0.03)
    four = simulate("async_ps", 400, SimInputs(mean_s=1.0, batch_per_worker=1, grad_bytes=1e6,
                                               beta_s_per_byte=1e-8, servers=4), steps=20)
    assert four["fovs_per_s"] > 3 * many["fovs_per_s"]


def test_measured_samples_are_resampled():
    inp = SimInputs(samples=[1.0, 3.0])
    r = simulate("ring_allreduce", 64, inp)
    assert r["step_s_mean"] == pytest.approx(3.0)  # some worker is always slow
    assert r["efficiency"] == pytest.approx(2.0 / 3.0, rel=0.02)


def test_4096_workers_is_fast():
    inp = SimInputs(mean_s=5.7, cv=0.1, **NETWORK_PRESETS["theta_aries"])
    t0 = time.perf_counter()
    for strategy in ("ring_allreduce", "sync_ps", "async_ps"):
        r = simulate(strategy, 4096, inp)
        assert 0 < r["efficiency"] < 1.01  # Monte Carlo: allow sampling noise above 1
    assert time.perf_counter() - t0 < 15


def test_paper_calibration_finds_a_modest_straggler_spread():
    res = paper_calibration_check()
    assert res["efficiency"] == pytest.approx(520 / 730, abs=0.005)
    assert 0.05 < res["cv"] < 0.2
    assert res["allreduce_s"] < 0.01 * res["step_mean_s"]  # the network is not the culprit


@pytest.mark.parametrize("bad", [dict(cv=-0.1), dict(mean_s=0), dict(samples=[]),
                                 dict(samples=[1.0, -1.0]), dict(servers=0)])
def test_bad_inputs_are_rejected(bad):
    with pytest.raises(ValueError):
        SimInputs(**bad)


def test_bad_strategy_or_workers_are_rejected():
    with pytest.raises(ValueError, match="unknown simulator model"):
        simulate("gossip", 4, SimInputs())
    with pytest.raises(ValueError):
        simulate("ring_allreduce", 0, SimInputs())


def test_waits_are_bounded():
    """A wait that never completes aborts the job after its bound, with one line naming it."""
    class World:
        rank = 0

        def Abort(self, code):
            raise SystemExit(code)

    class NeverDone:
        def Test(self, status=None):
            return False

    t0 = time.monotonic()
    with pytest.raises(SystemExit) as aborted:
        comm.wait(World(), NeverDone(), 0.05, "a peer that never answers")
    assert aborted.value.code == comm.ABORT_CODE and time.monotonic() - t0 < 1


def test_calibration_needs_two_ranks():
    class Solo:
        def Get_size(self):
            return 1

    with pytest.raises(ValueError):
        calibrate_network(Solo())


CALIBRATE = f"""
import os
from mpi4py import MPI
from ffnbench.bench.measure.calibrate import calibrate_network
alpha, beta, table = calibrate_network(MPI.COMM_WORLD, sizes=(8, 4096, 262144, 1 << 20),
                                       repeats=10, timeout_s=30)
assert [row["bytes"] for row in table] == [8, 4096, 262144, 1 << 20]
# one write() per line: two ranks share mpirun's stdout and may interleave
os.write(1, f"FIT {{MPI.COMM_WORLD.Get_rank()}} {{alpha!r}} {{beta!r}}\\n".encode())
"""


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun")
def test_calibrate_network_under_mpirun():
    pytest.importorskip("mpi4py")
    proc = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2",
                           sys.executable, "-c", CALIBRATE],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    fits = [line.split() for line in proc.stdout.splitlines() if line.startswith("FIT")]
    assert sorted(f[1] for f in fits) == ["0", "1"], (proc.stdout, proc.stderr)
    assert fits[0][2:] == fits[1][2:]  # both ranks return the same fit
    alpha, beta = float(fits[0][2]), float(fits[0][3])
    assert alpha > 0 and beta > 0


def test_a_server_link_that_loses_rate_to_fan_in_slows_a_saturated_server():
    base = dict(mean_s=0.01, grad_bytes=1e6, alpha_s=1e-6, beta_s_per_byte=1e-8)
    incast = SimInputs(**base, fan_in=((2, 1.0), (8, 0.5)))
    assert incast.inbound_beta(1) == incast.inbound_beta(2) == 1e-8
    assert incast.inbound_beta(5) == pytest.approx(1e-8 / 0.75) and incast.inbound_beta(8) == pytest.approx(2e-8)
    # 8 workers saturate one server's link (10 ms a push each way against 10 ms of compute): at half
    # the rate in, the server takes half the pushes
    full, halved = (simulate("async_ps", 8, inp, steps=200)["fovs_per_s"] for inp in (SimInputs(**base), incast))
    assert halved == pytest.approx(full / 2, rel=0.05)
    assert simulate("async_ps", 1, incast)["fovs_per_s"] == simulate("async_ps", 1, SimInputs(**base))["fovs_per_s"]
