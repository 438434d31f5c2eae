"""A user's own rule, written with public names only: traced, pruned, and the pruned model runs."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import randomize

import autoprune
from autoprune.cost import params
from autoprune.errors import AutopruneError, RuleError, TraceError
from autoprune.graph import ChannelTensor, GroupTable, Layer, register_rule, trace, unregister_rule
from autoprune.space import SearchSpace
from autoprune.surgery import materialise, zero_dropped

README = Path(autoprune.__file__).resolve().parent.parent / "README.md"
SHAPE = (3, 8, 8)


class ChannelGate(nn.Module):
    """A learnable gate per channel, squashed by a sigmoid."""

    def __init__(self, channels):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * torch.sigmoid(self.logit).view(1, -1, 1, 1)


def channel_gate(table, node, gate, inputs):
    """Keeps the channels of its input; ``logit`` has one value per channel, sliced with them."""
    (x,) = inputs
    if x.dim != 1 or gate.logit.numel() != sum(table.widths(x.layout)):
        raise TraceError(f"module '{node.target}' gates {gate.logit.numel()} channels of a tensor that has others")
    table.add_layer(Layer(f"{node.target}.logit", "scale", tuple(x.layout)))
    return x


def _net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), ChannelGate(16), nn.ReLU(),
                          nn.Conv2d(16, 4, 1))
    randomize(model)
    with torch.no_grad():
        model[2].logit.copy_(torch.randn(16))
    return model.eval()


@pytest.fixture
def gate_rule():
    register_rule(ChannelGate, channel_gate)
    yield
    unregister_rule(ChannelGate)


def test_a_user_rule_for_a_gate_module_prunes_it_with_its_channels(gate_rule):
    model = _net()
    space = SearchSpace.from_model(model, SHAPE)
    conv = next(g for g in space.graph.groups if g.name == "0")
    assert not conv.fixed and conv.members == ("0", "1")
    assert any(l.name == "2.logit" and l.kind == "scale" and l.in_layout == (conv.id,) for l in space.graph.layers)
    widths = space.uniform(0.5)
    small = materialise(model, space, widths)
    x = torch.randn(2, *SHAPE)
    assert small[2].logit.shape == (8,) and small[0].out_channels == 8
    # The pruned model computes what the full one computes with the dropped channels zeroed.
    torch.testing.assert_close(small(x), zero_dropped(model, space, widths)(x), rtol=1e-5, atol=1e-5)
    assert params(space, widths) == sum(p.numel() for p in small.parameters())


def test_a_handler_gets_and_returns_public_types(gate_rule):
    seen = []

    def spy(table, node, gate, inputs):
        seen.append((type(table), node.target, type(gate), [type(t) for t in inputs]))
        return channel_gate(table, node, gate, inputs)

    register_rule(ChannelGate, spy)  # replaces the fixture's rule; the fixture removes it
    trace(_net(), SHAPE)
    assert seen == [(GroupTable, "2", ChannelGate, [ChannelTensor])]


def test_the_readme_rule_example_runs():
    text = README.read_text()
    section = text[text.index("### A rule for your own op"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    namespace = {}
    try:
        exec(compile(code, "README.md", "exec"), namespace)
        small, space = namespace["small"], namespace["space"]
        assert not next(g for g in space.graph.groups if g.name == "0").fixed
        assert small[2].logit.shape == (8,)
    finally:
        unregister_rule(namespace["ChannelGate"])


@pytest.mark.parametrize("target", [42, nn.ReLU(), int, "not a name"])
def test_a_bad_target_is_one_line_rule_error(target):
    with pytest.raises(RuleError) as info:
        register_rule(target, channel_gate)
    assert isinstance(info.value, AutopruneError) and isinstance(info.value, TypeError)
    assert len(str(info.value).splitlines()) == 1 and str(info.value).startswith("register_rule: ")


def test_unregistering_a_rule_that_was_never_added_is_a_rule_error():
    with pytest.raises(RuleError, match="no rule was registered for ChannelGate"):
        unregister_rule(ChannelGate)


class ParamGated(nn.Module):
    """A per-channel gate parameter read through indexing, elementwise functions and reshapes."""

    READS = {
        "index": lambda g: g[None, :, None, None],
        "sigmoid-view": lambda g: torch.sigmoid(g).view(1, -1, 1, 1),
        "method-index": lambda g: g.sigmoid()[None, :, None, None],
        "unsqueeze": lambda g: g.unsqueeze(-1).unsqueeze(-1),
    }

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 3, padding=1)
        self.gate = nn.Parameter(torch.randn(16))

    def forward(self, x):
        return self.b(self.a(x) * self.READS[self.how](self.gate))


@pytest.mark.parametrize("how", sorted(ParamGated.READS))
def test_a_gate_parameter_read_through_indexing_or_functions_is_sliced_with_its_channels(how):
    torch.manual_seed(0)
    model = ParamGated(how).eval()
    space = SearchSpace.from_model(model, (3, 8, 8))
    assert space.max_widths() == (16,)
    small = materialise(model, space, space.uniform(0.5))
    # the kept channels, found by their filters, carry their own gate values
    kept = [int((model.a.weight == w).all(dim=(1, 2, 3)).nonzero()) for w in small.a.weight]
    assert len(kept) == 8 and torch.equal(small.gate.detach(), model.gate.detach()[kept])
    x = torch.randn(2, 3, 8, 8)
    zeroed = ParamGated(how).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        dropped = [c for c in range(16) if c not in kept]
        zeroed.a.weight[dropped] = 0
        zeroed.a.bias[dropped] = 0
        torch.testing.assert_close(small(x), zeroed(x))
