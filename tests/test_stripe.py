"""Stripe-wise pruning: the mask's cost against a hook count, the exported model against the
masked one, the Filter Skeleton, and the exact budget."""

import json

import pytest
import torch
import torch.nn as nn
from conftest import randomize
from test_cost import hook_macs_and_thop

from autoprune.arch import build, load_arch, make_arch, save_arch, validate_arch
from autoprune.cli import main
from autoprune.cost import base_macs
from autoprune.graph import trace
from autoprune.models import create_model
from autoprune.space import SearchSpace
from autoprune.stripe import (
    StripeConv2d,
    budget_mask,
    decode_masks,
    encode_masks,
    export_stripes,
    fold_skeleton,
    full_masks,
    insert_skeleton,
    kept_channels,
    masked_copy,
    skeleton_penalty,
    skeleton_values,
    stripe_layers,
    stripe_macs,
    stripe_params,
)

SHAPE = (3, 16, 16)
SHAPES = {"vgg16": (3, 32, 32)}  # five poolings need 32x32


class Depthwise(nn.Module):
    """A stem, a strided dilated 3x3, a depthwise 3x3, a 1x1 and a 5x5 with a bias."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Conv2d(16, 24, 3, stride=2, padding=2, dilation=2, bias=False)
        self.bn = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
        self.pw = nn.Conv2d(24, 32, 1, bias=False)
        self.wide = nn.Conv2d(32, 16, (5, 3), padding=(2, 1), stride=(1, 2), bias=True)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.bn(self.down(x)))
        x = self.pw(self.dw(x))
        x = torch.relu(self.wide(x))
        return self.fc(x.mean((2, 3)))


def model_of(name):
    torch.manual_seed(0)
    model = Depthwise() if name == "depthwise" else create_model(name)
    return randomize(model).eval()


def random_masks(layers, p, seed):
    gen = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(s, generator=gen) < p for n, s in layers.shapes.items()}
    first = next(iter(masks))
    masks[first][0] = False  # a filter that keeps no stripe
    return masks


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            model = model_of(name)
            graph = trace(model, SHAPES.get(name, SHAPE))
            cache[name] = (model, graph, stripe_layers(model, graph))
        return cache[name]

    return get


def test_layers_left_whole_are_reported(models):
    _, _, layers = models("depthwise")
    assert set(layers.shapes) == {"stem.0", "down", "wide"}
    assert layers.shapes["wide"] == (16, 5, 3)
    assert layers.skipped == {"dw": "depthwise conv", "pw": "1x1 conv: a single stripe"}
    _, _, res = models("resnet20")
    assert all("1x1" in why for why in res.skipped.values())  # the projection shortcuts


@pytest.mark.parametrize("name", ["vgg16", "resnet56", "depthwise"])
def test_exported_model_equals_masked_model_and_cost_equals_hook_count(name, models, one_thread):
    model, graph, layers = models(name)
    shape = SHAPES.get(name, SHAPE)
    for seed, p in ((0, 0.5), (1, 0.15)):
        masks = random_masks(layers, p, seed)
        exported = export_stripes(model, graph, masks).eval()
        assert sum(isinstance(m, StripeConv2d) for m in exported.modules()) == len(masks)
        x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            want, got = masked_copy(model, graph, masks)(x), exported(x)
        assert want.abs().max() > 0.1
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        counted, _ = hook_macs_and_thop(exported, shape)
        assert stripe_macs(graph, masks) == counted
        assert stripe_params(graph, masks) == sum(p.numel() for p in exported.parameters())
    space = SearchSpace.from_model(model, shape)
    assert stripe_macs(graph, full_masks(layers)) == base_macs(space)


def check_exact(model, graph, masks, shape):
    """The exported model equals the masked one, and its MACs and params the analytic counts."""
    exported = export_stripes(model, graph, masks).eval()
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want, got = masked_copy(model, graph, masks).eval()(x), exported(x)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    counted, _ = hook_macs_and_thop(exported, shape)
    assert stripe_macs(graph, masks) == counted
    assert stripe_params(graph, masks) == sum(p.numel() for p in exported.parameters())
    return exported


def test_filters_with_no_stripe_are_removed_with_their_channel_in_a_vgg(models, one_thread):
    model, graph, layers = models("vgg16")
    masks = {n: torch.rand(s, generator=torch.Generator().manual_seed(2)) < 0.5 for n, s in layers.shapes.items()}
    masks["features.0"][[0, 5]] = False
    masks["features.3"][2] = False
    last = list(masks)[-1]  # feeds the classifier through a flatten
    masks[last][:3] = False
    empty = {n: int((~m.flatten(1).any(1)).sum()) for n, m in masks.items()}
    exported = check_exact(model, graph, masks, SHAPES["vgg16"])
    f = exported.features
    assert (f[0].out_channels, f[1].num_features, f[3].in_channels) == (64 - empty["features.0"],) * 3
    assert f[3].out_channels == f[4].num_features == 64 - empty["features.3"]
    assert exported.get_submodule(last).out_channels == 512 - empty[last]
    assert exported.classifier[0].in_features == 512 - empty[last]
    # the masked reference drops the whole channel, BatchNorm shift included
    with torch.no_grad():
        ref = masked_copy(model, graph, masks).eval()
        x = torch.randn(2, *SHAPES["vgg16"])
        assert float(ref.features[:2](x)[:, [0, 5]].abs().max()) == 0.0
        assert float(model.features[:2](x)[:, [0, 5]].abs().max()) > 0.0


def test_a_residual_channel_goes_only_when_every_producer_of_its_group_is_empty(models, one_thread):
    model, graph, layers = models("resnet20")
    masks = {n: torch.rand(s, generator=torch.Generator().manual_seed(4)) < 0.6 for n, s in layers.shapes.items()}
    stage1 = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    for n in stage1:
        masks[n][3] = False  # empty in every producer of the stage: removed
        masks[n][4] = True
    for n in stage1[:3]:
        masks[n][4] = False  # empty in three producers out of four: kept
    masks["layer1.0.conv1"][7] = False  # a group of its own: removed
    masks["layer1.1.conv1"][:] = False  # every filter empty: the group keeps one channel
    masks["layer2.0.conv2"][0] = False  # the 1x1 shortcut also produces this group: kept
    widths = {g.name: len(kept_channels(graph, masks)[g.id]) for g in graph.groups}
    own = {n: int((~masks[n].flatten(1).any(1)).sum()) for n in ("layer1.0.conv1", "layer1.2.conv1")}
    assert widths["conv1"] == 15 and widths["layer1.1.conv1"] == 1 and widths["layer2.0.conv2"] == 32
    assert widths["layer1.0.conv1"] == 16 - own["layer1.0.conv1"] and own["layer1.0.conv1"] >= 1
    exported = check_exact(model, graph, masks, SHAPE)
    assert exported.conv1.out_channels == exported.bn1.num_features == 15
    assert exported.layer1[0].conv1.in_channels == exported.layer2[0].conv1.in_channels == 15
    assert exported.layer2[0].shortcut[0].in_channels == 15
    assert exported.layer1[1].conv2.in_channels == 1 and exported.layer1[0].conv2.out_channels == 15
    assert exported.layer2[0].conv2.out_channels == 32


def test_filter_skeleton_at_one_leaves_the_function_unchanged(models, one_thread):
    model, _, layers = models("resnet20")
    skeleton = insert_skeleton(model_of("resnet20"), layers)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(skeleton(x), model(x), atol=1e-6, rtol=1e-6)
    fs = skeleton_values(skeleton)
    assert set(fs) == set(layers.shapes) and fs["conv1"].shape == layers.shapes["conv1"]
    assert float(skeleton_penalty(skeleton).detach()) == sum(s.numel() for s in fs.values())
    # the FS is trainable and folds into the weights
    skeleton.conv1.parametrizations.weight[0].fs.data[:, :, 1, 1] = 0.0
    before = skeleton(x).detach()
    folded = fold_skeleton(skeleton)
    assert isinstance(folded.conv1, nn.Conv2d) and not skeleton_values(folded)
    assert float(folded.conv1.weight[:, :, 1, 1].abs().sum()) == 0.0
    torch.testing.assert_close(folded(x), before)


@pytest.mark.parametrize("ratio", [0.9, 0.5, 0.3])
def test_budget_is_met_exactly(ratio, models):
    model, graph, layers = models("resnet20")
    full = stripe_macs(graph, full_masks(layers))
    gen = torch.Generator().manual_seed(3)
    scores = {n: torch.rand(s, generator=gen) for n, s in layers.shapes.items()}
    max_macs = int(ratio * full)
    masks, info = budget_mask(graph, scores, max_macs)
    got = stripe_macs(graph, masks)
    assert got <= max_macs and info["macs"] == got and not info["floor_bound"]
    kept = torch.cat([scores[n][m] for n, m in masks.items()])
    dropped = torch.cat([scores[n][~m] for n, m in masks.items()])
    assert kept.min() >= info["threshold"] >= dropped.max()  # a global threshold on |FS|
    # exact: keeping the best stripe left out would exceed the budget
    name = max(masks, key=lambda n: float(scores[n][~masks[n]].max()))
    one_more = {n: m.clone() for n, m in masks.items()}
    one_more[name][scores[name] == scores[name][~masks[name]].max()] = True
    assert stripe_macs(graph, one_more) > max_macs
    assert info["removed_channels"] == sum(g.width - len(kept_channels(graph, masks)[g.id]) for g in graph.groups)
    # the paper's fixed threshold may prune more than the budget asks
    masks, info = budget_mask(graph, scores, full, floor=0.5)
    assert info["floor_bound"] and all(bool((scores[n][m] > 0.5).all()) for n, m in masks.items())


def test_budget_below_the_unprunable_layers_is_an_error(models):
    _, graph, layers = models("depthwise")
    with pytest.raises(Exception, match="cannot be pruned"):
        budget_mask(graph, full_masks(layers), 10)


def test_masks_round_trip_through_arch_json(models, tmp_path, capsys):
    model, graph, layers = models("resnet20")
    masks = random_masks(layers, 0.4, 5)
    assert all(torch.equal(masks[n], m) for n, m in decode_masks(encode_masks(masks)).items())
    space = SearchSpace.from_model(create_model("resnet20"), SHAPE, model_name="resnet20")
    arch = make_arch("resnet20", {"num_classes": 10}, space, space.max_widths(), stripes=masks)
    assert arch["schema"] == "autoprune.arch/2"
    assert arch["macs"]["pruned"] == stripe_macs(graph, masks)
    path = save_arch(arch, tmp_path / "arch.json")
    again = load_arch(path)
    fresh = build(again)
    convs = {n: m for n, m in fresh.named_modules() if isinstance(m, StripeConv2d)}
    kept = kept_channels(graph, masks)
    out_group = {layer.name: layer.out_group for layer in graph.layers}
    assert set(convs) == set(masks)
    assert all(torch.equal(convs[n].mask, masks[n][kept[out_group[n]]]) for n in masks)
    counted, _ = hook_macs_and_thop(fresh, SHAPE)
    assert counted == arch["macs"]["pruned"]
    capsys.readouterr()
    assert main(["flops", "--model", "resnet20", "--arch", str(path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["macs"], row["params"]) == (arch["macs"]["pruned"], arch["params"]["pruned"])
    channel_only = make_arch("resnet20", {"num_classes": 10}, space, space.uniform(0.5))
    assert channel_only["schema"] == "autoprune.arch/1" and "stripes" not in channel_only
    bad = dict(arch, stripes={"conv1": {"shape": [16, 3, 3], "bits": "zz"}})
    with pytest.raises(Exception, match="hexadecimal"):
        build(validate_arch(bad))


TINY = ["--model", "resnet20", "--dataset", "synthetic", "--limit", "128", "--val-size", "64",
        "--pretrain-epochs", "1", "--device", "cpu", "--no-progress", "--seed", "0"]


def test_search_method_stripe_writes_a_stripe_arch_that_retrain_trains(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert main(["search", *TINY, "--budget", "0.4", "--method", "stripe", "--stripe-epochs", "1",
                 "--stripe-penalty", "1e-4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "stripes" in text and "left whole" in text and "1x1 conv" in text
    arch = load_arch(out / "arch.json")
    assert arch["schema"] == "autoprune.arch/2" and arch["method"] == "stripe"
    info = arch["search"]["stripe"]
    assert info["config"]["penalty"] == 1e-4 and info["config"]["threshold"] == 0.01
    stripe_cost = max(8 * 8 * 64, 32 * 32 * 16)  # the largest stripe of resnet20 at 32x32
    assert arch["budget"]["max_macs"] - stripe_cost < arch["macs"]["pruned"] <= arch["budget"]["max_macs"]
    assert 0.0 <= arch["score"] <= 1.0 and set(info["left_whole"]) == {"layer2.0.shortcut.0", "layer3.0.shortcut.0"}
    model = build(arch)
    counted, _ = hook_macs_and_thop(model, tuple(arch["input_shape"]))
    assert counted == arch["macs"]["pruned"]
    assert main(["retrain", str(out / "arch.json"), "--dataset", "synthetic", "--limit", "128", "--val-size", "64",
                 "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "retrain")]) == 0
    state = torch.load(tmp_path / "retrain" / "model.pt", weights_only=True)["model"]
    assert any(k.endswith("convs.0.weight") for k in state)
    assert main(["search", *TINY, "--budget", "0.4", "--method", "uniform", "--stripe-epochs", "1",
                 "--out", str(out)]) == 2
    assert "options of --method stripe" in capsys.readouterr().err


def test_a_stripe_search_is_a_trial_of_its_study_and_resumes_after_kill_9(tmp_path, capsys, one_thread):
    import os
    import signal
    import subprocess
    import sys
    import time

    from autoprune.study import TrialStore

    out = tmp_path / "run"
    argv = ["search", *TINY, "--budget", "0.4", "--method", "stripe", "--stripe-epochs", "1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.Popen([sys.executable, "-m", "autoprune.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:  # killed mid-way: once its base is trained, while it trains the skeleton
        while not (out / "base" / "model.pt").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended before its base"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (out / "arch.json").exists()
    assert main(argv) == 0  # resumes: the base is reused, the one candidate scored and stored
    arch = load_arch(out / "arch.json")
    store = TrialStore(f"sqlite:///{out / 'study.db'}", "resnet20-stripe-0.4-seed0", meta={})
    records = store.records()
    assert [(r.role, r.status, r.score) for r in records] == [("stripe", "ok", arch["score"])]
    assert records[0].macs == arch["macs"]["pruned"] <= arch["budget"]["max_macs"]
    assert arch["search"]["candidates"] == 1 and arch["search"]["study"] == "resnet20-stripe-0.4-seed0"
    assert main(argv) == 0  # the study holds its trial: nothing scored again, the same stripe model written
    again = load_arch(out / "arch.json")
    assert again["stripes"] == arch["stripes"] and again["score"] == arch["score"]
    assert len(store.records()) == 1 and (out / "trials.csv").read_text().count("\n") == 2


class GhostResidual(nn.Module):
    """GhostNet's pattern: a stem added to cat([y, depthwise(y)]), so the stem's group is two
    copies of y's (it *follows* y's group) though the stem conv produces it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.primary = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.primary(x)
        return self.head(x + torch.cat([y, self.cheap(y)], 1))


def test_groups_linked_to_another_keep_their_empty_filters(one_thread):
    model = randomize(GhostResidual()).eval()
    graph = trace(model, SHAPE)
    stem = next(g for g in graph.groups if g.name == "stem.0")
    assert stem.follows is not None and stem.producers == ("stem.0",)
    layers = stripe_layers(model, graph)
    masks = {n: torch.ones(s, dtype=torch.bool) for n, s in layers.shapes.items()}
    masks["stem.0"][[0, 9]] = False  # empty filters in a group that derives its channels from another
    masks["primary.0"][3] = False  # and in the group it derives them from
    kept = kept_channels(graph, masks)
    assert len(kept[stem.id]) == 16 and len(kept[stem.follows.parent]) == 8
    exported = check_exact(model, graph, masks, SHAPE)
    assert exported.stem[0].out_channels == 16 and exported.primary[0].out_channels == 8


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_a_stripe_model_exports_and_runs_the_same(fmt, models, tmp_path, one_thread):
    """`autoprune export` of a stripe architecture: the exported file reproduces the built
    stripe model (its shifted 1x1 convs and index_add_) on random inputs."""
    _, _, layers = models("resnet20")
    space = SearchSpace.from_model(create_model("resnet20"), SHAPE, model_name="resnet20")
    arch = make_arch("resnet20", {"num_classes": 10}, space, space.max_widths(), stripes=random_masks(layers, 0.4, 9))
    path = save_arch(arch, tmp_path / "arch.json")
    model = randomize(build(arch)).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "model.pt")
    out = tmp_path / f"model.{fmt}"
    assert main(["export", str(path), "--checkpoint", str(tmp_path / "model.pt"), "--format", fmt,
                 "--out", str(out), "--batch-size", "2", "--json"]) == 0
    assert out.stat().st_size > 0
