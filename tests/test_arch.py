"""Architecture JSON: round trip, rebuild, validation."""

import json

import pytest
import torch

from autoprune.arch import SCHEMA, build, load_arch, make_arch, save_arch
from autoprune.cost import macs
from autoprune.errors import ArchError, AutopruneError
from autoprune.models import create_model
from autoprune.space import SearchSpace
from autoprune.surgery import materialise


@pytest.fixture()
def arch_and_model():
    model = create_model("resnet20")
    space = SearchSpace.from_model(model, (3, 32, 32), model_name="resnet20")
    widths = space.uniform(0.5)
    arch = make_arch("resnet20", {"num_classes": 10}, space, widths, budget={"ratio": 0.5}, method="uniform",
                     seed=0, score=0.5)
    return arch, model, space, widths


def test_fields_and_round_trip(tmp_path, arch_and_model):
    arch, model, space, widths = arch_and_model
    assert arch["schema"] == SCHEMA
    assert arch["widths"] == list(widths)
    assert arch["macs"]["pruned"] == macs(space, widths) < arch["macs"]["base"]
    assert [g["kept"] for g in arch["groups"]] == list(widths)
    assert all(g["members"] for g in arch["groups"])
    path = save_arch(arch, tmp_path / "a" / "arch.json")
    assert load_arch(path) == json.loads(json.dumps(arch))


def test_build_rebuilds_and_accepts_materialised_state_dict(arch_and_model):
    arch, model, space, widths = arch_and_model
    rebuilt = build(arch)
    pruned = materialise(model, space, widths)
    rebuilt.load_state_dict(pruned.state_dict())  # shapes match exactly
    rebuilt.eval(), pruned.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), pruned(x))
    assert sum(p.numel() for p in rebuilt.parameters()) == arch["params"]["pruned"]


def test_build_with_a_user_module(arch_and_model):
    arch, model, space, widths = arch_and_model
    arch = dict(arch, model={"name": "mypkg.nets:custom", "kwargs": {}})
    with pytest.raises(ArchError, match="model"):
        build(arch)
    rebuilt = build(arch, model=create_model("resnet20"))
    assert rebuilt.fc.in_features == dict(zip(space.names, widths))["layer3.0.conv2"]


def _write(tmp_path, data):
    p = tmp_path / "a.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


@pytest.mark.parametrize("mutate,needle", [
    (lambda a: "{not json", "not valid JSON"),
    (lambda a: dict(a, schema="autoprune.arch/0"), "schema"),
    (lambda a: {k: v for k, v in a.items() if k != "widths"}, "missing field 'widths'"),
    (lambda a: dict(a, widths=a["widths"][:-1]), "'groups' has"),
    (lambda a: dict(a, widths=["x"] * len(a["widths"])), "widths"),
    (lambda a: dict(a, macs={"base": 1}), "macs"),
])
def test_load_rejects_bad_files(tmp_path, arch_and_model, mutate, needle):
    arch = arch_and_model[0]
    with pytest.raises(ArchError, match=needle):
        load_arch(_write(tmp_path, mutate(arch)))


def test_errors_are_value_errors(tmp_path):
    with pytest.raises(ValueError):
        load_arch(tmp_path / "missing.json")
    assert issubclass(ArchError, AutopruneError)


def test_arch_for_another_model_is_refused(arch_and_model):
    arch = dict(arch_and_model[0])
    arch["model"] = {"name": "resnet32", "kwargs": {"num_classes": 10}}
    with pytest.raises(ArchError, match="another model"):
        build(arch)


def test_disallowed_width_is_refused(arch_and_model):
    arch = json.loads(json.dumps(arch_and_model[0]))
    arch["widths"][0] = arch["groups"][0]["width"] + 1
    arch["groups"][0]["kept"] = arch["widths"][0]
    with pytest.raises(ArchError, match="not allowed"):
        build(arch)


def test_save_is_atomic(tmp_path, arch_and_model):
    arch = arch_and_model[0]
    path = save_arch(arch, tmp_path / "arch.json")
    with pytest.raises(TypeError):
        save_arch(dict(arch, score=object()), path)
    assert load_arch(path)["score"] == 0.5  # the good file survived
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.json"]


def test_the_traced_mode_is_recorded_and_traced_again(monkeypatch, arch_and_model):
    arch, model, space, widths = arch_and_model
    assert arch["model"]["mode"] == "train"  # create_model builds in training mode
    seen = []
    original = SearchSpace.from_model.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("mode"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(SearchSpace, "from_model", classmethod(spy))
    build(dict(arch, model=dict(arch["model"], mode="eval")))
    assert seen == ["eval"]
    with pytest.raises(ArchError, match="mode"):
        build(dict(arch, model=dict(arch["model"], mode="test")))
