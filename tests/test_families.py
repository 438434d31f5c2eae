"""CNN families beyond plain convs: each traces, its analytic MACs equal a hook count of the
pruned model (read from the modules' weight shapes and attributes), and surgery computes
what the original computes with the dropped channels zeroed."""

import copy

import pytest
import torch
import torch.nn as nn
from conftest import randomize
from test_cost import hook_macs_and_thop

from autoprune.cost import macs, params
from autoprune.data import load_data
from autoprune.errors import TraceError
from autoprune.graph import trace
from autoprune.keep import First, Reconstruct
from autoprune.models import create_model
from autoprune.optimizers._ssl import channel_norms, channel_parameters
from autoprune.profile import layer_module
from autoprune.space import SearchSpace
from autoprune.surgery import materialise, zero_dropped


def check_pruned(model: nn.Module, shape, widths=None, *, space=None, zero_masking=True):
    """Hold analytic MACs and params to a count of the pruned model, and (when the model's
    ops allow it) the pruned model's output to the zero-masked original's. Returns the space."""
    model = randomize(model).eval()
    space = space or SearchSpace.from_model(model, shape)
    assert len(space) > 0
    widths = space.uniform(0.5) if widths is None else widths
    pruned = materialise(model, space, widths).eval()
    with torch.no_grad():
        counted, _ = hook_macs_and_thop(pruned, shape)
    assert macs(space, widths) == counted
    assert params(space, widths) == sum(p.numel() for p in pruned.parameters())
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs, fulls = _tensors(pruned(x)), _tensors(model(x))  # a detector returns several maps
        assert [o.shape for o in outs] == [f.shape for f in fulls]
        if zero_masking:
            for out, ref in zip(outs, _tensors(zero_dropped(model, space, widths).eval()(x))):
                assert ref.abs().max() > 0.1
                torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    return space


def _tensors(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


# -- grouped convolutions ------------------------------------------------------------------

class _Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.bn_a = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 32, 3, padding=1, groups=4)  # 4 inputs -> 8 outputs per group
        self.bn_b = nn.BatchNorm2d(32)
        self.c = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.bn_b(self.b(torch.relu(self.bn_a(self.a(x)))))))


def test_grouped_conv_keeps_groups_and_truthful_attributes():
    space = check_pruned(_Grouped(), (3, 8, 8))
    assert [g.blocks for g in space.groups] == [4, 4]
    assert space.choices == ((4, 8, 12, 16), (8, 16, 24, 32))
    pruned = materialise(randomize(_Grouped()), space, (8, 16))
    b = pruned.b
    assert (b.in_channels, b.out_channels, b.groups) == (8, 16, 4)
    assert b.weight.shape == (16, 2, 3, 3)
    assert pruned.bn_b.num_features == 16
    # the pruned state loads into a freshly built module with the same attributes
    fresh = nn.Conv2d(b.in_channels, b.out_channels, 3, padding=1, groups=b.groups)
    fresh.load_state_dict(b.state_dict())


@pytest.mark.parametrize("name", ["tv:resnext50_32x4d", "tv:regnet_x_400mf", "tv:regnet_y_400mf"])
def test_resnext_and_regnet_prune_inside_groups(name):
    # shapes only: hook counts on the meta device, uniform(0.5) against the full MACs
    model = create_model(name).eval()
    space = SearchSpace.from_model(model, (3, 64, 64))
    assert any(g.blocks > 1 for g in space.groups)
    half = space.uniform(0.5)
    assert macs(space, half) <= 0.35 * macs(space, space.max_widths())
    pruned = materialise(copy.deepcopy(model).to("meta"), space, half, keep=First())
    with torch.no_grad():
        counted, _ = hook_macs_and_thop(pruned, (3, 64, 64))
    assert counted == macs(space, half)


def test_regnet_surgery_equals_zero_masking():
    check_pruned(create_model("tv:regnet_y_400mf"), (3, 32, 32))


# -- fused norm + activation, stochastic depth, group norm ---------------------------------

def test_torchvision_efficientnet_with_stochastic_depth():
    model = create_model("tv:efficientnet_b0")
    space = check_pruned(model, (3, 32, 32))
    assert len(space) >= 30
    model.train()  # StochasticDepth is a leaf in training mode too
    assert SearchSpace.from_model(model, (3, 32, 32)).graph == space.graph


def test_timm_batchnormact_droppath_and_registry_name():
    pytest.importorskip("timm")
    model = create_model("timm:efficientnet_b0", drop_path_rate=0.2)
    assert model.get_classifier().out_features == 1000
    space = check_pruned(model, (3, 32, 32))
    bn1 = materialise(model, space, space.uniform(0.5)).bn1  # a BatchNormAct2d, sliced and truthful
    assert bn1.num_features == bn1.weight.shape[0] == bn1.running_mean.shape[0] < model.bn1.num_features


class _GroupNormAct(nn.Module):
    """GroupNorm and an activation in one module, as timm's GroupNormAct."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.gn = nn.GroupNorm(4, 32)
        self.b = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.gn(self.a(x))))


def test_group_norm_keeps_its_groups():
    # GroupNorm statistics change with the channels kept: no zero-masking equality to hold
    space = check_pruned(_GroupNormAct(), (3, 8, 8), zero_masking=False)
    assert space.groups[0].blocks == 4 and all(w % 4 == 0 for w in space.choices[0])
    gn = materialise(_GroupNormAct(), space, space.uniform(0.5)).gn
    assert (gn.num_groups, gn.num_channels, gn.weight.shape[0]) == (4, 16, 16)


# -- channels-last permute -> LayerNorm -> Linear -> permute back, and layer scale ---------

@pytest.mark.parametrize("name", ["tv:convnext_tiny", "timm:convnext_atto"])
def test_convnext_layernorm_channels_last_and_layer_scale(name):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    model = create_model(name)
    # LayerNorm statistics change with the channels kept: exact MACs and shapes, no zero-masking
    space = check_pruned(model, (3, 32, 32), zero_masking=False)
    assert {l.kind for l in space.graph.layers} >= {"norm", "scale", "linear"}
    assert macs(space, space.uniform(0.5)) <= 0.35 * macs(space, space.max_widths())
    pruned = materialise(model, space, space.uniform(0.5))
    norms = [m for m in pruned.modules() if isinstance(m, nn.LayerNorm)]
    assert all(m.normalized_shape == tuple(m.weight.shape) for m in norms)
    assert any(m.normalized_shape[0] < 96 for m in norms)


def test_layernorm_over_a_spatial_dimension_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.LayerNorm(6))  # normalises W of an NCHW tensor
    with pytest.raises(Exception, match="not over the channels"):
        SearchSpace.from_model(model, (3, 8, 8))


# -- padding and depthwise convs with a channel multiplier -----------------------------------

class _Padded(nn.Module):
    def __init__(self, pad: nn.Module):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.pad = pad
        self.b = nn.Conv2d(8, 8, 3)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.pad(torch.relu(self.bn(self.a(x))))
        return self.c(torch.nn.functional.pad(self.b(y), (1, 0, 0, 1)))


@pytest.mark.parametrize("pad", [nn.ZeroPad2d(1), nn.ConstantPad2d((1, 2, 0, 1), 0.3), nn.ReflectionPad2d(1),
                                 nn.ReplicationPad2d(1)])
def test_spatial_padding_keeps_the_channels_searchable(pad):
    # A dropped channel padded with a nonzero constant is no longer zero: compare shapes only then.
    zero = not isinstance(pad, nn.ConstantPad2d) or pad.value == 0
    space = check_pruned(_Padded(pad), (3, 10, 10), zero_masking=zero)
    assert [g.name for g in space.groups] == ["a", "b"]


def test_padding_the_channel_dimension_is_refused_with_why():
    class PadChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(10, 4, 1)

        def forward(self, x):
            return self.b(torch.nn.functional.pad(self.a(x), (0, 0, 0, 0, 1, 1)))

    with pytest.raises(TraceError, match="pads the channel dimension"):
        trace(PadChannels(), (3, 8, 8))


class _Multiplier(nn.Module):
    """A depthwise conv with a channel multiplier of 3 (16 -> 48), then a pointwise conv."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16)
        self.dw, self.bn_dw = nn.Conv2d(16, 48, 3, padding=1, groups=16), nn.BatchNorm2d(48)
        self.c = nn.Conv2d(48, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.bn_dw(self.dw(torch.relu(self.bn_a(self.a(x)))))))


def test_a_channel_multiplier_prunes_both_sides_in_step():
    space = check_pruned(_Multiplier(), (3, 8, 8))
    assert [g.name for g in space.groups] == ["a"] and space.groups[0].blocks == 1
    pruned = materialise(randomize(_Multiplier()), space, (6,))
    dw = pruned.dw
    assert (dw.in_channels, dw.out_channels, dw.groups, tuple(dw.weight.shape)) == (6, 18, 6, (18, 1, 3, 3))
    assert pruned.bn_dw.num_features == 18 and pruned.c.in_channels == 18


def test_timm_hgnetv2_stem_pads_and_prunes():
    timm = pytest.importorskip("timm")
    model = timm.create_model("hgnetv2_b0", pretrained=False, num_classes=10).eval()
    space = SearchSpace.from_model(model, (3, 64, 64))
    stem = [g for g in space.groups if g.name.startswith("stem.")]
    assert stem, [g.name for g in space.groups][:5]
    check_pruned(model, (3, 64, 64), space=space, zero_masking=False)


# -- frozen BatchNorm (every pretrained torchvision detector's backbone) ----------------------

def test_a_frozen_batchnorm_is_a_norm_whose_buffers_stay_buffers():
    misc = pytest.importorskip("torchvision.ops.misc")
    models = pytest.importorskip("torchvision.models")
    model = models.resnet18(norm_layer=misc.FrozenBatchNorm2d, num_classes=5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, misc.FrozenBatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    space = check_pruned(model, (3, 32, 32))
    plain = SearchSpace.from_model(models.resnet18(num_classes=5).eval(), (3, 32, 32))
    assert space.names == plain.names and not space.graph.frozen
    pruned = materialise(model, space, space.uniform(0.5))
    assert not any(isinstance(m, misc.FrozenBatchNorm2d) and isinstance(m.weight, nn.Parameter)
                   for m in pruned.modules())
    assert pruned.bn1.weight.shape == pruned.bn1.running_mean.shape == (pruned.conv1.out_channels,)


class _BufferScale(nn.Module):
    """Channels scaled by a per-channel buffer through its own arithmetic: not a parameter surgery
    could slice by name, so its channels keep their width."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 8))

    def forward(self, x):
        return self.b(self.a(x) * (self.gain * 2).reshape(1, -1, 1, 1))


def test_a_per_channel_buffer_fixes_its_channels():
    graph = trace(_BufferScale().eval(), (3, 8, 8))
    assert not any(layer.kind == "scale" for layer in graph.layers) and all(g.fixed for g in graph.groups)


# -- transposed convs (a U-Net's or a segmentation head's upsampling) ------------------------

class _UpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down, self.bn_down = nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.up, self.bn_up = nn.ConvTranspose2d(16, 12, 2, stride=2), nn.BatchNorm2d(12)
        self.skip = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(20, 4, 3, padding=1)

    def forward(self, x):
        y = self.bn_up(self.up(torch.relu(self.bn_down(self.down(x)))))
        return self.head(torch.cat([torch.relu(y), self.skip(x)], 1))


def test_a_transposed_conv_prunes_both_its_sides_with_exact_macs():
    space = check_pruned(_UpNet(), (3, 8, 8))
    assert [g.name for g in space.groups] == ["down", "up", "skip"] and not space.graph.frozen
    for widths in ((6, 5, 3), (16, 2, 8), space.max_widths()):
        check_pruned(_UpNet(), (3, 8, 8), widths, space=space)
    up = materialise(randomize(_UpNet()), space, (6, 5, 3)).up
    assert (up.in_channels, up.out_channels, tuple(up.weight.shape), tuple(up.bias.shape)) == (6, 5, (6, 5, 2, 2), (5,))


def test_a_transposed_convs_filters_are_its_weights_second_dimension():
    """L1 keeps the output channels whose filters (weight[:, j]) are largest, and SSL's
    group lasso and a latency table's stand-in layer read them so as well."""
    model = randomize(_UpNet()).eval()
    with torch.no_grad():
        model.up.weight.mul_(0.01)
        model.up.weight[:, [2, 7, 9]] *= 1000  # three filters far larger than the rest
    space = SearchSpace.from_model(model, (3, 8, 8))
    pruned = materialise(model, space, (16, 3, 8))
    torch.testing.assert_close(pruned.up.weight, model.up.weight[:, [2, 7, 9]])
    graph = trace(model, (3, 8, 8))
    gid = next(g.id for g in graph.groups if g.name == "up")
    pieces = channel_parameters(model, graph, [gid])[gid]
    expected = torch.cat([model.up.weight.transpose(0, 1).flatten(1), model.up.bias[:, None],
                          model.bn_up.weight[:, None], model.bn_up.bias[:, None]], 1).detach().double().norm(dim=1)
    torch.testing.assert_close(channel_norms(pieces, 12), expected)
    layer = next(l for l in graph.layers if l.name == "up")
    stand_in = layer_module(model, layer, [], 16, 5)
    assert isinstance(stand_in[0], nn.ConvTranspose2d) and stand_in(torch.zeros(1, 16, 4, 4)).shape == (1, 5, 8, 8)


def test_a_grouped_transposed_conv_is_frozen():
    class Grouped(_UpNet):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(16, 12, 2, stride=2, groups=4)

    space = check_pruned(Grouped(), (3, 8, 8))
    (leaf,) = space.graph.frozen
    assert leaf.path == "up" and "grouped transposed conv" in leaf.reason


def test_a_transposed_conv_called_by_keyword_traces():
    class Keyword(_UpNet):
        def forward(self, x):
            y = self.bn_up(self.up(input=torch.relu(self.bn_down(self.down(x)))))
            return self.head(torch.cat([torch.relu(y), self.skip(x)], 1))

    space = check_pruned(Keyword(), (3, 8, 8))
    assert "up" in [g.name for g in space.groups]


def test_reconstruct_ranks_a_group_only_a_transposed_conv_reads_by_its_filters():
    """The rule samples no transposed conv's input; the channels it reads are ranked by their
    filters, so dead ones go first rather than the first ones."""
    model = randomize(_UpNet()).eval()
    with torch.no_grad():
        for t in (model.down.weight, model.down.bias, model.bn_down.weight, model.bn_down.bias):
            t[:8] = 0  # the first 8 of 'down' are dead
    space = SearchSpace.from_model(model, (3, 16, 16))
    rule = Reconstruct(images=16, batch_size=8)
    rule = rule.fit(model, space.graph, load_data("synthetic", val_size=16, n_train=32, image_size=16))
    gid = next(g.id for g in space.graph.groups if g.name == "down")
    assert rule.keep_indices(model, space.graph, space.full_widths((8, 12, 8)))[gid].tolist() == list(range(8, 16))


# -- softmax and unary maths (YOLO's classification and OBB heads) ---------------------------

class _Normalised(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.a, self.b, self.c, self.d = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 5, 1), nn.Conv2d(5, 4, 1)

    def forward(self, x):
        y = self.c(self.b(torch.softmax(self.a(x), self.dim).cos()).exp().softmax(dim=1))
        return self.d(torch.relu(y))


@pytest.mark.parametrize("dim, searchable", [(1, False), (-3, False), (2, True), (-1, True)])
def test_a_softmax_over_the_channels_keeps_their_width_and_over_positions_searches_them(dim, searchable):
    space = check_pruned(_Normalised(dim), (3, 8, 8), zero_masking=False)
    names = [g.name for g in space.groups]
    assert ("a" in names) is searchable and "b" not in names and "c" in names  # b's softmax is over its channels


class _Written(nn.Module):
    """A tensor's first channels overwritten in place by another conv's, as ultralytics writes
    its decoded keypoints into slices: fx's proxies take no item assignment, the tracer's
    example run does."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.d, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1), nn.Conv2d(8, 3, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        y = self.b(h).clone()
        y[:, :3] = self.d(h).sigmoid()
        return self.c(y)


def test_a_tensor_written_through_a_slice_keeps_its_channels_and_the_rest_is_searched():
    space = check_pruned(_Written(), (3, 8, 8))
    assert [g.name for g in space.groups] == ["a"] and not space.graph.frozen
