"""The fast training path: it learns as the MedMNIST reference loop does, and a job's imports stay light."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from scaleaudit import runtime

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    """A module of benchmarks/ (plain scripts, not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_training_import_leaves_out_report_stack_and_tracking():
    profile = _module("bench_train").import_profile()
    assert profile["loaded"] == [], f"importing scaleaudit.train loads {profile['loaded']}"


def test_fast_path_and_reference_loop_both_learn_breastmnist(real_mirror, tmp_path):
    import torch

    from scaleaudit import config, data, models, train

    bench, reference = _module("bench_train"), _module("reference")
    flag, epochs, seed = "breastmnist", 6, 0
    path = real_mirror / f"{flag}.npz"
    torch.set_num_threads(2)

    cfg = bench.study_config(flag, "scaleaudit_cnn_small", None, epochs, 128, seed, "cpu", "auto")
    spec = config.run_spec(cfg, flag, 28, "arm", 1.0, seed)
    runtime.configure_torch(seed, None)
    trainer = train.Trainer(spec, path, None, torch.device("cpu"), log=lambda msg: None)
    trainer.fit(tmp_path / train.CHECKPOINT)
    _, fast, _ = trainer.test()

    meta = data.info(flag)
    torch.manual_seed(seed)
    model = models.build(cfg["arms"]["arm"], meta["n_classes"], meta["n_channels"], 28)
    ref = reference.train_and_eval(model, data.load_splits(path, flag, 28), meta["task"], epochs, 128, seed=seed)[
        "test"
    ]

    # BreastMNIST's test split has 156 images: chance is 0.5, a trained small CNN reaches ~0.8-0.9.
    assert fast["auc"] > 0.7, fast
    assert ref["auc"] > 0.7, ref
    assert abs(fast["auc"] - ref["auc"]) < 0.15, (fast, ref)
