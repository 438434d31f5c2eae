import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import autoprune.train as T
from autoprune.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from autoprune.cli import main
from autoprune.data import load_data, normalize
from autoprune.errors import CheckpointError, DataError, TrainingError
from autoprune.evaluator import fine_tune, recalibrate_bn
from autoprune.train import TrainConfig, accuracy, lr_factor, scratch_b_epochs, split_accuracy, train

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(num_classes: int = 4, in_channels: int = 3, width: int = 8) -> nn.Module:
    """A conv-BN-ReLU net small enough to train in well under a second on the CPU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveMaxPool2d(4), nn.Flatten(), nn.Linear(width * 16, num_classes),
    )


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic", val_size=64, n_train=256, n_test=64, image_size=16)


def cfg(**kw):
    base = dict(epochs=3, batch_size=64, lr=0.05, warmup=0.2)
    base.update(kw)
    return TrainConfig(**base)


def fresh(seed=0, **kw):
    torch.manual_seed(seed)
    return tiny(**kw)


def test_scratch_b_arithmetic():
    assert scratch_b_epochs(25, 100, 80) == 31  # 25 * 1.25
    assert scratch_b_epochs(25, 100, 100) == 25
    assert scratch_b_epochs(25, 100, 40) == 50  # 2.5x capped at 2x
    assert scratch_b_epochs(30, 100, 40, cap=3) == 75
    assert scratch_b_epochs(25, 100, 200) == 25  # never fewer than the base epochs
    with pytest.raises(TrainingError):
        scratch_b_epochs(25, 100, 0)


def test_lr_schedule_shapes():
    total = 100
    onecycle = [lr_factor(s, total, "onecycle", 0.1) for s in range(total)]
    assert onecycle[9] == 1.0 and onecycle[0] == pytest.approx(0.1)
    assert onecycle[-1] == pytest.approx(1 / 90) and all(a >= b for a, b in zip(onecycle[9:], onecycle[10:]))
    cosine = [lr_factor(s, total, "cosine", 0.0) for s in range(total)]
    assert cosine[0] == 1.0 and cosine[50] == pytest.approx(0.5, abs=0.02) and cosine[-1] < 0.01
    with pytest.raises(TrainingError):
        TrainConfig(schedule="step")


def test_no_weight_decay_on_bn_and_bias():
    model = tiny()
    decay, no_decay = T.param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[5].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[1].bias), id(model[5].bias)}


def test_training_learns_and_reports(data):
    model = fresh()
    before = accuracy(model, data.val_x, data.val_y, data=data)
    h = train(model, data, cfg(epochs=4), progress=False)
    assert len(h["epochs"]) == 4 and h["steps"] == 4 * 3
    assert h["epochs"][-1]["train_loss"] < h["epochs"][0]["train_loss"]
    assert h["val_acc"] > max(0.6, before + 0.2)
    assert h["epochs"][-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # onecycle ends at zero


def test_max_steps_and_l1_gamma_shrinks_bn_scales(data):
    plain, slim = fresh(), fresh()
    train(plain, data, cfg(max_steps=5), progress=False)
    h = train(slim, data, cfg(max_steps=5, l1_gamma=0.05), progress=False)
    assert h["steps"] == 5
    assert slim[1].weight.abs().sum() < plain[1].weight.abs().sum()


def test_evaluate_is_exact_accuracy(data):
    class Always(nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), data.num_classes)
            out[:, 2] = 1
            return out

    acc = accuracy(Always(), data.test_x, data.test_y, data=data, batch_size=10)
    assert acc == pytest.approx((data.test_y == 2).float().mean().item())

    # max_batches measures the first batches only, in order.
    first = (data.test_y[:20] == 2).float().mean().item()
    assert split_accuracy(Always(), data, "test", batch_size=10, max_batches=2) == pytest.approx(first)


def test_empty_validation_split_is_an_error_to_evaluate_and_skipped_by_training():
    empty = load_data("synthetic", val_size=0, n_train=128, n_test=32, image_size=16)
    model = fresh()
    with pytest.raises(DataError, match="val split .* is empty"):
        split_accuracy(model, empty, "val")
    with pytest.raises(DataError, match="0 images"):
        accuracy(model, empty.val_x, empty.val_y, data=empty)
    history = train(model, empty, cfg(epochs=1), progress=False)
    assert history["steps"] == 2 and math.isnan(history["val_acc"])
    assert math.isnan(history["epochs"][0]["val_acc"])


def test_recalibrate_bn_averages_training_statistics(data):
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 256, 4)).eval()
    model[0].running_mean.fill_(100.0)
    # 3 batches of 64 cover the 192 training images exactly once, unaugmented.
    recalibrate_bn(model, data, batches=3, batch_size=64)
    expected = normalize(data.train_x, data.mean, data.std).mean(dim=(0, 2, 3))
    assert torch.allclose(model[0].running_mean, expected, atol=1e-5)
    assert model[0].momentum == 0.1 and not model.training and not model[0].training


def test_fine_tune_improves_an_untrained_model(data):
    model = fresh()
    before = accuracy(model, data.val_x, data.val_y, data=data)
    loss = fine_tune(model, data, steps=30, lr=0.05, batch_size=64)
    after = accuracy(model, data.val_x, data.val_y, data=data)
    assert math.isfinite(loss) and after > before + 0.2


def test_resume_reproduces_uninterrupted_run(data, tmp_path, monkeypatch):
    config = cfg(epochs=3)
    full = fresh()
    h_full = train(full, data, config, out_dir=tmp_path / "full", progress=False)

    real_save = T.save_checkpoint

    def save_then_die(path, model, **kw):
        real_save(path, model, **kw)
        if kw["epoch"] == 1:
            raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(T, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(fresh(), data, config, out_dir=tmp_path / "cut", progress=False)
    monkeypatch.setattr(T, "save_checkpoint", real_save)

    resumed = fresh(seed=123)  # a different initialisation: everything must come from the checkpoint
    h = train(resumed, data, config, out_dir=tmp_path / "cut", progress=False)
    assert h["resumed_from"] == 1
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r["val_acc"] for r in h["epochs"]] == [r["val_acc"] for r in h_full["epochs"]]
    # A checkpoint written under another configuration is not silently continued.
    with pytest.raises(CheckpointError, match="another configuration"):
        train(fresh(), data, cfg(epochs=5), out_dir=tmp_path / "cut", progress=False)


def test_nan_loss_raises_and_keeps_the_last_finite_checkpoint(data, tmp_path):
    class Poisoned(nn.Module):
        """Healthy for the first epoch (3 steps), then returns NaN logits."""

        def __init__(self):
            super().__init__()
            self.net = fresh()
            self.calls = 0

        def forward(self, x):
            if self.training:
                self.calls += 1
            out = self.net(x)
            return out * float("nan") if self.calls > 4 else out

    model = Poisoned()
    with pytest.raises(TrainingError, match="last finite checkpoint"):
        train(model, data, cfg(epochs=3), out_dir=tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_of_another_model(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", tiny(width=8), epoch=3)
    assert load_checkpoint(path, tiny(width=8))["epoch"] == 3
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path, tiny(width=16))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path, nn.Sequential(tiny(), nn.Linear(4, 2)))
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


_DDP_SCRIPT = """
import sys, torch, torch.nn as nn
from autoprune.data import load_data
from autoprune.train import TrainConfig, train
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.MaxPool2d(4), nn.Flatten(), nn.Linear(128, 4))
data = load_data("synthetic", val_size=64, n_train=256, n_test=64, image_size=16)
h = train(model, data, TrainConfig(epochs=2, batch_size=64, lr=0.05), progress=False)
torch.save({"state": model.state_dict(), "world": h["world_size"], "steps": h["steps"]}, sys.argv[1])
"""


def test_ddp_two_gloo_processes_end_identical(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                   LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / f"rank{rank}.pt")], env=env,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert a["world"] == b["world"] == 2
    assert a["steps"] == 2 * 3  # 192 images / 2 ranks / 32 per rank = 3 steps an epoch
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    torch.manual_seed(0)
    assert not torch.equal(a["state"]["0.weight"], tiny()[0].weight)  # it did train


def _cli(*argv):
    return main([str(a) for a in argv])


def test_cli_pretrain_eval_end_to_end(tmp_path, capsys):
    out = tmp_path / "base"
    common = ["--dataset", "synthetic", "--val-size", 64, "--limit", 128, "--batch-size", 32, "--device", "cpu",
              "--quiet"]
    assert _cli("pretrain", "--model", "test_train:tiny", *common, "--epochs", 2, "--lr", 0.05, "--out", out,
                "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"checkpoint.pt", "model.pt", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert metrics["model_name"] == "test_train:tiny" and metrics["model_kwargs"] == {"num_classes": 4}
    assert len(metrics["history"]) == 2 and summary["test_acc"] == metrics["test_acc"]
    assert _cli("eval", "--checkpoint", out / "model.pt", "--split", "val", "--json") == 0
    row = json.loads(capsys.readouterr().out)
    assert row["accuracy"] == pytest.approx(metrics["val_acc"]) and row["images"] == 64
    # Same output directory, another model: the checkpoint there does not fit.
    assert _cli("pretrain", "--model", "test_train:tiny_wide", *common, "--epochs", 2, "--lr", 0.05,
                "--out", out) == 2
    assert "another model" in capsys.readouterr().err


def tiny_wide(num_classes: int = 4):
    return tiny(num_classes, width=16)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert _cli("pretrain", "--model", "test_train:tiny", "--dataset", bad, "--out", tmp_path / "o", "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("autoprune: error:") and "broken.tar.gz" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert _cli("eval", "--checkpoint", tmp_path / "none.pt") == 2
    assert "not found" in capsys.readouterr().err


def test_cli_retrain_scratch_b(tmp_path, capsys):
    from autoprune.arch import make_arch, save_arch
    from autoprune.cost import macs
    from autoprune.models import create_model, model_kwargs
    from autoprune.space import SearchSpace

    kwargs = model_kwargs("resnet20", num_classes=4)
    space = SearchSpace.from_model(create_model("resnet20", **kwargs), (3, 32, 32))
    widths = space.uniform(0.5)
    arch = make_arch("resnet20", kwargs, space, widths)
    path = save_arch(arch, tmp_path / "arch.json")
    expected = scratch_b_epochs(2, arch["macs"]["base"], arch["macs"]["pruned"])
    assert arch["macs"]["pruned"] == macs(space, widths)
    assert _cli("retrain", path, "--scratch-b", "--base-epochs", 2, "--dataset", "synthetic", "--val-size", 32,
                "--limit", 32, "--batch-size", 32, "--max-steps", 1, "--device", "cpu", "--quiet", "--json",
                "--out", tmp_path / "re") == 0
    metrics = json.loads((tmp_path / "re" / "metrics.json").read_text())
    assert metrics["epochs"] == expected == 4 and metrics["mode"] == "scratch-b" and metrics["steps"] == 1
    model, ckpt = model_from_checkpoint(tmp_path / "re" / "model.pt")
    assert ckpt["arch"]["widths"] == list(widths)
    assert _cli("retrain", path, "--epochs", 1, "--scratch-b", "--dataset", "synthetic") == 2


def _resnet20_arch(tmp_path, input_shape=(3, 32, 32), **make_kw):
    from autoprune.arch import make_arch, save_arch
    from autoprune.models import create_model, model_kwargs
    from autoprune.space import SearchSpace

    kwargs = model_kwargs("resnet20", num_classes=4)
    space = SearchSpace.from_model(create_model("resnet20", **kwargs), input_shape)
    arch = make_arch("resnet20", kwargs, space, space.uniform(0.5), **make_kw)
    return arch, save_arch(arch, tmp_path / "arch.json")


def test_cli_retrain_takes_base_epochs_from_the_arch_file(tmp_path, capsys):
    arch, path = _resnet20_arch(tmp_path, extra={"search": {"base_epochs": 7}})
    common = ["--dataset", "synthetic", "--val-size", 32, "--limit", 32, "--batch-size", 32, "--max-steps", 1,
              "--device", "cpu", "--quiet"]
    assert _cli("retrain", path, "--scratch-b", *common, "--json", "--out", tmp_path / "b") == 0
    assert "base epochs 7 (recorded in" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["epochs"] == scratch_b_epochs(7, arch["macs"]["base"], arch["macs"]["pruned"])
    assert metrics["base_epochs"] == 7
    # Scratch-E without --epochs trains for the recorded base epochs; --base-epochs overrides.
    assert _cli("retrain", path, *common, "--base-epochs", 3, "--out", tmp_path / "e") == 0
    assert "base epochs 3 (--base-epochs)" in capsys.readouterr().out
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["epochs"] == 3


def test_cli_dataset_of_another_input_shape_is_one_line_error(tmp_path, capsys):
    _, path = _resnet20_arch(tmp_path, input_shape=(3, 16, 16))
    assert _cli("retrain", path, "--epochs", 1, "--dataset", "synthetic", "--val-size", 32, "--limit", 32,
                "--device", "cpu", "--quiet", "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoprune: error:") and len(err.splitlines()) == 1
    assert "3x16x16" in err and "3x32x32" in err and not (tmp_path / "r").exists()
    ckpt = save_checkpoint(tmp_path / "gray.pt", tiny(in_channels=1), model_name="test_train:tiny",
                           model_kwargs={"num_classes": 4, "in_channels": 1}, input_shape=[1, 32, 32])
    assert _cli("eval", "--checkpoint", ckpt, "--dataset", "synthetic", "--val-size", 32, "--device", "cpu") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1x32x32" in err and "channels and image size must match" in err


@pytest.mark.parametrize("argv", [
    ["eval", "--checkpoint", "x.pt", "--batch-size", "0"],
    ["pretrain", "--model", "resnet20", "--batch-size", "0"],
    ["pretrain", "--model", "resnet20", "--epochs", "-1"],
    ["pretrain", "--model", "resnet20", "--limit", "0"],
    ["retrain", "a.json", "--base-epochs", "0"],
    ["retrain", "a.json", "--max-steps", "zero"],
    ["pretrain", "--model", "resnet20", "--val-size", "-1"],
])
def test_cli_non_positive_counts_are_rejected_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument --" in last and "expected" in last
