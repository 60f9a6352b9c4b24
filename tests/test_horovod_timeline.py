"""`ffnbench timeline`: a run's exchange split by Horovod's timeline, beside its step records."""
import json

import pytest

from conftest import ffnbench
from ffnbench.bench.analyse.horovod_timeline import breakdown


def write_run(run_dir, steps=30, cut_short=False):
    events = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "HorovodAllreduce_concat_0"}},
              {"name": "process_name", "ph": "M", "pid": 2, "args": {"name": "HorovodBroadcast_w_0"}},
              {"ph": "B", "name": "NEGOTIATE_BROADCAST", "ts": 0, "pid": 2}, {"ph": "E", "ts": 99000, "pid": 2}]
    for step in range(steps):
        t = 100_000 + step * 10_000  # microseconds
        events += [{"ph": "B", "name": "NEGOTIATE_ALLREDUCE", "ts": t, "pid": 1}, {"ph": "E", "ts": t + 2000, "pid": 1},
                   {"ph": "B", "name": "ALLREDUCE", "ts": t + 2010, "pid": 1},
                   {"ph": "B", "name": "MPI_ALLREDUCE", "ts": t + 2020, "pid": 1}, {"ph": "E", "ts": t + 2120, "pid": 1},
                   {"ph": "E", "ts": t + 2510, "pid": 1}]
    text = "[\n" + ",\n".join(json.dumps(e) for e in events) + ("," if cut_short else "\n]")
    (run_dir / "horovod_timeline.json").write_text(text)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in range(steps):
            for rank in (0, 1):
                f.write(json.dumps({"kind": "step", "rank": rank, "step": step, "time": step * 0.01, "fovs": 8,
                                    "loss": 0.5, "model_version": step + 1, "compute_s": 0.006, "comm_s": 0.0035,
                                    "data_s": 0.0005, "wait_s": 0.0, "step_s": 0.01}) + "\n")


@pytest.mark.parametrize("cut_short", [False, True])
def test_the_exchange_is_split_into_horovods_activities(tmp_path, cut_short):
    write_run(tmp_path, cut_short=cut_short)
    result = breakdown(tmp_path)
    assert result["steps"] == 10 and result["comm_ms"] == pytest.approx(3.5) and result["step_ms"] == pytest.approx(10)
    assert result["NEGOTIATE_ALLREDUCE"] == pytest.approx(2.0) and result["ALLREDUCE"] == pytest.approx(0.5)
    assert result["MPI_ALLREDUCE"] == pytest.approx(0.1) and "NEGOTIATE_BROADCAST" not in result


def test_the_command_prints_what_is_left_beyond_horovods_activities(tmp_path):
    write_run(tmp_path)
    out = ffnbench("timeline", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "rest (dispatch, return)    1.000 ms" in out.stdout and "(inside ALLREDUCE)" in out.stdout


def test_a_run_without_a_timeline_is_one_line(tmp_path):
    out = ffnbench("timeline", str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "strategy_options.timeline=true" in out.stderr
