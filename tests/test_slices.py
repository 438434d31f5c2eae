"""Channel slices, chunks, splits and shuffles: each traces, its analytic MACs equal a hook
count of the pruned model, and surgery computes what the zero-masked original computes.
Ends with a small YOLO-style detector (C2f blocks, SPPF, an upsampling neck, three heads)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import randomize
from test_cost import hook_macs_and_thop
from test_families import check_pruned

from autoprune.cost import macs
from autoprune.export import export_model
from autoprune.graph import trace
from autoprune.keep import BnGamma, First
from autoprune.models import create_model
from autoprune.optimizers._ssl import channel_parameters
from autoprune.optimizers.dmcp import Gates
from autoprune.profile import axes
from autoprune.space import SearchSpace
from autoprune.surgery import materialise, zero_dropped


def _conv(cin, cout, k=1, s=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.SiLU())


def _by_name(space):
    return {g.name: g for g in space.graph.groups}


# -- constant slices -----------------------------------------------------------------------

class _Ghost(nn.Module):
    """GhostNet's module: half the outputs from a conv, half from a depthwise conv of those,
    concatenated and cut to ``oup`` (the whole tensor unless ``oup`` is odd)."""

    def __init__(self, cin, oup):
        super().__init__()
        init = (oup + 1) // 2
        self.oup = oup
        self.primary = _conv(cin, init)
        self.cheap = _conv(init, init, 3, groups=init)

    def forward(self, x):
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], dim=1)[:, :self.oup]


class _GhostNet(nn.Module):
    def __init__(self, oup=16):
        super().__init__()
        self.stem = _conv(3, oup, 3)
        self.ghost1 = _Ghost(oup, 24)
        self.ghost2 = _Ghost(24, oup)
        self.head = nn.Conv2d(oup, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.ghost2(self.ghost1(x)))  # a residual over a concatenation


def test_ghost_slice_of_the_whole_tensor_and_tiled_residual_stay_searchable():
    space = check_pruned(_GhostNet(16), (3, 8, 8))
    by = _by_name(space)
    # the stem's output is added to cat([y, cheap(y)]): it follows ghost2's conv, copy by copy
    assert by["stem.0"].follows.kind == "tile" and by["stem.0"].follows.parent == by["ghost2.primary.0"].id
    assert {"ghost1.primary.0", "ghost2.primary.0"} <= set(space.names)


def test_ghost_slice_inside_a_group_freezes_it():
    space = check_pruned(_GhostNet(15), (3, 8, 8))  # ghost2 makes 16 channels and keeps 15
    by = _by_name(space)
    assert by["ghost2.primary.0"].fixed and "ghost1.primary.0" in space.names


class _Tail(nn.Module):
    """Slices at constant offsets, of the channels and of the spatial dimensions."""

    def __init__(self):
        super().__init__()
        self.a, self.b = _conv(3, 8), _conv(3, 16)
        self.c = nn.Conv2d(16, 4, 1)
        self.d = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.c(y[:, 8:])[:, :, 2:6, 2:6] + self.d(y[..., 2:6, :][:, :, :, 2:6])  # spatial slices keep channels


def test_slice_at_a_constant_offset_keeps_every_group_searchable():
    space = check_pruned(_Tail(), (3, 8, 8))
    assert space.names == ("a.0", "b.0")
    # y[:, 8:] starts after a's kept channels in the pruned model: surgery narrows at that count
    assert [(r.kind, r.arg) for r in space.graph.rewrites] == [("narrow", ((8, 24),))]


# -- chunk and split: CSP / C2f ------------------------------------------------------------

class _Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1, self.cv2 = _conv(c, c, 3), _conv(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class _C2f(nn.Module):
    """YOLOv8's C2f: a conv, its output cut in two, a chain of bottlenecks on the second
    half, every part concatenated. ``split`` cuts at constant offsets, ``chunk`` in halves."""

    def __init__(self, cin, cout, n=2, cut="chunk"):
        super().__init__()
        self.c, self.cut = cout // 2, cut
        self.cv1 = _conv(cin, 2 * self.c)
        self.m = nn.ModuleList(_Bottleneck(self.c) for _ in range(n))
        self.cv2 = _conv((2 + n) * self.c, cout)

    def forward(self, x):
        if self.cut == "chunk":
            a, b = self.cv1(x).chunk(2, 1)
        elif self.cut == "torch.split":
            a, b = torch.split(self.cv1(x), self.c, dim=1)
        else:
            a, b = self.cv1(x).split((self.c, self.c), 1)
        y = [a, b]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


def test_c2f_chunk_prunes_both_halves_alike():
    model = nn.Sequential(_conv(3, 16, 3), _C2f(16, 16, cut="chunk"), nn.Conv2d(16, 4, 1))
    space = check_pruned(model, (3, 8, 8))
    cv1 = _by_name(space)["1.cv1.0"]
    assert not cv1.fixed and cv1.blocks == 2 and all(w % 2 == 0 for w in space.choices[space.names.index("1.cv1.0")])
    # the second half carries the bottlenecks' residual group: it follows cv1's second half
    tail = _by_name(space)["1.m.0.cv2.0"]
    part = space.graph.groups[tail.follows.parent]
    assert (tail.follows.kind, tail.follows.index, tail.follows.count) == ("part", 1, 2) and part.id == cv1.id
    pruned = materialise(randomize(model), space, space.uniform(0.5))
    assert pruned[1].cv2[0].in_channels == 4 * pruned[1].m[0].cv2[0].out_channels


@pytest.mark.parametrize("cut", ["split", "torch.split"])
def test_c2f_split_at_constant_offsets_cuts_cv1_into_ranges(cut):
    model = nn.Sequential(_conv(3, 16, 3), _C2f(16, 16, cut=cut), nn.Conv2d(16, 4, 1))
    space = check_pruned(model, (3, 8, 8))
    by = _by_name(space)
    # the cut falls inside cv1's group: each half is a range of it, and the bottlenecks' residual
    # group follows the second half
    cv1, tail = by["1.cv1.0"], by["1.m.0.cv2.0"]
    assert cv1.id in space.free and cv1.cuts == (8,)
    assert (tail.follows.kind, tail.follows.parent, tail.follows.index, tail.follows.count) == ("range", cv1.id, 8, 16)
    check_pruned(model, (3, 8, 8), space.sample(np.random.default_rng(0)), space=space)


def test_split_by_a_list_of_sizes_splits_at_the_kept_counts():
    """MixNet's mixed conv: ``torch.split(x, [a, b])`` on a concatenation; the sizes must add up to
    the width, so surgery passes the kept counts in their place."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = _conv(3, 8, 3), _conv(3, 8, 3)
            self.c, self.d = _conv(8, 8, 3), _conv(8, 8, 3)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            p, q = torch.split(torch.cat([self.a(x), self.b(x)], 1), dim=1, split_size_or_sections=[8, 8])
            return self.head(torch.cat([self.c(p), self.d(q)], 1))

    space = check_pruned(Net(), (3, 8, 8))
    assert space.names == ("a.0", "b.0", "c.0", "d.0")


class _MixedResidual(nn.Module):
    """MixNet's block: a group split by a list of sizes, a depthwise conv per part, the parts
    concatenated again, then a pointwise conv made of two convs whose concatenated outputs are
    added to the block's input."""

    def __init__(self):
        super().__init__()
        self.stem = _conv(3, 12, 3)
        self.dw3, self.dw5 = _conv(4, 4, 3, groups=4), _conv(8, 8, 5, groups=8)
        self.pw_a, self.pw_b = nn.Conv2d(12, 5, 1), nn.Conv2d(12, 7, 1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        p, q = torch.split(x, [4, 8], 1)
        y = torch.cat([self.dw3(p), self.dw5(q)], 1)
        return self.head(x + torch.cat([self.pw_a(y), self.pw_b(y)], 1))


def test_residual_over_a_split_conv_couples_it_range_by_range():
    model = _MixedResidual()
    space = check_pruned(model, (3, 8, 8))
    by = _by_name(space)
    stem = by["stem.0"]
    # the split's parts join back into the stem's group; the residual cuts it where pw_a ends
    assert stem.id in space.free and stem.cuts == (4, 5)
    assert [(by[n].follows.kind, by[n].follows.index, by[n].follows.count) for n in ("pw_a", "pw_b")] == [
        ("range", 0, 5), ("range", 5, 12)]
    for seed in range(3):
        check_pruned(model, (3, 8, 8), space.sample(np.random.default_rng(seed)), space=space)


class _MixedTwice(nn.Module):
    """A pointwise conv made of two convs, its output split again across their boundary, then
    added to the block's input: b's ranges become ranges of the stem's group."""

    def __init__(self):
        super().__init__()
        self.stem = _conv(3, 12, 3)
        self.pw_a, self.pw_b = nn.Conv2d(12, 5, 1), nn.Conv2d(12, 7, 1)
        self.dw_p, self.dw_q = _conv(6, 6, 3, groups=6), _conv(6, 6, 5, groups=6)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        p, q = torch.cat([self.pw_a(x), self.pw_b(x)], 1).split([6, 6], 1)
        return self.head(x + torch.cat([self.dw_p(p), self.dw_q(q)], 1))


def test_ranges_of_a_group_that_follows_a_range_resolve_to_the_root():
    model = _MixedTwice()
    space = check_pruned(model, (3, 8, 8))
    stem = _by_name(space)["stem.0"]
    assert stem.id in space.free and stem.cuts == (5, 6) and len(space) == 1
    for seed in range(3):
        check_pruned(model, (3, 8, 8), space.sample(np.random.default_rng(seed)), space=space)


def test_chunk_of_a_concatenation_couples_its_halves():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = _conv(3, 8), _conv(3, 8)
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            p, q = torch.cat([self.a(x), self.b(x)], 1).chunk(2, dim=1)
            return self.c(p + 2 * q)

    space = check_pruned(Net(), (3, 8, 8))
    assert space.names == ("a.0",) and set(space.groups[0].producers) == {"a.0", "b.0"}


def test_chunk_parts_that_meet_each_other_are_frozen():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = _conv(3, 8)
            self.c = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            p, q = self.a(x).chunk(2, 1)
            return self.c(p * q)  # two different halves as the same channels: not prunable alike

    g = trace(Net(), (3, 8, 8))
    assert all(x.fixed for x in g.groups)


# -- channel shuffle -----------------------------------------------------------------------

def _shuffle(x, groups):
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, c, h, w)


class _ShuffleBlock(nn.Module):
    def __init__(self, c, down):
        super().__init__()
        self.down = down
        half = c // 2
        self.left = nn.Sequential(_conv(c, c, 3, 2, groups=c), _conv(c, half)) if down else None
        self.right = nn.Sequential(_conv(c if down else half, half), _conv(half, half, 3, 2 if down else 1, groups=half),
                                   _conv(half, half))

    def forward(self, x):
        if self.down:
            out = torch.cat((self.left(x), self.right(x)), dim=1)
        else:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.right(b)), dim=1)
        return _shuffle(out, 2)


def _shuffle_net():
    return nn.Sequential(_conv(3, 16, 3), _ShuffleBlock(16, True), _ShuffleBlock(16, False), _ShuffleBlock(16, False),
                         nn.Conv2d(16, 4, 1))


def test_channel_shuffle_keeps_each_branch_its_own_width():
    space = check_pruned(_shuffle_net(), (3, 16, 16))
    by = _by_name(space)
    left, right = by["1.left.1.0"], by["1.right.2.0"]
    # Not coupled: each branch of the downsampling block is searched on its own, and the next
    # block's chunk cuts each in two at the shuffled positions.
    assert left.id in space.free and right.id in space.free and left.follows is None
    # The shuffle interleaves them: the next chunk takes half of each, the one after a quarter.
    assert left.cuts == right.cuts == (2, 4)
    ranges = [g for g in space.graph.groups if g.follows is not None and g.follows.kind == "range"]
    assert {g.follows.parent for g in ranges} >= {left.id, right.id}
    assert [r.kind for r in space.graph.rewrites] == ["gather", "split", "gather", "split", "gather"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_channel_shuffle_is_exact_at_any_widths(seed):
    """Odd widths included: surgery gathers the kept channels where the shuffle puts them."""
    model = _shuffle_net()
    space = SearchSpace.from_model(model, (3, 16, 16), min_ratio=0.1, step=0.05, round_to=1)
    widths = space.sample(np.random.default_rng(seed))
    check_pruned(model, (3, 16, 16), widths, space=space)


def test_channel_shuffle_state_dict_loads_into_the_fresh_architecture():
    model = randomize(_shuffle_net()).eval()
    space = SearchSpace.from_model(model, (3, 16, 16), min_ratio=0.1, step=0.05, round_to=1)
    widths = space.sample(np.random.default_rng(3))
    pruned = materialise(model, space, widths).eval()
    fresh = materialise(model, space, widths, fresh=True).eval()
    fresh.load_state_dict(pruned.state_dict())  # the gather indices travel with the weights
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh(x), pruned(x))


def test_channel_shuffle_of_one_group_keeps_it_searchable():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = _conv(3, 8), _conv(8, 16), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.c(_shuffle(self.b(self.a(x)), 4))

    space = check_pruned(Net(), (3, 8, 8))
    assert space.names == ("a.0", "b.0")


def test_an_op_without_a_rule_for_shuffled_channels_fixes_them():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = _conv(3, 8), _conv(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            y = _shuffle(self.b(self.a(x)), 2)
            return self.c(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))  # a flatten keeps no positions

    space = check_pruned(Net(), (3, 8, 8))
    assert space.names == ("a.0",) and _by_name(space)["b.0"].fixed


def test_torchvision_shufflenet_v2(one_thread):
    space = check_pruned(create_model("tv:shufflenet_v2_x1_0"), (3, 32, 32))
    assert len(space) >= 30  # every branch, the shuffled trunks included
    assert macs(space, space.uniform(0.5)) <= 0.35 * macs(space, space.max_widths())


def test_timm_ghostnet(one_thread):
    pytest.importorskip("timm")
    model = randomize(create_model("timm:ghostnet_100")).eval()
    # its logits reach the hundreds: zero-masking is compared in float64 below
    space = check_pruned(model, (3, 32, 32), zero_masking=False)
    assert len(space) >= 30
    half = space.uniform(0.5)
    assert macs(space, half) <= 0.35 * macs(space, space.max_widths())
    pruned, ref = materialise(model, space, half).double().eval(), zero_dropped(model, space, half).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref(x), atol=1e-8, rtol=1e-8)


# -- a YOLO-style detector -----------------------------------------------------------------

class _SPPF(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.cv1 = _conv(cin, cin // 2)
        self.cv2 = _conv(cin * 2, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class _TinyYolo(nn.Module):
    """Backbone of strided convs and C2f blocks, SPPF, an upsampling neck that concatenates
    the scales, and one head per scale: returns three maps."""

    def __init__(self, outputs=6, w=8):
        super().__init__()
        self.stem = _conv(3, w, 3, 2)
        self.s1 = nn.Sequential(_conv(w, 2 * w, 3, 2), _C2f(2 * w, 2 * w, 1))
        self.s2 = nn.Sequential(_conv(2 * w, 4 * w, 3, 2), _C2f(4 * w, 4 * w, 2, cut="split"))
        self.s3 = nn.Sequential(_conv(4 * w, 8 * w, 3, 2), _C2f(8 * w, 8 * w, 1), _SPPF(8 * w, 8 * w))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n2 = _C2f(12 * w, 4 * w, 1)
        self.n1 = _C2f(6 * w, 2 * w, 1)
        self.heads = nn.ModuleList(nn.Conv2d(c, outputs, 1) for c in (2 * w, 4 * w, 8 * w))

    def forward(self, x):
        p1 = self.s1(self.stem(x))
        p2 = self.s2(p1)
        p3 = self.s3(p2)
        n2 = self.n2(torch.cat([self.up(p3), p2], 1))
        n1 = self.n1(torch.cat([F.interpolate(n2, scale_factor=2.0), p1], 1))
        return [head(f) for head, f in zip(self.heads, (n1, n2, p3))]


def test_yolo_style_detector_traces_prunes_and_keeps_its_outputs(one_thread):
    model = randomize(_TinyYolo()).eval()
    shape = (3, 64, 64)
    space = SearchSpace.from_model(model, shape)
    assert len(space) >= 10  # the strided convs, the C2f halves, the bottlenecks' inner convs, the necks
    by = _by_name(space)
    # chunk: both halves pruned alike; split at constant offsets: each half a range
    assert by["s1.1.cv1.0"].blocks == 2 and by["s2.1.cv1.0"].cuts == (16,)
    assert by["s1.1.cv1.0"].id in space.free and by["s2.1.cv1.0"].id in space.free
    for widths in (space.max_widths(), space.uniform(0.5)):
        pruned = materialise(copy.deepcopy(model).to("meta"), space, widths, keep=First())
        with torch.no_grad():
            counted, _ = hook_macs_and_thop(pruned, shape)
        assert counted == macs(space, widths)
    assert macs(space, space.uniform(0.5)) <= 0.5 * macs(space, space.max_widths())
    # surgery equals zero-masking, output shapes kept (at 0.75: at 0.5 the maps are too faint to tell)
    check_pruned(model, shape, space.uniform(0.75), space=space)
    outs = materialise(model, space, space.uniform(0.5))(torch.randn(1, *shape))
    assert [tuple(o.shape) for o in outs] == [(1, 6, 16, 16), (1, 6, 8, 8), (1, 6, 4, 4)]


def test_latency_grid_spans_a_follower_s_range():
    model = nn.Sequential(_conv(3, 16, 3), _C2f(16, 16, cut="chunk"), nn.Conv2d(16, 4, 1))
    space = SearchSpace.from_model(model, (3, 8, 8))
    layer = next(l for l in space.graph.layers if l.name == "1.m.0.cv2.0")  # its output follows cv1's half
    assert space.graph.groups[layer.out_group].follows is not None
    _, outs = axes(space, layer, grid=4)
    assert len(outs) == 4 and outs[-1] == 8 and outs[0] < 8


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_shuffled_model_exports(tmp_path, fmt):
    """The rewritten forward (gathers and splits of constant sizes) exports and is verified."""
    if fmt == "onnx":
        pytest.importorskip("onnx")
    model = randomize(_shuffle_net()).eval()
    space = SearchSpace.from_model(model, (3, 16, 16), min_ratio=0.1, step=0.05, round_to=1)
    pruned = materialise(model, space, space.sample(np.random.default_rng(4))).eval()
    diff = export_model(pruned, fmt, tmp_path / f"m.{fmt}", (3, 16, 16))
    assert diff <= 1e-4 and (tmp_path / f"m.{fmt}").stat().st_size > 0


class _ShuffleThenNorm(nn.Module):
    """Two producers interleaved by a shuffle, then a depthwise conv and a norm over the shuffled
    channels (as in ShuffleNetV2's downsampling branch): a's channel i sits at position 2i."""

    def __init__(self):
        super().__init__()
        self.a, self.b = _conv(3, 8), _conv(3, 8)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.mid = nn.Conv2d(16, 6, 1)  # no norm after it: DMCP gates its output, unpermuted
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.head(self.mid(self.bn(self.dw(_shuffle(torch.cat((self.a(x), self.b(x)), 1), 2)))))


def test_per_channel_parameters_after_a_shuffle_are_read_at_their_positions():
    model = randomize(_ShuffleThenNorm()).eval()
    space = check_pruned(model, (3, 8, 8))
    a, b = _by_name(space)["a.0"].id, _by_name(space)["b.0"].id
    with torch.no_grad():
        model.a[1].weight.fill_(1.0)
        model.bn.weight.copy_(torch.arange(16.0))
    # bn_gamma: a's own norm (1) and the shuffled norm at a's positions 0, 2, 4, ... averaged.
    scores = BnGamma().scores(model, space.graph)[a]
    torch.testing.assert_close(scores, (1 + 2 * torch.arange(8, dtype=torch.float64)) / 2)
    rows = [r for p, r in channel_parameters(model, space.graph, [a])[a] if p is model.bn.weight]
    assert [r.tolist() for r in rows] == [list(range(0, 16, 2))]
    mid = _by_name(space)["mid"].id
    gates = Gates(model, space)
    gates.set({a: torch.full((8,), 2.0), b: torch.full((8,), 3.0), mid: torch.arange(6.0)})
    assert gates._vectors["bn"].tolist() == [2.0, 3.0] * 8
    assert gates._vectors["mid"].tolist() == list(range(6))
    gates.remove()


def test_a_rewritten_forward_keeps_in_place_ops():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c, self.d = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(5, 4, 1)

        def forward(self, x):
            y = self.a(x)
            y.relu_()  # its result unused: only its effect on y counts
            p, q = torch.split(y, [3, 5], 1)
            return self.c(p) + self.d(q)

    space = check_pruned(Net(), (3, 8, 8))
    assert space.names == ("a",) and [r.kind for r in space.graph.rewrites] == ["split"]


def test_a_single_channel_slice_broadcast_keeps_its_group():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = _conv(3, 8), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.c(y * torch.sigmoid(y[:, :1]))  # the first channel gates all of them

    g = trace(Net(), (3, 8, 8))
    assert all(x.fixed for x in g.groups)


def test_a_forward_that_depends_on_the_mode_is_not_rewritten():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.s, self.a, self.b = _conv(3, 6), _conv(6, 8), _conv(6, 8)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            x = self.s(x)
            y = _shuffle(torch.cat((self.a(x), self.b(x)), 1), 2)
            return self.head(F.dropout(y, 0.5, training=self.training))  # fx keeps one mode's branch

    model = Net()
    space = check_pruned(model, (3, 8, 8))
    assert space.graph.rewrites == () and space.names == ("s.0",)
    pruned = materialise(model, space, space.uniform(0.5)).train()
    assert not isinstance(pruned, torch.fx.GraphModule) and pruned.training
