"""Bad input is answered before any compute, with a message naming the problem and the fix (exit code 2)."""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess

import pytest
import tiny_study
import torch
import yaml
from mirror import write_sums

from scaleaudit import cli, job, models, train
from scaleaudit.errors import ScaleauditError
from scaleaudit.files import file_digest


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def fetch_cli(capsys, mirror, out) -> tuple[int, str]:
    return run_cli(
        capsys, "fetch-data", "--dataset", "breastmnist", "--size", "28", "--out", str(out), "--mirror", str(mirror)
    )


# -- data ------------------------------------------------------------------------------------------


def test_truncated_dataset_in_mirror(capsys, tiny_mirror, tmp_path):
    npz = tiny_mirror / "breastmnist.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    write_sums(tiny_mirror)  # the checksum matches: only opening the file shows the damage
    out = tmp_path / "data" / "breastmnist_28.npz"
    code, err = fetch_cli(capsys, tiny_mirror, out)
    assert code == 2
    assert "corrupt or truncated" in err and "fix:" in err
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_checksum_mismatch(capsys, tiny_mirror, tmp_path):
    npz = tiny_mirror / "breastmnist.npz"
    npz.write_bytes(npz.read_bytes() + b"\0")
    out = tmp_path / "data" / "breastmnist_28.npz"
    code, err = fetch_cli(capsys, tiny_mirror, out)
    assert code == 2
    assert "checksum mismatch" in err and "stage the file again" in err
    assert not out.exists()


def test_checksum_list_of_other_files(capsys, tiny_mirror, tmp_path):
    """A SHA256SUMS that does not list the file is not a corrupt download: it is said so, with the line to add."""
    sums = tiny_mirror / "SHA256SUMS"
    sums.write_text(sums.read_text().replace("breastmnist.npz", "breastmnist_64.npz"))
    code, err = fetch_cli(capsys, tiny_mirror, tmp_path / "data" / "breastmnist_28.npz")
    assert code == 2
    assert f"{tiny_mirror}/SHA256SUMS does not list breastmnist.npz (it lists breastmnist_64.npz)" in err
    assert "corrupt" not in err and "  breastmnist.npz' to SHA256SUMS" in err


def test_mirror_without_the_file(capsys, tmp_path):
    mirror = tmp_path / "empty-mirror"
    mirror.mkdir()
    code, err = fetch_cli(capsys, mirror, tmp_path / "data" / "breastmnist_28.npz")
    assert code == 2
    assert "has no breastmnist.npz" in err and "stage" in err


def test_refetch_from_corrupt_source_keeps_the_good_file(capsys, tiny_mirror, tmp_path):
    out = tmp_path / "data" / "breastmnist_28.npz"
    assert fetch_cli(capsys, tiny_mirror, out)[0] == 0
    good_sha, good_record = file_digest(out), out.with_suffix(".json").read_text()
    npz = tiny_mirror / "breastmnist.npz"
    npz.write_bytes(npz.read_bytes()[:1000])
    write_sums(tiny_mirror)
    code, err = fetch_cli(capsys, tiny_mirror, out)
    assert code == 2 and "corrupt or truncated" in err
    assert file_digest(out) == good_sha and out.with_suffix(".json").read_text() == good_record
    assert sorted(p.name for p in out.parent.iterdir()) == ["breastmnist_28.json", "breastmnist_28.npz"]


def test_dataset_damaged_after_fetch_fails_before_training(capsys, tiny_mirror, tmp_path):
    record = tiny_study.fetch(tiny_mirror, tmp_path / "data")
    path = pathlib.Path(record["file"])
    path.write_bytes(path.read_bytes()[:-500])
    code, err = run_cli(
        capsys,
        "train",
        "--spec",
        json.dumps(tiny_study.spec().to_dict()),
        "--data",
        str(path.with_suffix(".json")),
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 2 and "corrupt or truncated" in err and "fetch it again" in err
    assert not (tmp_path / "run" / train.CHECKPOINT).exists()


# -- configuration ---------------------------------------------------------------------------------


def _set(path: str, value):
    def edit(cfg):
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[last] = value

    return edit


BAD_CONFIGS = {
    "unknown flag": (
        _set("data.datasets.0.flag", "breastmnistx"),
        ["unknown dataset flag 'breastmnistx'", "breastmnist,"],
    ),
    "unknown arm": (_set("design.arms", ["cnn_a", "cnn_x"]), ["unknown arm 'cnn_x'", "define it under `arms:`"]),
    "unknown model": (_set("arms.cnn_a.model", "resnet_huge"), ["unknown model 'resnet_huge'", "timm model name"]),
    "unknown size": (
        _set("data.datasets.0.sizes", [32]),
        ["data/datasets/0/sizes/0", "32 is not one of", "28, 64, 128 or 224"],
    ),
    "unknown key": (_set("studyy", "x"), ["'studyy' was unexpected", "lists every allowed key"]),
    "unknown recipe key": (_set("recipes.tiny.epoch", 3), ["recipes/tiny", "'epoch' was unexpected"]),
    "zero seeds": (_set("design.seeds", 0), ["design/seeds", "n >= 1"]),
    "negative seeds": (_set("design.seeds", -3), ["design/seeds", "n >= 1"]),
    "fraction zero": (_set("design.fractions", [0.5, 0]), ["design/fractions/1", "in (0, 1]"]),
    "fraction above one": (_set("design.fractions", [1.5]), ["design/fractions/0", "in (0, 1]"]),
    "nan lr": (_set("recipes.tiny.lr", float("nan")), ["at recipes/tiny/lr = nan", "must be finite"]),
    "infinite lr": (_set("recipes.tiny.lr", float("inf")), ["at recipes/tiny/lr = inf", "must be finite"]),
    "nan fraction": (_set("design.fractions", [float("nan")]), ["at design/fractions/0 = nan", "must be finite"]),
    "nan rope": (_set("verdict.rope", float("nan")), ["at verdict/rope = nan"]),
    "infinite weight decay": (_set("recipes.tiny.weight_decay", float("-inf")), ["recipes/tiny/weight_decay = -inf"]),
    "unknown pretrained tag": (
        _set("arms.cnn_a", {"model": "resnet18.nosuchtag", "pretrained": True, "recipe": "tiny", "group": "large"}),
        ["no pretrained weights named 'resnet18.nosuchtag'"],
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_is_rejected_with_problem_and_fix(capsys, tmp_path, case):
    edit, expected = BAD_CONFIGS[case]
    cfg = yaml.safe_load(yaml.safe_dump(tiny_study.TINY_CONFIG))
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, err = run_cli(capsys, "validate-config", str(path))
    assert code == 2
    assert "fix:" in err
    for text in expected:
        assert text in err


@pytest.mark.parametrize(
    "edit, expected",
    [
        ({"design": {"seeds": 0}}, "at design/seeds: 0 is not valid"),
        ({"arms": {"cnn_small": {"model": "resnet_huge"}}}, "unknown model 'resnet_huge'"),
    ],
    ids=["schema", "reference"],
)
def test_snakemake_rejects_a_bad_config_at_parse_time(tmp_path, edit, expected):
    work = tiny_study.copy_workflow(tmp_path / "wf")
    (work / "bad.yaml").write_text(yaml.safe_dump(edit))
    proc = subprocess.run(
        ["snakemake", "-n", "--cores", "1", "--configfile", "bad.yaml"],
        cwd=work,
        env=tiny_study.env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr and "fix:" in proc.stdout + proc.stderr
    assert not (work / "results").exists()


# -- weights and checkpoints -----------------------------------------------------------------------


def _safetensors(model: torch.nn.Module, path: pathlib.Path) -> pathlib.Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


RESNET18 = {"model": "resnet18", "pretrained": True, "weights_tag": None, "train": "finetune"}


def test_pretrained_weights_missing_offline(tmp_path):
    proc = subprocess.run(
        tiny_study.scaleaudit_cli()
        + ["fetch-weights", "--arm", "r18", "--arm-spec", json.dumps(RESNET18), "--out", str(tmp_path / "r18.json")],
        env=tiny_study.env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 2, proc.stderr
    assert "pretrained weights resnet18.a1_in1k are not available" in proc.stderr
    assert "SCALEAUDIT_WEIGHTS_DIR" in proc.stderr and "weights_file" in proc.stderr
    assert not (tmp_path / "r18.json").exists()


def test_weights_of_another_architecture(tmp_path):
    from timm import create_model

    wrong = _safetensors(create_model("scaleaudit_cnn_small", num_classes=2, in_chans=1), tmp_path / "cnn.safetensors")
    with pytest.raises(ScaleauditError, match="does not fit resnet18") as err:
        models.build(RESNET18, 2, 1, 28, {"file": str(wrong)})
    assert "stage the weights of this exact model" in str(err.value)


def test_weights_with_another_class_count_get_a_new_head(tmp_path):
    """A checkpoint fine-tuned on another label set: the backbone loads, the head is the task's (timm drops it)."""
    from timm import create_model

    source = create_model("resnet18", num_classes=10)
    path = _safetensors(source, tmp_path / "resnet18_10cls.safetensors")
    model = models.build(RESNET18, 2, 3, 28, {"file": str(path)})
    assert model.get_classifier().out_features == 2
    assert torch.equal(model.conv1.weight, source.conv1.weight)


class _Exploit:
    """Unpickling this writes a marker file: proof that loading ran code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _pickle_bomb(path: pathlib.Path, marker: pathlib.Path, payload: dict) -> pathlib.Path:
    torch.save(payload | {"exploit": _Exploit(marker)}, path)
    return path


def test_pickled_weights_file_is_refused_without_running_code(tmp_path):
    from timm import create_model

    marker = tmp_path / "pwned"
    path = _pickle_bomb(tmp_path / "resnet18.pth", marker, create_model("resnet18").state_dict())
    with pytest.raises(ScaleauditError, match="pickled Python objects") as err:
        models.build(RESNET18, 2, 3, 28, {"file": str(path)})
    assert "safetensors" in str(err.value)
    assert not marker.exists()


def test_pickled_checkpoint_is_not_executed(capsys, tiny_mirror, tmp_path):
    record = tiny_study.fetch(tiny_mirror, tmp_path / "data")
    spec = tiny_study.spec(epochs=1)
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    _pickle_bomb(out / train.CHECKPOINT, marker, {"config_hash": spec.config_hash})
    result = job.run(spec, record, out, None, None, threads=1)
    assert not marker.exists()
    assert "is unreadable" in capsys.readouterr().err
    assert result["epochs_run"] == 1 and (out / "metrics.json").exists()


# -- tracking --------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tracking_server_that_does_not_answer(capsys, tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    code, err = run_cli(capsys, "init-tracking", "--uri", uri, "--experiment", "x", "--out", str(tmp_path / "t.json"))
    assert code == 2
    assert f"tracking server {uri} does not answer" in err and "unset" in err
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("sqlite:///{tmp}/no-such-folder/mlflow.db", "points into {tmp}/no-such-folder, which does not exist"),
        ("file://{tmp}/mlruns", "is a file store: scaleaudit tracks runs in a database or on a server"),
        ("{tmp}/mlruns", "is a file store"),
    ],
    ids=["sqlite in a missing folder", "file URI", "plain path"],
)
def test_tracking_uri_that_would_not_be_the_store_meant(capsys, tmp_path, uri, expected):
    uri = uri.format(tmp=tmp_path)
    code, err = run_cli(capsys, "init-tracking", "--uri", uri, "--experiment", "x", "--out", str(tmp_path / "t.json"))
    assert code == 2 and expected.format(tmp=tmp_path) in err and "fix:" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store was made


def test_tracking_server_gone_before_a_training_job(tmp_path):
    from scaleaudit.tracking import TrackedRun

    tracking = {"tracking_uri": f"http://127.0.0.1:{_closed_port()}", "experiment": "x", "experiment_id": "1"}
    with pytest.raises(ScaleauditError, match="does not answer"):
        TrackedRun(tracking, tmp_path / "mlflow_run_id", "r", {})
    assert not (tmp_path / "mlflow_run_id").exists()


def test_tracking_server_that_accepts_but_never_replies_times_out():
    from scaleaudit.tracking import check_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with pytest.raises(ScaleauditError, match="does not answer"):  # after the timeout, not never
            check_reachable(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=0.5)
