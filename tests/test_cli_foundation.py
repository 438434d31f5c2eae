"""The models, flops and show commands, and bad input on the command line."""

import json
import sys

import pytest

from autoprune.arch import build, make_arch, save_arch
from autoprune.cli import main
from autoprune.models import create_model, list_models
from autoprune.space import SearchSpace


@pytest.fixture()
def arch_file(tmp_path):
    space = SearchSpace.from_model(create_model("vgg11"), (3, 32, 32), model_name="vgg11")
    arch = make_arch("vgg11", {"num_classes": 10}, space, space.uniform(0.5), method="uniform", seed=0)
    return save_arch(arch, tmp_path / "arch.json")


def test_models_lists_the_registry(capsys):
    assert main(["models", "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)]
    assert names == list_models()
    assert "vgg16" in names and "tv:resnet50" in names


def test_flops_of_vgg16(capsys):
    assert main(["flops", "--model", "vgg16", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["macs"] == 313_463_808  # CIFAR VGG16-BN, 32x32
    assert row["flops"] == 2 * row["macs"]
    assert main(["flops", "--model", "vgg16"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs" in out and "2 x MACs" in out


def test_flops_lists_groups(capsys):
    assert main(["flops", "--model", "resnet20", "--groups", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert [g["name"] for g in row["groups"]][:2] == ["conv1", "layer1.0.conv1"]
    assert all(g["choices"][-1] == g["width"] == g["kept"] for g in row["groups"])
    assert main(["flops", "--model", "resnet20", "--groups"]) == 0
    assert "layer3.0.conv2" in capsys.readouterr().out


def test_flops_of_an_arch(capsys, arch_file):
    assert main(["flops", "--model", "vgg11", "--arch", str(arch_file), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    arch = json.loads(arch_file.read_text())
    assert row["macs"] == arch["macs"]["pruned"]
    assert 0.1 < row["macs_ratio"] < 0.5


def test_show_prints_table_and_plot(capsys, arch_file, tmp_path):
    png = tmp_path / "w.png"
    assert main(["show", str(arch_file), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "MACs" in out
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv,needle", [
    (["flops", "--model", "vgg61"], "did you mean"),
    (["flops", "--model", "tv:resnet5000"], "unknown torchvision model"),
    (["flops", "--model", "nosuchpkg.mod:fn"], "cannot import"),
    (["flops", "--model", "resnet20", "--min-ratio", "3"], "min_ratio"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and err.startswith("autoprune: error:")


def test_show_bad_files(capsys, tmp_path, arch_file):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    assert main(["show", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    data = json.loads(arch_file.read_text())
    data["schema"] = "autoprune.arch/9"
    bad.write_text(json.dumps(data))
    assert main(["show", str(bad)]) == 2
    assert "schema" in capsys.readouterr().err
    assert main(["flops", "--model", "resnet20", "--arch", str(arch_file)]) == 2
    assert "for model 'vgg11'" in capsys.readouterr().err


@pytest.fixture()
def usernets(tmp_path, monkeypatch):
    (tmp_path / "usernets_args.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(width=8, head='linear', num_classes=3):\n"
        "    last = nn.Linear(width, num_classes) if head == 'linear' else nn.Identity()\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), last)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usernets_args:tiny"
    sys.modules.pop("usernets_args", None)


def test_model_args_build_the_model_and_are_recorded(capsys, tmp_path, usernets):
    assert main(["flops", "--model", usernets, "--model-arg", "width=32", "--model-arg", "num_classes=4", "--groups",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"][0]["width"] == 32
    out = tmp_path / "s"
    assert main(["search", "--model", usernets, "--model-arg", "width=32", "--model-arg", "head=linear", "--budget",
                 "0.5", "--method", "uniform", "--objective", "synthetic", "--out", str(out), "--no-progress",
                 "--json"]) == 0
    arch = json.loads((out / "arch.json").read_text())
    assert arch["model"]["kwargs"] == {"width": 32, "head": "linear"}
    assert build(arch)[0].out_channels == arch["widths"][0] < 32 and build(arch)[-1].out_features == 3


def test_a_third_party_model_builds_from_model_args(capsys):
    """ultralytics' YOLOv8n from its packaged yaml: built, then traced, or refused in one line."""
    pytest.importorskip("ultralytics")
    code = main(["flops", "--model", "ultralytics.nn.tasks:DetectionModel", "--model-arg", "cfg=yolov8n.yaml",
                 "--model-arg", "verbose=false", "--input-size", "64", "--json"])
    out, err = capsys.readouterr()
    if code == 0:
        assert json.loads(out)["macs"] > 0
    else:  # the model was built: the error is the tracer's, not the constructor's
        assert code == 2 and err.count("\n") == 1 and err.startswith("autoprune: error: cannot trace DetectionModel")
