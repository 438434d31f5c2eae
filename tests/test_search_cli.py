"""``autoprune search`` end to end on synthetic data with a tiny model, and its bad inputs."""

import json

import pytest
import torch

from autoprune.arch import build, load_arch
from autoprune.cli import main

TINY = ["--model", "resnet20", "--dataset", "synthetic", "--limit", "128", "--val-size", "64",
        "--pretrain-epochs", "1", "--fine-tune-steps", "2", "--bn-batches", "1", "--eval-batch-size", "32",
        "--device", "cpu", "--no-progress"]


def test_search_end_to_end_and_rerun_reuses_base(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["search", *TINY, "--budget", "0.5", "--method", "random", "--trials", "2", "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["candidates"] == 2 and summary["macs_ratio"] <= 0.5
    arch = load_arch(out / "arch.json")
    assert arch["macs"]["pruned"] <= 0.5 * arch["macs"]["base"] and arch["method"] == "random"
    model = build(arch)
    assert model(torch.zeros(1, *arch["input_shape"])).shape[-1] == arch["num_classes"]
    base = out / "base" / "model.pt"
    stamp = base.stat().st_mtime_ns
    # Another method in the same folder: the base is reused, not trained again.
    assert main(["search", *TINY, "--budget", "0.5", "--method", "uniform", "--out", str(out)]) == 0
    assert base.stat().st_mtime_ns == stamp
    text = capsys.readouterr().out
    assert "uniform" in text and "MACs" in text


@pytest.mark.parametrize("extra, message", [
    (["--budget", "0"], "ratio in (0, 1]"),
    (["--budget", "1.5"], "ratio in (0, 1]"),
    (["--budget", "abcM"], "invalid budget"),
    (["--budget", "0.001"], "smallest network"),
    (["--budget", "0.4", "--storage", "sqlite:////no/such/dir/s.db"], "cannot open storage"),
    (["--budget", "0.4", "--storage", "nosuchdb://host/db"], "cannot open storage"),
])
def test_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["search", *TINY, "--objective", "synthetic", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_unknown_method_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["search", *TINY, "--budget", "0.4", "--method", "annealing", "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert not (tmp_path / "o").exists()


def test_base_checkpoint_of_another_model(tmp_path, capsys):
    from autoprune.models import create_model
    from autoprune.train import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "vgg.pt", create_model("vgg11", num_classes=4), model_name="vgg11")
    out = tmp_path / "out"
    assert main(["search", *TINY, "--budget", "0.4", "--base", str(ckpt), "--out", str(out)]) == 2
    assert "another model" in capsys.readouterr().err
    assert not out.exists()
