"""pairbench: a 2-rank run against twice one 1-thread run alone, with two independent runs as the ceiling."""
import json

import pytest

from conftest import ffnbench
from ffnbench.bench.measure.pairbench import CEILING, UNIT, CandidateError, parse_candidate, print_table, ratios


def test_candidates_are_overrides():
    assert parse_candidate("strategy=allreduce  ranks=2") == ["strategy=allreduce", "ranks=2"]
    for bad in ("", "allreduce", "=2"):
        with pytest.raises(CandidateError, match="KEY=VALUE"):
            parse_candidate(bad)


def test_each_ratio_is_against_its_own_rounds_unit(capsys):
    rounds = [{UNIT: 100.0, CEILING: 190.0, "ring": 180.0}, {UNIT: 50.0, CEILING: 96.0, "ring": 91.0},
              {UNIT: 80.0, CEILING: 150.0, "ring": 150.0}]
    assert ratios(rounds) == {CEILING: [0.95, 0.96, 0.9375], "ring": [0.9, 0.91, 0.9375]}
    assert print_table(rounds, "today") == []
    out = capsys.readouterr().out
    assert f"{CEILING:60s}  0.950" in out and f"{'ring':60s}  0.910" in out and "warning" not in out


def test_a_candidate_above_the_ceiling_says_the_ceiling_is_wrong(capsys):
    rounds = [{UNIT: 100.0, CEILING: 150.0, "ring": 190.0}]
    assert print_table(rounds, "today") == ["ring"]
    assert "the ceiling was measured wrong" in capsys.readouterr().out


def test_a_bad_candidate_is_one_line_before_anything_runs(tmp_path):
    result = ffnbench("pairbench", "configs/smoke.yaml", "--candidate", "strategy=ps_async ranks=1",
                      "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "ranks > servers" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_one_round_measures_the_unit_the_ceiling_and_the_candidate(tmp_path):
    out = tmp_path / "pairs"
    result = ffnbench("pairbench", "configs/smoke.yaml", "--rounds", "1", "--candidate",
                      "strategy=mpi_allreduce ranks=2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "pairbench.json").read_text())
    (only,) = saved["rounds"]
    assert set(only) == {UNIT, CEILING, "strategy=mpi_allreduce ranks=2"} and all(v > 0 for v in only.values())
    for run in ("single", "pair-0", "pair-1", "strategy-mpi_allreduce_ranks-2"):
        assert json.loads((out / "round-0" / run / "summary.json").read_text())["status"] == "complete"
    assert "pair ceiling" in result.stdout and "unit:" in result.stdout


def test_a_run_that_did_not_complete_stops_the_bench(tmp_path):
    import subprocess
    import sys
    from ffnbench.bench.measure.pairbench import _rate
    failed = subprocess.Popen([sys.executable, "-c", "import sys; print('ffnbench: error: boom', file=sys.stderr); "
                               "sys.exit(1)"], stderr=subprocess.PIPE, text=True)
    with pytest.raises(RuntimeError, match="did not complete .*boom"):
        _rate(failed, str(tmp_path), 30)
    (tmp_path / "summary.json").write_text(json.dumps({"status": "diverged"}))
    exited_0 = subprocess.Popen([sys.executable, "-c", "pass"], stderr=subprocess.PIPE, text=True)
    with pytest.raises(RuntimeError, match="did not complete"):  # exit 0 is not enough: the summary must say complete
        _rate(exited_0, str(tmp_path), 30)
