"""The model registry."""

import sys

import pytest
import torch
from conftest import REGISTRY

from autoprune.data import load_data
from autoprune.dataspec import kwargs_for_data
from autoprune.errors import UnknownModelError
from autoprune.models import (
    create_model,
    default_input_size,
    list_models,
    merge_kwargs,
    model_kwargs,
    parse_model_arg,
    parse_model_args,
    takes_kwarg,
)


@pytest.mark.parametrize("name", [n for n in REGISTRY if not n.startswith("tv:")])
def test_zoo_models_take_classes_channels_and_sizes(name):
    model = create_model(name, num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        for size in (32, 48):
            assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", [n for n in REGISTRY if n.startswith("tv:")])
def test_torchvision_models_by_prefix(name):
    model = create_model(name, num_classes=5).eval()
    assert default_input_size(name) == 224
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_registry_lists_the_zoo():
    names = list_models()
    for n in ("vgg11", "vgg13", "vgg16", "vgg19", "resnet20", "resnet32", "resnet56", "resnet110", "mobilenetv2"):
        assert n in names


def test_user_constructor_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "usernets.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes=3, width=8):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("usernets:tiny", width=12)
    assert model[0].out_channels == 12 and model[-1].out_features == 3
    assert model_kwargs("usernets:tiny", width=12) == {"width": 12}
    with pytest.raises(UnknownModelError, match="no callable"):
        create_model("usernets:nope")
    sys.modules.pop("usernets", None)


def test_data_give_num_classes_only_to_a_constructor_that_takes_it(tmp_path, monkeypatch):
    """ultralytics' DetectionModel takes ``nc``: the data's classes would be an unknown argument."""
    (tmp_path / "usernets_nc.py").write_text(
        "import torch.nn as nn\n"
        "def detector(cfg='n', ch=3, nc=None):\n"
        "    return nn.Conv2d(ch, nc or 80, 1)\n"
        "def classifier(num_classes=3, in_channels=3):\n"
        "    return nn.Conv2d(in_channels, num_classes, 1)\n"
        "def anything(**kwargs):\n"
        "    return nn.Conv2d(kwargs.get('in_channels', 3), kwargs.get('num_classes', 3), 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_data("synthetic", val_size=8, n_train=32, n_test=8, image_size=8, channels=1)
    assert not takes_kwarg("usernets_nc:detector", "num_classes") and takes_kwarg("usernets_nc:anything", "x")
    assert kwargs_for_data("usernets_nc:detector", data) == {}
    assert create_model("usernets_nc:detector", **kwargs_for_data("usernets_nc:detector", data)).out_channels == 80
    both = {"num_classes": data.num_classes, "in_channels": 1}
    assert kwargs_for_data("usernets_nc:classifier", data) == both
    assert kwargs_for_data("usernets_nc:anything", data) == both
    # named by the caller (--num-classes), it is passed, for the constructor to refuse
    assert kwargs_for_data("usernets_nc:detector", data, num_classes=data.num_classes) == {"num_classes": data.num_classes}
    assert kwargs_for_data("resnet20", data)["num_classes"] == data.num_classes
    sys.modules.pop("usernets_nc", None)


def test_unknown_names_suggest_close_ones():
    with pytest.raises(UnknownModelError, match="resnet56"):
        create_model("resnet65")
    with pytest.raises(UnknownModelError, match="constructor arguments"):
        create_model("vgg16", bogus=1)
    with pytest.raises(UnknownModelError, match="3 input channels"):
        create_model("tv:resnet18", in_channels=1)


def test_model_args_are_json_literals_or_strings():
    cases = {"n=3": 3, "r=0.5": 0.5, "b=true": True, "w=null": None, "l=[1, 2]": [1, 2], "cfg=yolov8n.yaml": "yolov8n.yaml",
             's="3"': "3", "e=": "", "d={\"a\": 1}": {"a": 1}, "x=a=b": "a=b"}
    assert {text: parse_model_arg(text)[1] for text in cases} == cases
    assert parse_model_args(["a=1", "b=x", "a=1"]) == {"a": 1, "b": "x"}
    for bad, needle in (("novalue", "KEY=VALUE"), ("1x=2", "KEY=VALUE"), ("=2", "KEY=VALUE")):
        with pytest.raises(UnknownModelError, match=needle):
            parse_model_arg(bad)
    with pytest.raises(UnknownModelError, match="'a' given twice: 1 and 2"):
        parse_model_args(["a=1", "a=2"])
    assert merge_kwargs({"num_classes": 10}, {"num_classes": 10, "width": 4}) == {"num_classes": 10, "width": 4}
