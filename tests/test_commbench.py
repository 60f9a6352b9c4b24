"""commbench's yardstick: the fastest raw way, and a loud warning when ours beats it beyond noise."""
from ffnbench.bench.commbench import print_table


def test_ratios_are_against_the_fastest_raw_way(capsys):
    raw = {"raw Allreduce, yield on": 0.012, "raw Allreduce, yield off": 0.0004,
           "raw Iallreduce+Wait, yield on": 0.002, "raw Iallreduce+Wait, yield off": 0.0005}
    ours = {"mpi_allreduce": 0.0005, "Horovod": 0.0011}
    assert print_table(raw, ours, 49393, 2) == []
    out = capsys.readouterr().out
    assert "fastest raw way (raw Allreduce, yield off)" in out
    assert "/ best raw =  1.25" in out and "/ best raw =  2.75" in out and "warning" not in out


def test_a_yardstick_that_ours_beats_is_called_wrong(capsys):
    raw = {"raw Allreduce, yield on": 0.012}  # e.g. a blocking call that yields in its progress loop
    assert print_table(raw, {"mpi_allreduce": 0.0006}, 49393, 2) == ["mpi_allreduce"]
    assert "does not bound them from below" in capsys.readouterr().out
