"""Surgery: the materialised model computes what the original computes with the dropped
channels zeroed."""

import pytest
import torch
import torch.nn as nn
from conftest import REGISTRY, random_widths, randomize

from autoprune.data import load_data
from autoprune.keep import L1, BnGamma, First, Random, get_keep_rule, list_keep_rules
from autoprune.models import create_model
from autoprune.space import SearchSpace
from autoprune.surgery import materialise, slice_channels, zero_channels, zero_dropped


def _small_shape(name):
    # ImageNet models run at 64x64 here: surgery does not depend on the spatial size.
    return (3, 64, 64) if name.startswith("tv:") else (3, 32, 32)


@pytest.fixture()
def small_models(model_cache):
    return lambda name: model_cache(name, _small_shape(name))


@pytest.mark.parametrize("name", REGISTRY)
def test_materialised_equals_original_with_dropped_channels_zeroed(name, small_models):
    model, space = small_models(name)
    (widths,) = random_widths(space, 1, seed=3)
    assert widths != space.max_widths()
    pruned = materialise(model, space, widths).eval()
    reference = zero_dropped(model, space, widths).eval()
    x = torch.randn(2, *_small_shape(name), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, ref, full = pruned(x), reference(x), model(x)
    assert out.shape == ref.shape
    assert ref.abs().max() > 0.1  # the comparison is not met by vanishing outputs
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out, full, atol=1e-3)  # pruning really changed something
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())

    # forward and backward in training mode
    pruned.train()
    pruned(x).square().mean().backward()
    assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "mobilenetv2", "tv:resnet18"])
def test_max_widths_leave_the_model_unchanged(name, small_models):
    model, space = small_models(name)
    same = materialise(model, space, space.max_widths()).eval()
    x = torch.randn(2, *_small_shape(name))
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x))
    for (k, a), (_, b) in zip(model.state_dict().items(), same.state_dict().items()):
        assert torch.equal(a, b), k


def test_original_model_is_untouched(small_models):
    model, space = small_models("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = materialise(model, space, space.min_widths())
    pruned.train()
    pruned(torch.randn(4, 3, 32, 32)).sum().backward()
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", list_keep_rules())
def test_keep_rules_keep_consistent_channels(name, small_models):
    model, space = small_models("resnet20")
    widths = space.uniform(0.5)
    full = space.full_widths(widths)
    rule = get_keep_rule(name)
    if rule.needs_data:
        data = load_data("synthetic", val_size=16, n_train=32, image_size=32)
        rule = type(rule)(images=16).fit(model, space.graph, data)
    kept = rule.keep_indices(model, space.graph, full, seed=1)
    for g in space.graph.groups:
        idx = kept[g.id]
        assert len(idx) == full[g.id]
        assert torch.equal(idx, torch.sort(idx).values) and len(set(idx.tolist())) == len(idx)
    x = torch.randn(2, 3, 32, 32)
    # The selection: reconstruct's refit then changes weights that zero_dropped keeps.
    with torch.no_grad():
        torch.testing.assert_close(slice_channels(model, space.graph, kept).eval()(x),
                                   zero_channels(model, space.graph, kept).eval()(x), atol=1e-4, rtol=1e-4)
    if name != "reconstruct":
        pruned = materialise(model, space, widths, keep=rule, seed=1).eval()
        ref = zero_dropped(model, space, widths, keep=rule, seed=1).eval()
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), ref(x), atol=1e-4, rtol=1e-4)


def test_l1_keeps_the_largest_filters():
    model = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.ReLU(), nn.Conv2d(8, 2, 1))
    with torch.no_grad():
        for i in range(8):
            model[0].weight[i] = float(i % 4 + 1) * (1 if i < 4 else 2)
    space = SearchSpace.from_model(model, (3, 4, 4), round_to=1)
    kept = L1().keep_indices(model, space.graph, space.full_widths([4]))
    assert kept[space.free[0]].tolist() == [5, 6, 7, 3] or kept[space.free[0]].tolist() == [3, 5, 6, 7]
    random_a = Random().keep_indices(model, space.graph, space.full_widths([4]), seed=0)
    random_b = Random().keep_indices(model, space.graph, space.full_widths([4]), seed=0)
    assert torch.equal(random_a[space.free[0]], random_b[space.free[0]])


def test_scores_compare_across_groups():
    """A residual group's score is a mean over its producers, not a sum: in a global
    ranking it must not outrank single convs just for having more layers."""
    model = randomize(create_model("resnet20"))
    space = SearchSpace.from_model(model, (3, 32, 32))
    for rule in (L1(), BnGamma()):
        scores = rule.scores(model, space.graph)
        stage = scores[space.graph.groups[space.free[0]].id]  # conv1: stem + three block outputs
        inner = scores[space.free[1]]
        assert stage.mean() < 2 * inner.mean(), rule


def test_fresh_rebuild_reinitialises():
    model = randomize(create_model("resnet20"))
    space = SearchSpace.from_model(model, (3, 32, 32))
    fresh = materialise(model, space, space.uniform(0.5), fresh=True)
    inherited = materialise(model, space, space.uniform(0.5), keep=First())
    assert fresh.conv1.weight.shape == inherited.conv1.weight.shape
    assert not torch.equal(fresh.conv1.weight, inherited.conv1.weight)
    assert torch.all(fresh.bn1.running_var == 1)
