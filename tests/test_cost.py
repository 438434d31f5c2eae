"""The analytic cost model against counts taken on the materialised model."""

import copy

import numpy as np
import pytest
import thop
import torch
import torch.nn as nn
from conftest import REGISTRY, input_shape, random_widths

from autoprune.cost import human, macs, params, parse_count
from autoprune.keep import First
from autoprune.space import SearchSpace
from autoprune.surgery import materialise

N_RANDOM = 20


def hook_macs_and_thop(model: nn.Module, shape) -> tuple[int, float]:
    """Conv/Linear MACs counted by forward hooks, and thop's count over the same layers
    (thop's other counters are switched off so both follow the Conv/Linear convention), on one
    zero input: every row of an output counts (a detector's box head runs once per proposal)."""
    counted = []

    def conv_hook(m, inp, kwargs, out):
        if isinstance(m, nn.modules.conv._ConvTransposeNd):  # each input element scattered to every output channel
            x = inp[0] if inp else kwargs["input"]
            counted.append(x.numel() * (m.out_channels // m.groups) * int(np.prod(m.kernel_size)))
        else:
            counted.append(out.numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size)))

    def linear_hook(m, inp, out):
        counted.append(out.numel() * m.in_features)

    handles = []
    zero_ops = {}
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv_hook, with_kwargs=True))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif not list(m.children()):
            zero_ops[type(m)] = lambda m, x, y: None
    x = torch.zeros(1, *shape, device=next(model.parameters()).device)
    ops, _ = thop.profile(model, inputs=(x,), custom_ops=zero_ops, verbose=False)
    for h in handles:
        h.remove()
    return sum(counted), float(ops)


@pytest.mark.parametrize("name", REGISTRY)
def test_analytic_macs_equal_hook_count_and_thop(name, model_cache):
    model, space = model_cache(name)
    # Counting needs shapes, not values: on the meta device the materialised ImageNet-size
    # networks run at 224x224 without the arithmetic. Surgery's numerics are held to the
    # original model's in test_surgery.
    if name.startswith("tv:"):
        model = copy.deepcopy(model).to("meta")
    vectors = [space.min_widths(), space.max_widths()] + random_widths(space, N_RANDOM, seed=1)
    for widths in vectors:
        pruned = materialise(model, space, widths, keep=First()).eval()
        with torch.no_grad():
            counted, thop_ops = hook_macs_and_thop(pruned, input_shape(name))
        analytic = macs(space, widths)
        assert analytic == counted, (name, widths)
        assert abs(thop_ops - analytic) <= 0.005 * analytic, (name, thop_ops, analytic)
        assert params(space, widths) == sum(p.numel() for p in pruned.parameters())


def test_cost_is_monotone_and_base_matches_unpruned(model_cache):
    model, space = model_cache("resnet20")
    full = space.max_widths()
    assert macs(space, full) == macs(space, space.validate(full))
    with torch.no_grad():
        counted, _ = hook_macs_and_thop(model, input_shape("resnet20"))
    assert macs(space, full) == counted
    for i, choices in enumerate(space.choices):
        smaller = list(full)
        smaller[i] = choices[0]
        assert macs(space, smaller) < macs(space, full)
        assert params(space, smaller) < params(space, full)


def test_cost_accepts_differentiable_widths(model_cache):
    _, space = model_cache("vgg11")
    w = torch.tensor([float(x) for x in space.max_widths()], requires_grad=True)
    total = macs(space, list(w))
    assert float(total) == macs(space, space.max_widths())
    total.backward()
    assert torch.all(w.grad > 0)


@pytest.mark.parametrize("text,value", [("120M", 1.2e8), ("1.2G", 1.2e9), ("3e8", 3e8), ("500k", 5e5)])
def test_parse_count(text, value):
    assert parse_count(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abcM", "", "1.2X"])
def test_parse_count_rejects_junk(text):
    with pytest.raises(ValueError):
        parse_count(text)


def test_human():
    assert human(313_463_808) == "313.46M"
    assert human(4.09e9) == "4.09G"
    assert human(12) == "12"


def test_a_transposed_conv_counts_each_input_element_once_per_output_channel_and_tap():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 1),
                          nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Conv2d(4, 5, 1)).eval()
    space = SearchSpace.from_model(model, (3, 8, 8))
    up = 8 * 8 * 8 * 4 * 2 * 2  # 8 x 8 x 8 inputs, each to 4 channels x 2 x 2 taps
    for layers, widths in ((model, space.max_widths()), (materialise(model, space, space.uniform(0.5)), None)):
        counted, by_thop = hook_macs_and_thop(layers, (3, 8, 8))
        assert counted == by_thop == macs(space, widths or space.uniform(0.5))
    assert macs(space, space.max_widths()) == 64 * (6 * 27 + 8 * 6) + up + 256 * 5 * 4
