"""commbench's yardsticks: the fastest raw way, and a loud warning when ours beats it beyond noise."""
from ffnbench.bench.measure.commbench import HOROVOD_WAY_NAMES, median_of, print_table


def results(raw, mpi_allreduce, horovod_seconds, p2p, ps_round_trip):
    horovod = {"cycle 1 ms": {**{way: horovod_seconds for way in HOROVOD_WAY_NAMES.values()}, "4 bytes": 0.0008,
                              "no Horovod": 0.0001, "4 bytes, eager": 0.0009, "no Horovod, eager": 0.00005}}
    ps = {**p2p, "PS push + pull (our protocol)": ps_round_trip, "server optimizer step": 0.001}
    return {"raw": raw, "mpi_allreduce": {"mpi_allreduce": mpi_allreduce}, "horovod": horovod,
            "ps": {"yield on": ps, "yield off": {**ps, "raw Sendrecv": 0.00008}}}


RAW = {"raw Allreduce, yield on": 0.012, "raw Allreduce, yield off": 0.0004,
       "raw Iallreduce+Wait, yield on": 0.002, "raw Iallreduce+Wait, yield off": 0.0005}
P2P = {"raw Sendrecv": 0.0002, "raw Send then Recv": 0.0001}


def test_ratios_are_against_the_fastest_raw_way(capsys):
    assert print_table(results(RAW, 0.0005, 0.0011, P2P, 0.00012), 49393, 2) == []
    out = capsys.readouterr().out
    assert "fastest raw way (raw Allreduce, yield off)" in out
    assert "/ best raw =   1.25" in out and "call alone 0.100 ms" in out and "/ best raw =   2.75" in out and "warning" not in out
    # Horovod's cost split: 0.8 ms of its 1.1 ms is its floor
    assert "0.800 ms is what a 4-byte all-reduce costs the same way" in out and "0.300 ms the bytes" in out
    # each mpirun's round trip against the fastest raw way of the same mpirun
    assert "PS push + pull (our protocol), yield on" in out and "/ best raw =   1.20" in out
    assert "/ best raw =   1.50" in out


def test_a_yardstick_that_ours_beats_is_called_wrong(capsys):
    raw = {"raw Allreduce, yield on": 0.012}  # e.g. a blocking call that yields in its progress loop
    assert print_table(results(raw, 0.0006, 0.02, P2P, 0.00005), 49393, 2) == [
        "mpi_allreduce", "PS push + pull (our protocol), yield on", "PS push + pull (our protocol), yield off"]
    assert "does not bound them from below" in capsys.readouterr().out


def test_each_figure_is_its_median_over_the_rounds():
    rounds = [{"raw": {"a": 3.0, "b": 1.0}, "ps": {"c": 5.0}}, {"raw": {"a": 1.0, "b": 2.0}, "ps": {"c": 4.0}},
              {"raw": {"a": 2.0, "b": 9.0}, "ps": {"c": 6.0}}]
    assert median_of(rounds) == {"raw": {"a": 2.0, "b": 2.0}, "ps": {"c": 5.0}}
