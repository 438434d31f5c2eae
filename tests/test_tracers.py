"""The fx tracers: a forward whose Python code depends on its maps' shapes (a detection head
that makes its anchors from them and caches them on the module) traces with every node run
on examples of the input; what it stores on its modules while traced is undone."""

import pytest
import torch
import torch.nn as nn
from test_cost import hook_macs_and_thop

from autoprune.cost import macs
from autoprune.graph import fx_graph_module, trace
from autoprune.space import SearchSpace
from autoprune.surgery import materialise

SHAPE = (3, 16, 16)


def _grid(f):
    """Cell centres of a map, from its size alone (as ultralytics' make_anchors)."""
    h, w = f.shape[2:]
    ys, xs = torch.meshgrid(torch.arange(h).type_as(f), torch.arange(w).type_as(f), indexing="ij")
    return torch.stack((xs, ys)).view(2, -1) + 0.5


class _Decode(nn.Module):
    """One conv branch per level, flattened and joined; the first two outputs are offsets
    from a grid made from the maps' sizes when they change, and kept on the module."""

    shape = None

    def __init__(self, ch=(8, 16), no=6, gate=False):
        super().__init__()
        self.no, self.gate = no, gate
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, no, 1))
            for c in ch)

    def forward(self, feats):
        bs = feats[0].shape[0]
        out = torch.cat([conv(f).view(bs, self.no, -1) for conv, f in zip(self.convs, feats)], -1)
        shape = feats[0].shape
        if self.shape != shape:
            self.grid = torch.cat([_grid(f) for f in feats], 1)
            self.shape = shape
        if self.gate and out.sum() > 0:  # control flow on a value: still cannot be traced
            out = out * 2
        xy, rest = out.split([2, self.no - 2], 1)
        return torch.cat([xy + self.grid, rest.sigmoid()], 1)


class _Detector(nn.Module):
    def __init__(self, gate=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = _Decode(gate=gate)

    def forward(self, x):
        a = self.stem(x)
        return self.head([a, self.down(a)])


def test_a_head_that_makes_its_grid_from_shapes_is_searched_and_left_as_it_was():
    torch.manual_seed(0)
    model = _Detector().eval()
    space = SearchSpace.from_model(model, SHAPE)
    assert not space.graph.frozen
    free = {space.graph.groups[g].name for g in space.free}
    assert {"stem.0", "stem.3", "down.0", "head.convs.0.0", "head.convs.1.0"} <= free
    assert model.head.shape is None and "grid" not in vars(model.head)  # nothing cached by the trace
    widths = space.uniform(0.5)
    pruned = materialise(model, space, widths).eval()
    assert type(pruned) is _Detector
    with torch.no_grad():
        counted, _ = hook_macs_and_thop(pruned, SHAPE)
    assert macs(space, widths) == counted
    with torch.no_grad():  # its own forward makes the grid for any size and batch
        assert pruned(torch.randn(3, 3, 32, 48)).shape == (3, 6, 32 * 48 + 16 * 24)
        full = materialise(model, space, space.max_widths()).eval()
        x = torch.randn(2, *SHAPE)
        torch.testing.assert_close(full(x), model(x))


def test_the_traced_graph_keeps_the_batch_and_the_grid_as_a_constant():
    torch.manual_seed(0)
    model = _Detector().eval()
    attributes = set(vars(model))
    graph = trace(model, SHAPE)
    gm = fx_graph_module(model, graph)
    assert not any(n.op == "call_function" and n.target is torch.meshgrid for n in gm.graph.nodes)
    constants = [n.target for n in gm.graph.nodes if n.op == "get_attr"]
    assert constants and all(isinstance(getattr(gm, c), torch.Tensor) for c in constants)
    assert set(vars(model)) == attributes  # the graph holds its constants, not the user's model
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


def test_a_cached_shape_from_an_earlier_forward_does_not_stop_the_trace():
    model = _Detector().eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 24, 24))
    cached = model.head.shape
    assert not trace(model, SHAPE).frozen
    assert model.head.shape is cached


def test_tracing_in_training_mode_leaves_the_running_statistics_alone():
    model = _Detector().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not trace(model, SHAPE, mode="train").frozen
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_control_flow_on_a_value_still_freezes_the_module():
    graph = trace(_Detector(gate=True).eval(), SHAPE)
    assert [f.path for f in graph.frozen] == ["head"]
    assert "control flow" in graph.frozen[0].reason


@pytest.mark.parametrize("offset", [0.5, torch.tensor(0.5)])
def test_a_constant_added_to_fixed_channels_needs_no_rule(offset):
    """The grid (2 x cells values) meets the head's output channels, which keep their width."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.out(self.conv(x)).flatten(2)
            return y + _grid(x) * offset

    graph = trace(Net(), SHAPE)
    assert not graph.frozen and any(not g.fixed for g in graph.groups)
