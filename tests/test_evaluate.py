import json

import h5py
import numpy as np
import pytest

from ffnbench.bench.measure.segmentation_eval import FIELDS

EVAL_FIELDS = set(FIELDS) | {"seconds", "whole_volume", "speed", "segmentation", "inference"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from conftest import ffnbench
    out = tmp_path_factory.mktemp("eval") / "run"
    r = ffnbench("run", "configs/smoke.yaml", "--set", "run.progress=false", "--set", "train.steps=20",
                 "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_evaluate_writes_every_field_and_a_figure(run_cli, smoke_run):
    r = run_cli("evaluate", str(smoke_run))
    assert r.returncode == 0, r.stderr
    result = json.load(open(smoke_run / "eval.json"))
    assert EVAL_FIELDS <= set(result)
    assert 0 <= result["are"] <= 1 and result["voi"] >= 0 and result["gt_segments"] > 1
    assert set(result["baselines"]) == {"one_segment", "threshold_components"}
    assert result["baselines"]["one_segment"]["voi_split"] == 0.0  # one segment never splits
    assert (smoke_run / "segmentation.png").stat().st_size > 10_000
    with h5py.File(smoke_run / "segmentation.h5") as f:
        assert f["segmentation"].dtype == np.uint64 and f["segmentation"].ndim == 3
        assert len(np.unique(f["segmentation"][()])) - 1 == result["whole_volume"]["segments"]
    assert "| FFN | whole volume |" in r.stdout and "FOVs/sec" in r.stdout


@pytest.mark.slow
def test_missing_checkpoint_is_one_clear_line(run_cli, smoke_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((smoke_run / "config.yaml").read_text())
    r = run_cli("evaluate", str(broken))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"ffnbench: error: no checkpoint in {broken}/checkpoints"]


def test_volume_shape_mismatch_is_one_clear_line(run_cli, smoke_run, tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((32, 40, 40), np.uint8)
        f["labels"] = np.zeros((32, 40, 41), np.int32)
    r = run_cli("evaluate", str(smoke_run), "--volume", f"{path}:image,{path}:labels")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "differs from labels shape" in lines[0]


@pytest.mark.parametrize("reference, match", [
    (np.zeros((3, 4, 5), np.uint64), "shape (3, 4, 5) differs from the volume's"),
    ("held-out shape, -1 inside", "holds negative ids (-1)"),
    (np.zeros((3, 4, 5), np.float32), "a segmentation holds integer ids, not float32"),
    (b"not hdf5", "--reference: "),
])
def test_a_bad_reference_is_one_line_and_writes_nothing(run_cli, smoke_run, tmp_path, reference, match):
    path = tmp_path / "ref.h5"
    if isinstance(reference, bytes):
        path.write_bytes(reference)
    else:
        if isinstance(reference, str):  # google/ffn's -1 markers, as its canvas holds them before saving
            import yaml
            reference = np.zeros(yaml.safe_load(open(smoke_run / "config.yaml"))["data"]["shape"], np.int32)
            reference[1, 2, 3] = -1
        with h5py.File(path, "w") as f:
            f["seg"] = reference
    out = tmp_path / "out"
    r = run_cli("evaluate", "--checkpoint", str(smoke_run / "checkpoints"), "--config", str(smoke_run / "config.yaml"),
                "--reference", f"{path}:seg", "--out", str(out))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and match in lines[0], r.stderr
    assert not out.exists()
