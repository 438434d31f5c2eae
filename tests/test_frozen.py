"""Submodules the tracer cannot look into become frozen leaves; containers of channel tensors."""

import collections
import json

import pytest
import torch
import torch.nn as nn

import autoprune.graph
from autoprune import profile
from autoprune.api import SearchResult
from autoprune.arch import make_arch
from autoprune.cli import main
from autoprune.cost import macs, params
from autoprune.errors import TraceError
from autoprune.graph import trace
from autoprune.models import create_model
from autoprune.optimizers.dmcp import gate_sites
from autoprune.space import SearchSpace
from autoprune.stripe import stripe_macs
from autoprune.surgery import materialise

SHAPE = (3, 8, 8)


class _Gate(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self, cin=8, cout=6):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        if x.sum() > 0:
            return self.bn(self.conv(x))
        return self.bn(self.conv(-x))


class _GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.stage = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), _Gate())
        self.c3 = nn.Conv2d(6, 12, 3)
        self.b3 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stage(torch.relu(self.b1(self.c1(x))))
        return self.fc(torch.relu(self.b3(self.c3(x))).mean((2, 3)))


def gated_net():
    """For the command line: ``--model test_frozen:gated_net``."""
    return _GatedNet()


def _hook_macs(model, shape):
    """Conv/Linear MACs of one sample counted by forward hooks on the model as it is."""
    counted = []

    def hook(m, args, out):
        per = m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups * m.weight[0, 0].numel()
        counted.append(out[0].numel() * per)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        out = model.eval()(torch.randn(1, *shape, generator=torch.Generator().manual_seed(0)))
    for h in handles:
        h.remove()
    return sum(counted), out


def test_untraceable_submodule_is_frozen_and_the_rest_searched():
    g = trace(_GatedNet(), SHAPE)
    (leaf,) = g.frozen
    assert leaf.path == "stage.1" and leaf.kind == "_Gate"  # the smallest module, not the stage
    assert "control flow" in leaf.reason
    assert leaf.macs == 8 * 8 * 6 * 8 * 9 and g.other_macs == leaf.macs
    by = {x.name: x for x in g.groups}
    assert [x.name for x in g.groups if not x.fixed] == ["c1", "c3"]
    assert by["stage.0"].fixed  # feeds the leaf
    assert by["stage.1"].fixed and by["stage.1"].width == 6 and by["stage.1"].producers == ("stage.1",)
    assert "stage.0" in {layer.name for layer in g.layers}
    assert not any(layer.name.startswith("stage.1") for layer in g.layers)
    gate_params = sum(p.numel() for p in _Gate().parameters())
    assert g.other_params == gate_params


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_macs_and_params_exact_with_a_frozen_leaf_and_surgery_leaves_it_alone(ratio):
    torch.manual_seed(0)
    model = _GatedNet().eval()
    space = SearchSpace.from_model(model, SHAPE, round_to=1)
    widths = space.uniform(ratio)
    pruned = materialise(model, space, widths)
    counted, out = _hook_macs(pruned, SHAPE)
    assert macs(space, widths) == counted
    assert stripe_macs(space.graph, {}) == macs(space, space.max_widths())
    assert params(space, widths) == sum(p.numel() for p in pruned.parameters())
    _, full = _hook_macs(model, SHAPE)
    assert out.shape == full.shape
    for name, t in model.stage[1].state_dict().items():
        assert torch.equal(pruned.stage[1].state_dict()[name], t), name
    if ratio < 1:
        assert pruned.c1.out_channels == 8 and pruned.stage[0].in_channels == 8


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.norm = nn.InstanceNorm2d(8, affine=True)  # no rule for it

    def forward(self, x):
        return self.norm(self.conv(x)).relu()


def test_a_module_without_a_rule_is_frozen_alone():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), _Block(), nn.Conv2d(8, 4, 3))
    g = trace(model, SHAPE)
    assert [(f.path, f.kind, f.macs) for f in g.frozen] == [("2.norm", "InstanceNorm2d", 0)]
    assert "InstanceNorm2d" in g.frozen[0].reason and "register_rule" in g.frozen[0].reason
    assert [x.name for x in g.groups if not x.fixed] == ["0"]  # 2.conv feeds the frozen norm
    assert "2.conv" in {layer.name for layer in g.layers}


def test_nothing_left_to_search_is_one_trace_error():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _Gate(3, 4)

        def forward(self, x):
            return self.body(x)

    with pytest.raises(TraceError, match=r"nothing in Net can be searched.*'body' \(_Gate\): .*control flow"):
        trace(Net(), SHAPE)


def test_frozen_leaves_are_bounded(monkeypatch):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = _Gate(3, 8), _Gate(8, 8), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    monkeypatch.setattr(autoprune.graph.tracer, "MAX_FROZEN_LEAVES", 1)
    with pytest.raises(TraceError, match="more than 1 submodules of Twice cannot be traced; the last: 'b'"):
        trace(Twice(), SHAPE)


class _Split(nn.Module):
    """An untraceable module returning a tuple and a dict of channel tensors."""

    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        return x[:, :4], {"rest": x[:, 4:]}


class _SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.split = _Split()
        self.a, self.b = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        left, right = self.split(self.stem(x))
        return self.head(self.a(left) + self.b(right["rest"]))


def test_a_frozen_leaf_with_a_tuple_and_a_dict_output():
    model = _SplitNet()
    space = SearchSpace.from_model(model, SHAPE, round_to=1)
    g = space.graph
    assert [f.path for f in g.frozen] == ["split"]
    assert [(x.name, x.width, x.fixed) for x in g.groups if x.producers == ("split",)] == [
        ("split", 4, True), ("split#1", 4, True)]
    assert space.names == ("a",)  # a and b meet at the add; the stem feeds the leaf
    widths = space.uniform(0.5)
    counted, out = _hook_macs(materialise(model, space, widths), SHAPE)
    assert counted == macs(space, widths) and out.shape == (1, 2, 8, 8)


_Out = collections.namedtuple("_Out", "logits aux")


class _TwoHeads(nn.Module):
    def __init__(self, as_dict):
        super().__init__()
        self.as_dict = as_dict
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        self.aux = nn.Linear(8, 2)

    def forward(self, x):
        f = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        if self.as_dict:
            return {"logits": self.fc(f), "aux": self.aux(f)}
        return _Out(self.fc(f), aux=self.aux(f))


@pytest.mark.parametrize("as_dict", [False, True])
def test_namedtuple_and_dict_outputs_are_fixed(as_dict):
    model = _TwoHeads(as_dict)
    space = SearchSpace.from_model(model, SHAPE, round_to=1)
    by = {x.name: x for x in space.graph.groups}
    assert by["fc"].fixed and by["aux"].fixed and space.names == ("conv",)
    assert not space.graph.frozen
    out = materialise(model, space, space.uniform(0.5)).eval()(torch.zeros(1, *SHAPE))
    logits = out["logits"] if as_dict else out.logits
    assert logits.shape == (1, 4)


def test_torchvision_googlenet_traces_in_training_mode():
    # In training mode GoogLeNet returns a namedtuple of the logits and two auxiliary heads.
    model = create_model("tv:googlenet", num_classes=10, init_weights=False).train()
    g = trace(model, (3, 64, 64))
    assert not g.frozen
    by = {x.name: x for x in g.groups}
    assert all(by[n].fixed for n in ("fc", "aux1.fc2", "aux2.fc2"))
    assert not by["aux1.fc1"].fixed and not by["aux2.conv.conv"].fixed  # the heads' hidden layers are searchable


def test_timm_same_padding_conv_traces_exactly():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_b0", pretrained=False, num_classes=10).eval()
    assert any(type(m).__name__ == "Conv2dSame" for m in model.modules())
    shape = (3, 32, 32)
    space = SearchSpace.from_model(model, shape)
    assert not space.graph.frozen and len(space) > 0
    assert _hook_macs(model, shape)[0] == macs(space, space.max_widths())


def test_reports_list_the_frozen_leaves(capsys):
    assert main(["flops", "--model", "test_frozen:gated_net", "--input-size", "8", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert [(f["path"], f["class"]) for f in row["frozen"]] == [("stage.1", "_Gate")]
    assert main(["flops", "--model", "test_frozen:gated_net", "--input-size", "8", "--groups"]) == 0
    out = capsys.readouterr().out
    assert "frozen      1 submodule(s)" in out
    assert "  stage.1 (_Gate): torch.fx cannot trace it: symbolically traced variables" in out
    space = SearchSpace.from_model(_GatedNet(), SHAPE)
    arch = make_arch("test_frozen:gated_net", {}, space, space.uniform(0.5))
    assert arch["frozen"] == [{"path": "stage.1", "class": "_Gate", "reason": space.graph.frozen[0].reason}]
    assert "frozen" not in make_arch("x", {}, SearchSpace.from_model(_TwoHeads(False), SHAPE),
                                     SearchSpace.from_model(_TwoHeads(False), SHAPE).max_widths())
    result = SearchResult(list(arch["widths"]), arch, [], "uniform", None, 1.0)
    assert result.summary()["frozen"] == arch["frozen"]
    assert any(line.startswith("frozen") and "stage.1 (_Gate): torch.fx" in line for line in str(result).splitlines())


def test_dmcp_gates_and_latency_chains_see_frozen_leaves_as_single_nodes():
    model = _GatedNet()
    space = SearchSpace.from_model(model, SHAPE, round_to=1)
    assert gate_sites(model, space) == [("b1", (1,)), ("b3", (4,))]
    chains = profile.chains(model, space)  # plain torch.fx could not trace the model at all
    assert chains["c1"][0] == "b1" and chains["b1"] is None


class _TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: a frozen leaf returning a tuple
            return self.a(x), self.b(x)
        return self.b(x), self.a(x)


class _CatOfALeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre, self.post = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 3, 1)
        self.stem, self.br = nn.Conv2d(3, 8, 3, padding=1), _TwoBranches()
        self.c, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 10, 1)

    def forward(self, x):
        x = self.post(self.pre(x))
        y = torch.cat(self.br(self.stem(x)), 1)  # the leaf's tuple used whole
        return self.head(self.c(x) + y)


def test_a_leaf_s_tuple_used_whole_couples_what_it_meets():
    model = _CatOfALeaf().eval()
    space = SearchSpace.from_model(model, (3, 8, 8))
    groups = {g.name: g for g in space.graph.groups}
    assert groups["c"].fixed and "c" not in space.names and "pre" in space.names
    for widths in (space.max_widths(), space.min_widths()):
        counted, out = _hook_macs(materialise(model, space, widths), (3, 8, 8))
        assert out.shape == (1, 10, 8, 8) and macs(space, widths) == counted
