"""The keep rules: the registry that resolves a name once, the data-driven rules (HRank,
activation, APoZ, reconstruction) — each rule's defining property on a tiny model, every rule
through surgery on the models with residual and depthwise groups, and the score cache — and
SSL's group lasso."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import randomize

from autoprune import cost
from autoprune.data import load_data
from autoprune.errors import KeepRuleError
from autoprune.evaluator import EvalConfig
from autoprune.keep import (
    L1,
    Activation,
    APoZ,
    HRank,
    KeepRule,
    Reconstruct,
    ScoreCache,
    get_keep_rule,
    list_keep_rules,
    register_keep_rule,
    sample_batches,
    unregister_keep_rule,
)
from autoprune.models import create_model
from autoprune.optimizers._ssl import channel_norms, channel_parameters, group_lasso_prox
from autoprune.space import SearchSpace
from autoprune.surgery import materialise
from autoprune.toolkit import sgd_step


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def data16():
    return load_data("synthetic", val_size=64, n_train=256, image_size=16)


@pytest.fixture(scope="module")
def resnet20(data16):
    torch.manual_seed(0)
    model = randomize(create_model("resnet20", num_classes=data16.num_classes)).eval()
    return model, SearchSpace.from_model(model, data16.input_shape)


def group_of(space, layer_name):
    """The free group id a conv's output channels form."""
    layer = next(lay for lay in space.graph.layers if lay.name == layer_name)
    assert layer.out_group in space.free
    return layer.out_group


DATA_RULES = [HRank, Activation, APoZ, Reconstruct]


def test_a_name_is_resolved_once_into_its_rule_and_a_rule_passes_through():
    assert list_keep_rules() == ["l1", "bn_gamma", "random", "first", "hrank", "activation", "apoz", "reconstruct"]
    assert [get_keep_rule(name).needs_data for name in list_keep_rules()] == [False] * 4 + [True] * 4
    rule = HRank(images=16)
    assert get_keep_rule(rule) is rule and isinstance(get_keep_rule("l1"), L1)
    assert EvalConfig(keep="apoz").keep == APoZ() and EvalConfig(keep=rule).keep is rule
    assert EvalConfig(keep="apoz").to_dict()["keep"] == "apoz"
    with pytest.raises(KeepRuleError, match="unknown keep rule 'l2'; expected one of l1, bn_gamma, random"):
        get_keep_rule("l2")
    with pytest.raises(KeepRuleError, match="unknown keep rule 'l2'"):
        EvalConfig(keep="l2")


def test_a_user_rule_registers_by_name(resnet20):
    model, space = resnet20

    class Last(KeepRule):
        name = "test-last"

        def scores(self, model, graph, *, seed=0):
            return {g.id: torch.arange(g.width, dtype=torch.float64) for g in graph.groups}

    register_keep_rule(Last)
    try:
        assert "test-last" in list_keep_rules()
        widths = space.uniform(0.5)
        pruned = materialise(model, space, widths, keep=EvalConfig(keep="test-last").keep)
        gid = group_of(space, "conv1")
        k = space.full_widths(widths)[gid]
        torch.testing.assert_close(pruned.conv1.weight, model.conv1.weight[-k:])
        with pytest.raises(KeepRuleError, match="already registered"):
            register_keep_rule(type("Last", (KeepRule,), {"name": "test-last"}))
    finally:
        unregister_keep_rule("test-last")
    assert "test-last" not in list_keep_rules()


def test_data_rules_need_data_and_a_fit(resnet20):
    model, space = resnet20
    with pytest.raises(KeepRuleError, match="fit it to the base first"):
        HRank().scores(model, space.graph)
    with pytest.raises(KeepRuleError, match="training data, and none was given"):
        HRank().fit(model, space.graph, None)


def test_hrank_ranks_rank_one_maps_below_full_rank_ones():
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(8, 6, 1, generator=gen), torch.randn(8, 1, 6, generator=gen)
    rank_one = 5 * u @ v  # larger in magnitude, but each map is an outer product
    full = torch.randn(8, 6, 6, generator=gen)
    scores = HRank().map_statistics(torch.stack([rank_one, full], dim=1)) / 8
    assert scores[0] < 1.01 and scores[1] > 5.9
    assert scores[0] < scores[1]


def silence(model, space, conv_name, channel):
    """A copy of ``model`` where one channel of ``conv_name``'s group is zero after the ReLU:
    its BatchNorm scale is 0 and its shift negative."""
    model = copy.deepcopy(model)
    gid = group_of(space, conv_name)
    for layer in space.graph.layers:
        if layer.kind == "norm" and layer.in_layout == (gid,):
            bn = model.get_submodule(layer.name)
            with torch.no_grad():
                bn.weight[channel] = 0.0
                bn.bias[channel] = -1.0
    return model, gid


@pytest.mark.parametrize("rule", [HRank, Activation, APoZ])
def test_a_channel_forced_to_zero_is_pruned_first(rule, resnet20, data16):
    model, space = resnet20
    silenced, gid = silence(model, space, "layer1.0.conv1", 5)
    fitted = rule(images=32).fit(silenced, space.graph, data16)
    assert int(torch.argmin(fitted.scores(silenced, space.graph)[gid])) == 5
    full = list(space.graph.groups[g].width for g in range(len(space.graph.groups)))
    full[gid] -= 1
    kept = fitted.keep_indices(silenced, space.graph, full)
    assert 5 not in kept[gid].tolist()


def outputs_of(model, layer_name, xs):
    got = []
    handle = model.get_submodule(layer_name).register_forward_hook(lambda m, i, o: got.append(o))
    with torch.no_grad():
        for x in xs:
            model(x)
    handle.remove()
    return torch.cat(got)


def test_reconstruct_reproduces_the_consumer_output_better_than_l1(resnet20, data16):
    model, space = resnet20
    gid = group_of(space, "layer1.0.conv1")
    widths = list(space.max_widths())
    widths[space.free.index(gid)] = space.choices[space.free.index(gid)][1]  # prune only this group
    fitted = Reconstruct(images=128).fit(model, space.graph, data16)
    assert "layer1.0.conv2" in fitted.sampled.moments
    xs = list(sample_batches(data16, seed=0, images=128, batch_size=64))
    reference = outputs_of(model, "layer1.0.conv2", xs)
    errors = {}
    for name, keep in (("l1", L1()), ("reconstruct", fitted)):
        pruned = materialise(model, space, widths, keep=keep).eval()
        assert cost.macs(space, widths) == cost.macs(space, widths)  # same widths, same MACs
        errors[name] = (outputs_of(pruned, "layer1.0.conv2", xs) - reference).square().mean().item()
    assert errors["reconstruct"] < 0.8 * errors["l1"], errors


def hook_macs(model, shape):
    counted = []

    def conv(m, i, o):
        counted.append(o[0].numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size)))

    hs = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hs += [m.register_forward_hook(lambda m, i, o: counted.append(o[0].numel() * m.in_features))
           for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in hs:
        h.remove()
    return sum(counted)


MODELS = [("resnet20", 16), ("mobilenetv2", 16), ("vgg16", 32), ("resnet56", 16), ("tv:resnet50", 32)]


@pytest.mark.parametrize("name,size", MODELS)
def test_every_rule_through_surgery_keeps_the_analytic_macs(name, size):
    data = load_data("synthetic", val_size=16, n_train=32, image_size=size)
    torch.manual_seed(0)
    model = randomize(create_model(name, num_classes=data.num_classes)).eval()
    space = SearchSpace.from_model(model, data.input_shape)
    rng = np.random.default_rng(0)
    widths = space.sample(rng)
    for rule in DATA_RULES:
        fitted = rule(images=16, batch_size=16).fit(model, space.graph, data)
        scores = fitted.scores(model, space.graph)
        assert set(scores) == {g.id for g in space.graph.groups}
        scored = [gid for gid in space.free if scores[gid].std() > 0]
        assert len(scored) == len(space.free), (rule.name, "a free group got no scores")
        pruned = materialise(model, space, widths, keep=fitted).eval()
        assert hook_macs(pruned, data.input_shape) == cost.macs(space, widths), rule.name
        x = next(iter(sample_batches(data, seed=0, images=2, batch_size=2)))
        with torch.no_grad():
            assert torch.isfinite(pruned(x)).all()


def test_scores_are_cached_beside_the_checkpoint(resnet20, data16, tmp_path, monkeypatch):
    model, space = resnet20
    cache = ScoreCache.beside(tmp_path / "model.pt", "abc123")
    first = APoZ(images=32).fit(model, space.graph, data16, cache=cache).scores(model, space.graph)
    assert cache.file("apoz", 0, 32).is_file()
    assert cache.file("apoz", 0, 32).parent == tmp_path / "model.pt.scores"

    def boom(*a, **k):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(APoZ, "sample", boom)
    again = APoZ(images=32).fit(model, space.graph, data16, cache=cache).scores(model, space.graph)
    for gid in first:
        torch.testing.assert_close(again[gid], first[gid])
    with pytest.raises(AssertionError, match="recomputed"):  # another key is another file
        APoZ(images=32).fit(model, space.graph, data16, cache=ScoreCache(cache.folder, "other"))


def test_group_lasso_drives_the_penalised_group_to_zero(data16):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, data16.num_classes))
    space = SearchSpace.from_model(model, data16.input_shape)
    first, second = space.free
    groups = channel_parameters(model, space.graph, [first])
    widths = {first: 8}
    others = channel_parameters(model, space.graph, [second])[second]
    assert len(groups[first]) == 4  # conv weight and bias, BN weight and bias
    sgd = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):  # 4 epochs of 8 steps: the shrinkage (0.1 a step) outweighs the 1.0 of γ
        for x, y in data16.batches("train", batch_size=32, train=True, generator=gen):
            sgd_step(model, x, y, sgd, nn.CrossEntropyLoss(), torch.device("cpu"))
            group_lasso_prox(groups, widths, 0.05 * 2.0)
    assert torch.all(channel_norms(groups[first], 8) == 0)
    assert torch.all(channel_norms(others, 8) > 0)
