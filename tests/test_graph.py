"""Channel groups found by tracing."""

import doctest

import pytest
import torch
import torch.nn as nn

import autoprune.graph
from autoprune.errors import TraceError
from autoprune.graph import Follow, passthrough, register_rule, spatial_reduce, trace, unregister_rule
from autoprune.models import create_model
from autoprune.space import SearchSpace
from autoprune.surgery import materialise


def _groups_by_name(graph):
    return {g.name: g for g in graph.groups}


def test_vgg_groups_one_per_conv_and_hidden_linear():
    g = trace(create_model("vgg16"), (3, 32, 32))
    free = [x for x in g.groups if not x.fixed]
    assert len(free) == 14  # 13 convs + the hidden classifier layer
    by = _groups_by_name(g)
    assert by["features.0"].members == ("features.0", "features.1")
    assert by["classifier.0"].members == ("classifier.0", "classifier.1")
    # network input and classifier output are fixed
    assert by["input"].fixed and by["input"].width == 3
    assert by["classifier.3"].fixed and by["classifier.3"].width == 10


def test_resnet_residual_stage_is_one_searchable_group():
    g = trace(create_model("resnet20"), (3, 32, 32))
    by = _groups_by_name(g)
    stage1 = by["conv1"]
    assert not stage1.fixed
    assert set(stage1.producers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    stage2 = by["layer2.0.conv2"]
    assert "layer2.0.shortcut.0" in stage2.producers and "layer2.2.conv2" in stage2.producers
    assert len([x for x in g.groups if not x.fixed]) == 3 + 9  # 3 stages + one per block's inner conv


def test_tv_resnet50_bottleneck_stages_and_downsample():
    g = trace(create_model("tv:resnet50"), (3, 64, 64))
    by = _groups_by_name(g)
    assert set(by["layer1.0.conv3"].producers) == {"layer1.0.conv3", "layer1.0.downsample.0", "layer1.1.conv3",
                                                   "layer1.2.conv3"}
    assert by["fc"].fixed


def test_depthwise_conv_couples_its_input_and_output():
    g = trace(create_model("mobilenetv2"), (3, 32, 32))
    dw = [l for l in g.layers if l.depthwise]
    assert dw, "mobilenetv2 has depthwise convs"
    for layer in dw:
        (gid,) = layer.in_layout
        group = g.groups[gid]
        assert layer.name in group.members
        assert not group.fixed


def test_densenet_concat_layouts_keep_offsets():
    g = trace(create_model("tv:densenet121"), (3, 64, 64))
    norm5 = next(l for l in g.layers if l.name == "features.norm5")
    assert sum(g.groups[i].width for i in norm5.in_layout) == 1024
    assert len(norm5.in_layout) == 17  # transition output + 16 dense layers of block 4
    classifier = next(l for l in g.layers if l.name == "classifier")
    assert classifier.in_layout == norm5.in_layout


def test_flatten_to_linear_records_spatial_factor():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            x = torch.relu(self.conv(x))
            return self.fc(x.view(x.size(0), -1))

    g = trace(Net(), (3, 4, 4))
    fc = next(l for l in g.layers if l.name == "fc")
    assert fc.spatial == 16
    assert not g.groups[fc.in_layout[0]].fixed


def test_grouped_conv_cuts_both_sides_into_blocks():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 1)
            self.b = nn.Conv2d(16, 32, 3, padding=1, groups=4)
            self.c = nn.Conv2d(32, 4, 1)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    g = trace(Net(), (3, 8, 8))
    assert (g.groups[1].name, g.groups[1].fixed, g.groups[1].blocks) == ("a", False, 4)
    assert (g.groups[2].name, g.groups[2].fixed, g.groups[2].blocks) == ("b", False, 4)
    assert next(l for l in g.layers if l.name == "b").groups == 4


def test_a_depth_multiplier_prunes_with_its_input():
    # groups == in_channels < out_channels: each input channel's two filters go with it
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 16, 3, groups=8), nn.Conv2d(16, 4, 1))
    g = trace(model, (3, 8, 8))
    space = SearchSpace.from_graph(g)
    assert [x.name for x in space.groups] == ["0"]
    assert g.groups[2].follows == Follow("repeat", 1, 0, 2)
    assert space.full_widths((3,))[2] == 6


class _ChannelPick(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.conv(x)[:, 2]


class _SplitViewPermute(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y = self.conv(x)
        return y.view(y.size(0), 2, 4, 6, 6).permute(0, 1, 3, 2, 4)


class _Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.InstanceNorm2d(8, affine=True)

    def forward(self, x):
        return self.norm(self.conv(x))


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(self.conv(x))


@pytest.mark.parametrize("model,needle", [
    (_ChannelPick(), "picks single channels"),
    (_SplitViewPermute(), "channels split by a view"),
    (_Unknown(), "InstanceNorm2d"),
    (_Shared(), "more than once"),
])
def test_untraceable_constructs_raise_naming_the_node(model, needle):
    shape = (4, 8, 8) if isinstance(model, _Shared) else (3, 8, 8)
    with pytest.raises(TraceError, match=needle):
        trace(model, shape)


def test_control_flow_on_values_is_a_trace_error():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.conv(x)
            return x

    with pytest.raises(TraceError, match="cannot trace"):
        trace(Net(), (3, 8, 8))


def test_norm_after_flatten_is_a_trace_error():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm1d(8 * 4 * 4)
            self.fc = nn.Linear(8 * 4 * 4, 2)

        def forward(self, x):
            return self.fc(self.bn(torch.flatten(self.conv(x), 1)))

    with pytest.raises(TraceError, match="flattened"):
        trace(Net(), (3, 4, 4))


# -- rules ---------------------------------------------------------------------------------

@pytest.fixture
def rules():
    """register_rule for one test: every rule it adds is removed afterwards."""
    added = []

    def register(target, handler):
        added.append(target)
        return register_rule(target, handler)

    yield register
    for target in added:
        unregister_rule(target)


class _ErfGELU(nn.Module):
    """Exact GELU written with torch.erf, which has no built-in rule."""

    def forward(self, x):
        return 0.5 * x * (1 + torch.erf(x * 0.7071))


class _ActNet(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = act
        self.conv2 = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.conv2(self.act(self.bn(self.conv1(x))))


def test_register_rule_for_a_custom_channel_preserving_module(rules):
    model = _ActNet(_ErfGELU())
    with pytest.raises(TraceError, match=r"node 'erf' \(in module 'act' \(_ErfGELU\)\).*"
                                         r"autoprune\.graph\.register_rule"):
        trace(model, (3, 8, 8))
    rules(_ErfGELU, passthrough)
    g = trace(model, (3, 8, 8))
    assert g == trace(_ActNet(nn.GELU()), (3, 8, 8))
    assert [(x.name, x.fixed, x.members) for x in g.groups] == [
        ("input", True, ()), ("conv1", False, ("conv1", "bn")), ("conv2", True, ("conv2",))]


def test_register_rule_for_a_function_and_a_spatial_reduction(rules):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(torch.logsumexp(torch.erf(self.conv(x)), dim=(2, 3)))

    with pytest.raises(TraceError, match="function .*erf"):
        trace(Net(), (3, 8, 8))
    rules(torch.erf, passthrough)
    rules(torch.logsumexp, spatial_reduce)
    g = trace(Net(), (3, 8, 8))
    conv = next(x for x in g.groups if x.name == "conv")
    fc = next(x for x in g.layers if x.name == "fc")
    assert not conv.fixed and fc.in_layout == (conv.id,) and fc.spatial == 1


def test_register_rule_as_a_decorator_for_a_method():
    calls = []

    @register_rule("erf")
    def erf(table, node, target, inputs):
        calls.append((node.name, target, len(inputs)))
        return passthrough(table, node, target, inputs)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(x).erf()

    try:
        assert erf.__name__ == "erf"  # the decorator returns the handler itself
        g = trace(Net(), (3, 8, 8))
    finally:
        unregister_rule("erf")
    assert calls == [("erf", "erf", 1)]
    assert g.groups[-1].name == "conv"
    with pytest.raises(TraceError, match=r"method \.erf\(\)"):
        trace(Net(), (3, 8, 8))


def test_a_rule_replaces_a_builtin_one_until_unregistered():
    def refuse(table, node, target, inputs):
        raise TraceError(f"refused {node.target}")

    register_rule(nn.BatchNorm2d, refuse)
    try:
        with pytest.raises(TraceError, match="refused bn"):
            trace(_ActNet(nn.ReLU()), (3, 8, 8))
    finally:
        unregister_rule(nn.BatchNorm2d)
    assert "bn" in trace(_ActNet(nn.ReLU()), (3, 8, 8)).groups[1].members


def test_passthrough_refuses_a_module_with_per_channel_parameters(rules):
    class LayerScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(8, 1, 1))

        def forward(self, x):
            return x * self.gamma

    rules(LayerScale, passthrough)
    with pytest.raises(TraceError, match="module 'act' \\(LayerScale\\).*surgery"):
        trace(_ActNet(LayerScale()), (3, 8, 8))


@pytest.mark.parametrize("target,needle", [
    (42, "not a module class"),
    (nn.ReLU(), "register the class"),
    (int, "not a subclass of nn.Module"),
    (nn.Module, "not a subclass of nn.Module"),
    ("not a name", "not a tensor-method name"),
])
def test_register_rule_rejects_invalid_targets(target, needle):
    with pytest.raises(TypeError, match=needle):
        register_rule(target, passthrough)
    with pytest.raises(TypeError, match=needle):
        register_rule(target)  # the decorator form checks the target at once


def test_register_rule_rejects_a_non_callable_handler_and_unknown_unregister():
    with pytest.raises(TypeError, match="must be callable"):
        register_rule(_ErfGELU, "passthrough")
    with pytest.raises(ValueError, match="no rule was registered for _ErfGELU"):
        unregister_rule(_ErfGELU)


def test_register_rule_docstring_example_runs():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(autoprune.graph.register_rule, "register_rule", globs={}):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0 and results.failed == 0


class _TwoModes(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.a(x) if self.training else self.b(self.a(x))


def test_trace_mode_picks_the_forward_and_puts_the_model_back():
    model = _TwoModes().train()
    evaluated, trained = trace(model, (3, 4, 4), mode="eval"), trace(model, (3, 4, 4), mode="train")
    assert model.training
    assert (evaluated.mode, len(evaluated.layers)) == ("eval", 2)
    assert (trained.mode, len(trained.layers)) == ("train", 1)
    assert trace(model.eval(), (3, 4, 4)).mode == "eval" and not model.training
    with pytest.raises(TraceError, match="mode"):
        trace(model, (3, 4, 4), mode="test")


class _TopLevelErf(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return torch.erf(self.a(x))


class _TopLevelBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > 0:
            return y
        return -y


def test_errors_at_top_level_name_the_models_line_and_what_to_do():
    with pytest.raises(TraceError, match=r"erf.*register_rule.*submodule.*model code: test_graph\.py:\d+"):
        trace(_TopLevelErf(), (3, 4, 4))
    with pytest.raises(TraceError, match=r"cannot trace _TopLevelBranch with torch\.fx at test_graph\.py:\d+: .*submodule"):
        trace(_TopLevelBranch(), (3, 4, 4))


class _AuxHead(nn.Module):
    """A trunk whose training forward also runs an auxiliary classifier on a middle block."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.aux = nn.Conv2d(16, 4, 1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        h = self.a(x)
        out = self.fc(self.b(h).mean((2, 3)))
        return (out, self.aux(h).mean((2, 3))) if self.training else out


def test_an_eval_trace_keeps_whole_what_the_training_forward_alone_reads():
    model = _AuxHead()
    evaluated = SearchSpace.from_model(model, (3, 8, 8), mode="eval")
    trained = SearchSpace.from_model(model, (3, 8, 8), mode="train")
    # a.0's channels feed the auxiliary conv, which only the training forward runs: kept whole
    assert [g.name for g in evaluated.groups] == ["b.0"]
    assert {g.name for g in trained.groups} == {"a.0", "b.0"}
    assert "aux" not in {layer.name for layer in evaluated.graph.layers}  # MACs: the deployed forward's
    small = materialise(model, evaluated, evaluated.uniform(0.5))
    small.train()
    out, aux = small(torch.randn(2, 3, 8, 8))
    assert out.shape == aux.shape == (2, 4)
