"""The push order of emulated_async: which version each emulated worker's gradient was computed on."""
import pytest

from ffnbench.strategies.emulated import PushOrder


def staleness_by_worker(speeds, bound, updates):
    """Drive the order as the strategy does; returns {worker: [tau, ...]}."""
    order, version, taus = PushOrder([1.0 / s for s in speeds], bound), 0, {}
    for _ in range(updates):
        worker, read = order.next_push()
        taus.setdefault(worker, []).append(version - read)
        version += 1
        order.pushed(worker, version)
    return taus


def test_equal_speeds_are_round_robin_with_tau_n_minus_1():
    taus = staleness_by_worker([1, 1, 1], None, 30)
    assert [taus[w][0] for w in range(3)] == [0, 1, 2]  # the first round all read version 0
    assert all(t == 2 for w in range(3) for t in taus[w][1:])
    assert [len(taus[w]) for w in range(3)] == [10, 10, 10]


def test_one_worker_is_never_stale():
    assert set(staleness_by_worker([1], None, 10)[0]) == {0}


def test_a_slow_worker_is_staler_and_pushes_less():
    taus = staleness_by_worker([1, 1, 1, 0.25], None, 200)
    assert len(taus[3]) == pytest.approx(200 / 13, abs=2)   # a quarter of a fast worker's rate
    assert min(taus[3][1:]) >= 12                           # 3 fast workers x 4 steps pass meanwhile
    assert max(max(taus[w]) for w in range(3)) <= 3


def test_ssp_bound_holds_the_fast_workers_back():
    taus = staleness_by_worker([1, 1, 1, 0.25], 0, 200)
    counts = [len(taus[w]) for w in range(4)]
    assert max(counts) - min(counts) <= 1                   # s=0: lockstep in pushes
    assert max(max(t) for t in taus.values()) <= 3          # at most (s+1)(N-1) updates in between
    loose = staleness_by_worker([1, 1, 1, 0.25], 2, 200)
    assert max(len(t) for t in loose.values()) - min(len(t) for t in loose.values()) <= 3
    assert max(loose[3]) > max(taus[3])                     # a looser bound lets more staleness through
