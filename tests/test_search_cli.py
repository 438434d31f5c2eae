"""``autoprune search`` end to end on synthetic data with a tiny model, and its bad inputs."""

import json
import re

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
    assert arch["search"]["base_epochs"] == 1  # for retrain --scratch-b
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
    from autoprune.checkpoint import save_checkpoint
    from autoprune.models import create_model

    ckpt = save_checkpoint(tmp_path / "vgg.pt", create_model("vgg11", num_classes=4), model_name="vgg11")
    out = tmp_path / "out"
    assert main(["search", *TINY, "--budget", "0.4", "--base", str(ckpt), "--out", str(out)]) == 2
    assert "another model" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--trials", "0"], "trials must be a positive integer"),
    (["--eval-batch-size", "0"], "eval-batch-size must be a positive integer"),
    (["--bn-batches", "0"], "bn-batches must be a positive integer"),
    (["--fine-tune-steps", "-1"], "fine-tune-steps must be an integer of at least 0"),
    (["--pretrain-epochs", "0"], "pretrain-epochs must be a positive integer"),
])
def test_bad_counts_are_one_line_errors(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["search", *TINY, "--objective", "synthetic", "--budget", "0.5", "--out", str(out)]
    assert main(argv + extra) == 2  # the later flag wins over TINY's
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--input-size", "16"], "does not match the 32x32 images"),
    (["--val-size", "0"], "validation split is empty"),
])
def test_evaluator_data_errors_before_pretraining(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["search", *TINY, "--budget", "0.5", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("how", ["flag", "file"])
def test_space_options_reach_the_search(tmp_path, how):
    from autoprune.models import create_model
    from autoprune.space import SearchSpace

    if how == "flag":
        extra = ["--min-ratio", "0.5"]
    else:
        (tmp_path / "space.yaml").write_text("min_ratio: 0.5\n")
        extra = ["--space", str(tmp_path / "space.yaml")]
    out = tmp_path / "out"
    assert main(["search", *TINY, "--objective", "synthetic", "--budget", "0.5", "--method", "random",
                 "--trials", "3", "--out", str(out), *extra]) == 0
    full = SearchSpace.from_model(create_model("resnet20", num_classes=4)).max_widths()
    widths = load_arch(out / "arch.json")["widths"]
    assert all(w >= 0.5 * f for w, f in zip(widths, full))


def _base_checkpoint(tmp_path, **split):
    from autoprune.checkpoint import save_checkpoint
    from autoprune.data import load_data
    from autoprune.models import create_model

    data = load_data("synthetic", **split)
    model = create_model("resnet20", num_classes=data.num_classes)
    return save_checkpoint(tmp_path / "base.pt", model, model_name="resnet20", dataset=data.meta,
                           config={"epochs": 7}), data


def test_base_checkpoint_decides_the_validation_split(tmp_path, capsys):
    ckpt, data = _base_checkpoint(tmp_path, val_size=64, seed=3, limit=128)
    base = ["--model", "resnet20", "--base", str(ckpt), "--fine-tune-steps", "1", "--bn-batches", "1",
            "--eval-batch-size", "32", "--device", "cpu", "--no-progress", "--budget", "0.5"]
    # Another split would validate on images the base was trained on.
    assert main(["search", *base, "--val-size", "32", "--out", str(tmp_path / "a")]) == 2
    assert "--val-size 32 differs from the 64" in capsys.readouterr().err
    assert main(["search", *base, "--dataset", "cifar10", "--out", str(tmp_path / "a")]) == 2
    assert "not the 'synthetic'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    # Unset: the recorded dataset, split seed, val size, limit and normalisation are reused.
    out = tmp_path / "b"
    assert main(["search", *base, "--method", "uniform", "--seed", "9", "--out", str(out)]) == 0
    arch = load_arch(out / "arch.json")
    assert arch["search"]["dataset"] == {"dataset": "synthetic", "split_seed": 3, "val_size": 64, "limit": 128}
    assert arch["search"]["base_epochs"] == 7


def test_rerun_with_other_evaluator_settings_is_refused(tmp_path, capsys):
    ckpt, _ = _base_checkpoint(tmp_path, val_size=64, limit=128)
    argv = ["search", "--model", "resnet20", "--base", str(ckpt), "--bn-batches", "1", "--eval-batch-size", "32",
            "--device", "cpu", "--no-progress", "--budget", "0.5", "--method", "uniform", "--out", str(tmp_path / "o")]
    assert main([*argv, "--fine-tune-steps", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--fine-tune-steps", "2"]) == 2
    assert "was made with fine_tune_steps=1, not 2" in capsys.readouterr().err


def test_dmcp_with_synthetic_objective_loads_data_and_writes_one_arch(tmp_path, one_thread):
    from autoprune.api import BaseConfig, MethodConfig, search
    from autoprune.data import load_data

    data = load_data("synthetic", val_size=32, n_train=96, n_test=16, image_size=8, num_classes=4)
    out = tmp_path / "out"
    result = search("resnet20", 0.5, MethodConfig("dmcp", {"steps": 2, "batch_size": 16, "samples": 1}), data,
                    objective="synthetic", out=out, device="cpu", base=BaseConfig(pretrain_epochs=1))
    assert result.arch["macs"]["pruned"] <= 0.5 * result.arch["macs"]["base"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("arch.json")) == ["arch.json"]


def test_search_help_shows_each_option_once_in_its_group(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")  # usage on as few lines as argparse allows, for reading it back
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    usage, _, body = text.partition("\noptions:\n")
    groups, seen = {}, []
    title = "options"
    for line in body.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            groups[title] = []
        elif line.startswith("  -") and not line.startswith("   "):
            option = line.split()[0].rstrip(",")
            groups.setdefault(title, []).append(option)
            seen.append(option)
    titles = ["model", "budget", "latency", "data", "study", "evaluator", "stripe", "output"]
    assert [t for t in groups if t != "options"] == titles
    assert len(seen) == len(set(seen)), sorted(o for o in seen if seen.count(o) > 1)
    in_usage = set(re.findall(r"\[?(--[a-z-]+)", usage))
    assert in_usage == set(seen) - {"-h"} and len(in_usage) > 40
    assert groups["options"] == ["-h"], "an option outside every group"
    where = {o: t for t, options in groups.items() for o in options}
    assert where["--budget"] == "budget" and where["--latency-budget"] == "latency"
    assert where["--latency-dtype"] == "latency" and where["--round-to"] == "model"
    assert {where[o] for o in ("--stripe-penalty", "--stripe-threshold", "--stripe-epochs")} == {"stripe"}
    assert where["--trials"] == where["--storage"] == "study" and where["--keep"] == "evaluator"
    assert where["--out"] == where["--json"] == "output" and where["--data-dir"] == "data"
