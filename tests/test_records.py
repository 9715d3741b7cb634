"""metrics.json has one layout (records.RunResult) that train writes and aggregate reads."""

import shutil

import pandas as pd
import pytest
import tiny_study

from scaleaudit import aggregate, job, records
from scaleaudit.errors import ScaleauditError
from scaleaudit.files import read_json, write_json


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("records")
    from mirror import write_sums

    from scaleaudit.synthetic import write_npz

    mirror = tmp / "mirror"
    write_npz(mirror / "breastmnist.npz")
    write_sums(mirror)
    record = tiny_study.fetch(mirror, tmp / "data")
    job.run(tiny_study.spec(epochs=1), record, tmp / "run", tracking=None, weights=None, threads=1)
    return tmp / "run" / "metrics.json"


def test_metrics_json_round_trips_and_aggregates(one_run):
    result = records.RunResult.load(one_run)
    assert result.to_dict() == read_json(one_run)
    assert result.run.config_hash == tiny_study.spec(epochs=1).config_hash and result.epochs_run == 1
    table = aggregate.collect([one_run])
    assert table.loc[0, "test_auc"] == result.test["auc"] and table.loc[0, "arm"] == "cnn_a"
    assert table.loc[0, "weights_source"] == "none (trained from scratch)"


def test_a_foreign_metrics_file_is_a_clear_error(one_run, tmp_path):
    doc = read_json(one_run)
    del doc["cost"]
    doc["extra"] = 1
    write_json(tmp_path / "metrics.json", doc)
    with pytest.raises(ScaleauditError, match="missing cost; unknown extra") as err:
        aggregate.collect([tmp_path / "metrics.json"])
    assert "train it again" in err.value.fix


def test_spec_hash_covers_every_field_and_bad_specs_are_rejected():
    spec = tiny_study.spec()
    assert records.RunSpec.from_dict(spec.to_dict()) == spec
    fields = {k: v for k, v in spec.to_dict().items() if k != "config_hash"}
    assert records.RunSpec.create(**fields).config_hash == spec.config_hash
    assert records.RunSpec.create(**(fields | {"seed": 2})).config_hash != spec.config_hash
    with pytest.raises(ScaleauditError, match="missing seed"):
        records.RunSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "seed"})


def test_training_flops_are_recorded_and_a_run_recorded_before_them_reads_as_unknown(one_run, tmp_path):
    from scaleaudit import cost

    result = records.RunResult.load(one_run)
    flops, n = result.cost["flops_per_image"], result.n_train
    # end to end: forward plus backward (about 3 forward passes) per training image per epoch
    assert result.cost["train_flops"] == 3 * flops * n * result.epochs_run
    assert aggregate.collect([one_run]).loc[0, "train_flops"] == result.cost["train_flops"]
    # a linear probe runs the frozen backbone forward only: once per image on cached features
    probe = {"train": "linear_probe"}
    assert cost.training_flops(flops, n, 5, probe, cached_features=True) == flops * n
    assert cost.training_flops(flops, n, 5, probe, cached_features=False) == flops * n * 5
    doc = read_json(one_run)
    del doc["cost"]["train_flops"]
    write_json(tmp_path / "metrics.json", doc)
    for kept in (records.PREDICTIONS, doc["best_weights"]["file"]):  # aggregate checks the metrics against them
        shutil.copy(one_run.parent / kept, tmp_path)
    assert aggregate.collect([tmp_path / "metrics.json"])["train_flops"].isna().all()


def test_gpu_sharing_is_recorded_and_a_booking_id_stays_text(one_run, tmp_path):
    """Each run records how it used its GPU (a CPU run: alone, no booking, no GPU time); a run table keeps a Slurm
    booking id as text, and a run recorded before sharing was recorded reads as unshared."""
    result = records.RunResult.load(one_run)
    assert {k: result.cost[k] for k in ("runs_per_gpu", "gpu_sharing", "gpu_booking", "gpu_start", "gpu_end")} == {
        "runs_per_gpu": 1,
        "gpu_sharing": "exclusive",
        "gpu_booking": "",
        "gpu_start": None,
        "gpu_end": None,
    }
    row = result.row()
    assert {k: row[k] for k in ("runs_per_gpu", "gpu_sharing", "gpu_booking")} == {
        "runs_per_gpu": 1,
        "gpu_sharing": "exclusive",
        "gpu_booking": "",
    }
    shared = result.to_dict()
    shared["cost"] |= {"runs_per_gpu": 8, "gpu_sharing": "mps", "gpu_booking": "0042", "gpu_start": 1.5, "gpu_end": 9.5}
    table = pd.DataFrame([records.RunResult.from_dict(shared).row()])
    table.to_csv(tmp_path / "runs.csv", index=False)
    back = records.read_runs(tmp_path / "runs.csv").iloc[0]
    assert (back["gpu_booking"], back["gpu_sharing"], back["runs_per_gpu"], back["gpu_end"]) == ("0042", "mps", 8, 9.5)
    for key in ("runs_per_gpu", "gpu_sharing", "gpu_booking", "gpu_start", "gpu_end"):
        del shared["cost"][key]
    old = records.RunResult.from_dict(shared).row()
    assert (old["runs_per_gpu"], old["gpu_sharing"], old["gpu_booking"]) == (1, "", "")
