"""`ffnbench sweep`, `report` and `plot` end to end on two tiny runs, plus the sweep file's checks."""
import json
import os

import pytest
import yaml

from ffnbench.bench.run import launcher, peak
from ffnbench.bench.plan import sweep
from ffnbench.bench.run.context import layout_of
from conftest import ROOT, ffnbench

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_sweep(directory, spec, name="sweep.yaml"):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        yaml.safe_dump(spec, f)
    return path


TINY = {"name": "tiny", "base": "configs/smoke.yaml",  # relative to the working directory
        "set": {"train.steps": 4, "eval.every": 2}, "grid": {"train.batch_size": [1, 2]}}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """Two single-process runs at 2 batch sizes; (sweep file, results dir, first output)."""
    tmp = str(tmp_path_factory.mktemp("sweep"))
    path = write_sweep(tmp, TINY)
    out = os.path.join(tmp, "results")
    first = ffnbench("sweep", path, "--out", out, timeout=300)
    assert first.returncode == 0, first.stderr
    return path, out, first


def read_index(out):
    with open(os.path.join(out, "index.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_sweep_runs_every_grid_point_to_completion(tiny_sweep):
    _, out, _ = tiny_sweep
    index = read_index(out)
    assert [r["id"] for r in index["runs"]] == ["train.batch_size=1,rep=0", "train.batch_size=2,rep=0"]
    for run in index["runs"]:
        assert run["status"] == "complete" and run["error"] is None
        assert os.path.isfile(os.path.join(run["run_dir"], "summary.json"))
        with open(os.path.join(run["run_dir"], "config.yaml")) as f:
            assert yaml.safe_load(f)["train"]["batch_size"] == run["overrides"]["train.batch_size"]


@pytest.mark.slow
def test_rerunning_a_sweep_skips_completed_runs(tiny_sweep):
    path, out, _ = tiny_sweep
    summaries = [os.path.join(r["run_dir"], "summary.json") for r in read_index(out)["runs"]]
    before = [os.path.getmtime(s) for s in summaries]
    again = ffnbench("sweep", path, "--out", out)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped (already complete)") == 2
    assert [os.path.getmtime(s) for s in summaries] == before


def test_a_run_from_before_a_new_config_field_still_counts_as_done(tmp_path):
    planned = sweep.plan(sweep.load_sweep(write_sweep(str(tmp_path), TINY)))
    run_dir = tmp_path / "out" / planned[0]["id"]
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "complete"}))
    older = json.loads(json.dumps(planned[0]["config"]))
    del older["model"]["init_from"]  # a field added after the run: its default is what the run had
    (run_dir / "config.yaml").write_text(yaml.safe_dump(older))
    sweep.check_resumable(planned, str(tmp_path / "out"))
    older["inference"]["segment_threshold"] = 0.5  # inference settings do not change what was trained
    (run_dir / "config.yaml").write_text(yaml.safe_dump(older))
    sweep.check_resumable(planned, str(tmp_path / "out"))
    older["train"]["lr"] *= 2  # a different experiment is still refused
    (run_dir / "config.yaml").write_text(yaml.safe_dump(older))
    with pytest.raises(sweep.ConfigError, match="holds a completed run with a different config"):
        sweep.check_resumable(planned, str(tmp_path / "out"))


def test_report_of_the_sweep(tiny_sweep):
    _, out, _ = tiny_sweep
    result = ffnbench("report", out)
    assert result.returncode == 0, result.stderr
    assert "2 of 2 runs complete" in result.stdout
    assert "| batch_size=1 | single |" in result.stdout and "| batch_size=2 | single |" in result.stdout
    assert os.path.isfile(os.path.join(out, "report.csv"))


def test_plot_writes_the_always_produced_figures(tiny_sweep):
    _, out, _ = tiny_sweep
    result = ffnbench("plot", out)
    assert result.returncode == 0, result.stderr
    assert "staleness: skipped" in result.stdout  # no parameter server in this sweep
    for name in ("scaling", "convergence", "breakdown", "batch_size"):
        png = os.path.join(out, "plots", f"{name}.png")
        with open(png, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
        assert os.path.getsize(png) > 10_000
        assert os.path.getsize(os.path.join(out, "plots", f"{name}.svg")) > 0


@pytest.mark.parametrize("change, message", [
    ({"colour": "blue"}, "colour: unknown key"),
    ({"grid": {}}, "grid: must be a non-empty mapping"),
    ({"grid": {"train.lr": 0.1}}, "grid.train.lr: must be a non-empty list"),
    ({"grid": {"train.lrate": [0.1]}}, "config field train.lrate: unknown field"),
    ({"runs": [{"train.lr": 0.1, "repeats": 0}]}, "runs[0].repeats: must be an integer >= 1"),
    ({"runs": [{"preset": "big"}], "presets": {"small": {"model.depth": 2}}}, "runs[0].preset: 'big' is not one of"),
])
def test_malformed_sweep_file_exits_2_with_one_line(tmp_path, change, message):
    path = write_sweep(str(tmp_path), {**TINY, **change})
    result = ffnbench("sweep", path, "--out", str(tmp_path / "results"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ffnbench: error: ")
    assert message in result.stderr
    assert not os.path.exists(tmp_path / "results")  # nothing started


def test_a_variant_can_have_more_seeds_than_the_rest(tmp_path):
    spec = {"name": "tiny", "base": "configs/smoke.yaml", "set": TINY["set"], "repeats": 2,
            "runs": [{"train.batch_size": 1}, {"train.batch_size": 2, "repeats": 4}]}
    planned = sweep.plan(sweep.load_sweep(write_sweep(str(tmp_path), spec)))
    ids = [r["id"] for r in planned]
    assert ids == ["train.batch_size=1,rep=0", "train.batch_size=2,rep=0", "train.batch_size=1,rep=1",
                   "train.batch_size=2,rep=1", "train.batch_size=2,rep=2", "train.batch_size=2,rep=3"]
    assert [r["config"]["train"]["seed"] for r in planned][-2:] == [2, 3]


def test_a_preset_sets_its_fields_and_names_the_run_by_itself(tmp_path):
    spec = {**TINY, "grid": {"train.batch_size": [1]}, "presets": {"deep": {"model.depth": 3, "train.lr": 0.01}},
            "runs": [{"preset": "deep", "train.lr": 0.02}, {"train.lr": 0.03}]}
    planned = sweep.plan(sweep.load_sweep(write_sweep(str(tmp_path), spec)))
    assert [r["id"] for r in planned] == ["preset=deep,train.lr=0.02,train.batch_size=1,rep=0",
                                          "train.lr=0.03,train.batch_size=1,rep=0"]
    deep, plain = (r["config"] for r in planned)
    assert (deep["model"]["depth"], deep["train"]["lr"]) == (3, 0.02)  # the variant's own value wins
    assert plain["model"]["depth"] != 3


def test_fov_budget_gives_every_run_the_same_fovs():
    spec = sweep.load_sweep(os.path.join(ROOT, "configs/sweeps/demo.yaml"))
    planned, budget = sweep.plan(spec), spec["fov_budget"]
    for run in planned:
        cfg = run["config"]
        fovs = cfg["train"]["steps"] * layout_of(cfg).workers * cfg["train"]["batch_size"]
        assert budget <= fovs < budget + layout_of(cfg).workers * cfg["train"]["batch_size"]
    steps = {r["config"]["strategy"]: r["config"]["train"]["steps"] for r in planned}
    single, two_workers = steps["single"], steps["allreduce"]
    assert single == 2 * two_workers  # single does twice the steps of each of two workers


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    def fake_run(cfg, out=None, node_peak=None, volumes_dir=None):
        return out, "boom" if cfg["train"]["batch_size"] == 1 else None
    monkeypatch.setattr(launcher, "run_experiment", fake_run)
    monkeypatch.setattr(peak, "node_peak", lambda during: {"flops_per_s": {"float32": 1e11, "bfloat16": 3e11}})
    path = write_sweep(str(tmp_path), {**TINY, "base": os.path.join(ROOT, "configs/smoke.yaml")})
    sweep_dir, failed = sweep.run_sweep(path, str(tmp_path / "results"))
    runs = read_index(sweep_dir)["runs"]
    assert failed == 1
    assert [(r["status"], r["error"]) for r in runs] == [("failed", "boom"), ("complete", None)]


@pytest.mark.parametrize("study", sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "configs/studies"))))
def test_every_study_run_has_a_directory_name_the_file_system_takes(study):
    planned = sweep.plan(sweep.load_sweep(os.path.join(ROOT, "configs/studies", f"{study}.yaml")))
    assert len({r["id"] for r in planned}) == len(planned)
    assert all(len(r["id"]) <= 255 for r in planned)
    if study == "sync_async":  # the long staleness histograms appear as hashes, the short one as itself
        histograms = [r["id"] for r in planned if "histogram=" in r["id"]]
        assert any("staleness_histogram=0x11x145x984x117x19x4," in i for i in histograms)
        assert sum("staleness_histogram=sha256-" in i for i in histograms) == 2 * 2 * 3  # 2 N, lr / tau or not


def test_only_runs_the_chosen_runs_now_and_leaves_the_rest_pending(tmp_path):
    path = write_sweep(str(tmp_path), TINY)
    out = tmp_path / "results"
    r = ffnbench("sweep", path, "--out", str(out), "--only", "batch_size=2,", timeout=300)
    assert r.returncode == 0, r.stderr
    assert {e["id"]: e["status"] for e in read_index(out)["runs"]} == {
        "train.batch_size=1,rep=0": "pending", "train.batch_size=2,rep=0": "complete"}
    for bad, message in (("(", "not a regular expression"), ("lr=", "matches none of the sweep's 2 runs")):
        r = ffnbench("sweep", path, "--out", str(tmp_path / "other"), "--only", bad)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / "other").exists()  # nothing started
