"""A model whose own forward cannot be traced is searched through its parts that can: a
torchvision detector as built keeps its class, takes a list of images, returns boxes and
trains on targets after pruning; MACs count every call of a part."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_cost import hook_macs_and_thop

import autoprune.graph.parts
from autoprune.arch import build, load_arch
from autoprune.cli import main
from autoprune.cost import macs
from autoprune.errors import TraceError
from autoprune.graph import fx_graph_module, trace
from autoprune.space import SearchSpace
from autoprune.surgery import materialise

SHAPE = (3, 16, 16)


class _Looped(nn.Module):
    """A root forward fx cannot follow (it loops over the batch), a body called once, and a head
    shared by two scales, as a detector's head is by its pyramid levels."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 4, 1))

    def forward(self, x):
        outs = []
        for image in x:  # one image at a time: the batch's length is a Proxy's
            y = self.body(image[None])
            outs.append([self.head(y), self.head(nn.functional.max_pool2d(y, 2))])
        return outs


def test_a_root_fx_cannot_trace_is_searched_through_its_parts_and_keeps_its_forward():
    model = _Looped().eval()
    space = SearchSpace.from_model(model, SHAPE)
    assert {g.name for g in space.groups} == {"body.0", "head.0"}
    (root,) = space.graph.frozen
    assert root.path == "" and "traced in parts: body, head" in root.reason and root.macs == 0
    widths = space.uniform(0.5)
    pruned = materialise(model, space, widths).eval()
    assert type(pruned) is _Looped
    for w in (space.max_widths(), widths):  # the head's MACs are counted at both scales
        counted, by_thop = hook_macs_and_thop(materialise(model, space, w).eval(), SHAPE)
        assert macs(space, w) == counted == by_thop
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert [[t.shape for t in o] for o in pruned(x)] == [[t.shape for t in o] for o in model(x)]
    with pytest.raises(TraceError, match="in parts.*one graph of the whole model"):
        fx_graph_module(model, space.graph)


class _Levels(nn.Module):
    """A body returning two levels, handed as they are to a head shared by both, then decoded
    in Python per image (fx cannot follow it): the levels' channels are the head's."""

    def __init__(self):
        super().__init__()
        self.body = _Pyramid()
        self.head = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 4, 1))

    def forward(self, x):
        levels = self.body(x)
        outs = [self.head(level) for level in levels.values()]
        return [[o[i] for o in outs] for i in range(len(x))]


class _Pyramid(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.p1, self.p2 = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.stem(x)
        return {"p1": self.p1(y), "p2": self.p2(y)}


def test_a_part_fed_another_parts_output_as_it_is_shares_its_channels():
    model = _Levels().eval()
    space = SearchSpace.from_model(model, SHAPE)
    by_layer = {l.name: space.graph.groups[l.in_layout[0]] for l in space.graph.layers}
    levels = by_layer["head.0"]  # the head's input: both levels, which its one conv reads
    assert not levels.fixed and {"body.p1", "body.p2"} <= set(levels.producers)
    assert by_layer["head.2"].name == "head.0" and not by_layer["head.2"].fixed
    widths = space.uniform(0.5)
    pruned = materialise(model, space, widths).eval()
    assert pruned.body.p1.out_channels == pruned.head[0].in_channels < 8
    counted, by_thop = hook_macs_and_thop(pruned, SHAPE)
    assert macs(space, widths) == counted == by_thop
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert [[t.shape for t in o] for o in pruned(x)] == [[t.shape for t in o] for o in model(x)]


def test_a_parts_output_the_code_between_computes_with_keeps_its_width():
    class Scaled(_Levels):
        def forward(self, x):
            levels = self.body(x)
            outs = [self.head(level * 2) for level in levels.values()]  # not as it is: fixed
            return [[o[i] for o in outs] for i in range(len(x))]

    space = SearchSpace.from_model(Scaled().eval(), SHAPE)
    head = next(l for l in space.graph.layers if l.name == "head.0")
    assert space.graph.groups[head.in_layout[0]].fixed
    assert {g.name for g in space.groups} == {"body.stem.0", "head.0"}


class _Pooled(nn.Module):
    """Boxes pooled from both levels into one fresh tensor, level by level, as torchvision's
    MultiScaleRoIAlign does, then a box head that flattens them: the levels' channels reach
    the head through the code between."""

    def __init__(self, channels: int | None = None):
        super().__init__()
        self.body, self.channels = _Pyramid(), channels
        self.box_head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 6), nn.ReLU(), nn.Linear(6, 5))

    def forward(self, x):
        from torchvision.ops import roi_align

        levels = list(self.body(x).values())  # a Proxy's values cannot be listed: fx fails here
        boxes = torch.tensor([[0, 0.0, 0.0, 8.0, 8.0], [0, 2.0, 2.0, 6.0, 6.0], [0, 1.0, 1.0, 4.0, 4.0]])
        pooled = torch.zeros(3, self.channels or levels[0].shape[1], 2, 2)  # the width read, or written in
        for i, level in enumerate(levels):
            pooled[i::2] = roi_align(level, boxes[i::2], 2, spatial_scale=0.5 ** i).to(pooled.dtype)
        return self.box_head(pooled)


def test_a_parts_output_pooled_into_another_parts_input_shares_its_channels():
    pytest.importorskip("torchvision.ops")
    model = _Pooled().eval()
    space = SearchSpace.from_model(model, SHAPE)
    by_layer = {l.name: space.graph.groups[l.in_layout[0]] for l in space.graph.layers}
    levels = by_layer["box_head.1"]  # the flattened boxes' channels are the levels'
    assert not levels.fixed and {"body.p1", "body.p2"} <= set(levels.producers)
    widths = space.uniform(0.5)
    pruned = materialise(model, space, widths).eval()
    assert pruned.body.p1.out_channels == pruned.body.p2.out_channels < 8
    assert pruned.box_head[1].in_features == 4 * pruned.body.p1.out_channels
    counted, by_thop = hook_macs_and_thop(pruned, SHAPE)
    assert macs(space, widths) == counted == by_thop
    with torch.no_grad():
        assert pruned(torch.randn(1, *SHAPE)).shape == (3, 5)


def test_code_between_that_writes_a_width_in_keeps_the_channels_it_carries():
    pytest.importorskip("torchvision.ops")
    space = SearchSpace.from_model(_Pooled(channels=8).eval(), SHAPE)  # a pruned body would not fit
    by_layer = {l.name: space.graph.groups[l.in_layout[0]] for l in space.graph.layers}
    assert by_layer["box_head.1"].fixed
    assert all(g.fixed for g in space.graph.groups if "body.p1" in g.producers)
    pruned = materialise(_Pooled(channels=8).eval(), space, space.uniform(0.5)).eval()
    with torch.no_grad():
        assert pruned(torch.randn(1, *SHAPE)).shape == (3, 5)


class _Crossed(nn.Module):
    """Each level pooled for a head of its own, but the second level's boxes written into a
    tensor as wide as the first level: the two levels' widths are not free of each other."""

    def __init__(self):
        super().__init__()
        self.body = _Pyramid()
        self.h1, self.h2 = (nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 5)) for _ in range(2))

    def forward(self, x):
        from torchvision.ops import roi_align

        p1, p2 = list(self.body(x).values())
        boxes = torch.tensor([[0, 0.0, 0.0, 8.0, 8.0], [0, 2.0, 2.0, 6.0, 6.0]])
        second = torch.zeros(2, p1.shape[1], 2, 2)
        second[:] = roi_align(p2, boxes, 2, spatial_scale=0.5)
        return self.h1(roi_align(p1, boxes, 2)), self.h2(second)


def test_a_pooled_tensor_seen_through_a_view_taken_before_the_write_keeps_its_width():
    class Viewed(_Pooled):
        def forward(self, x):
            from torchvision.ops import roi_align

            level = list(self.body(x).values())[0]
            boxes = torch.tensor([[0, 0.0, 0.0, 8.0, 8.0]] * 3)
            pooled = torch.zeros(3, level.shape[1], 2, 2)
            first = pooled[:, :1]  # a view of the first channel, taken before the write
            pooled[:] = roi_align(level, boxes, 2)
            first.zero_()  # the box head then reads a channel the pruned model would not zero
            return self.box_head(pooled)

    pytest.importorskip("torchvision.ops")
    space = SearchSpace.from_model(Viewed().eval(), SHAPE)
    by_layer = {l.name: space.graph.groups[l.in_layout[0]] for l in space.graph.layers}
    assert by_layer["box_head.1"].fixed


def test_a_tensor_sized_by_one_part_and_filled_from_another_keeps_both_widths():
    pytest.importorskip("torchvision.ops")
    model = _Crossed().eval()
    space = SearchSpace.from_model(model, SHAPE)
    assert all(g.fixed for g in space.graph.groups if {"body.p1", "body.p2"} & set(g.producers))
    for seed in range(3):  # any widths the space draws, not only uniform ones
        pruned = materialise(model, space, space.sample(np.random.default_rng(seed))).eval()
        with torch.no_grad():
            assert [o.shape for o in pruned(torch.randn(1, *SHAPE))] == [(2, 5)] * 2


def test_without_the_watched_run_no_part_is_joined(monkeypatch):
    def fails(*args):
        raise TraceError("not followed")

    monkeypatch.setattr(autoprune.graph.parts, "_record_flows", fails)
    space = SearchSpace.from_model(_Levels().eval(), SHAPE)
    assert all(g.fixed for g in space.graph.groups if "body.p1" in g.producers or "head.2" in g.producers)
    assert {g.name for g in space.groups} == {"body.stem.0", "head.0"}


def test_tracing_in_parts_in_training_mode_leaves_the_running_statistics_alone():
    model = _Looped().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = trace(model, SHAPE)
    assert graph.mode == "train" and graph.frozen[-1].path == "" and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_parts_with_nothing_to_search_leave_the_roots_error_standing():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else -self.conv(x)

    with pytest.raises(TraceError, match="cannot trace Tiny with torch.fx"):
        trace(Tiny(), SHAPE)


def _detector(name: str, **kwargs):
    detection = pytest.importorskip("torchvision.models.detection")
    torch.manual_seed(0)
    return getattr(detection, name)(weights=None, weights_backbone=None, **kwargs).eval()


def test_a_torchvision_faster_rcnn_as_built_prunes_and_still_detects_and_trains():
    model = _detector("fasterrcnn_mobilenet_v3_large_fpn", min_size=64, max_size=64, num_classes=3)
    shape = (3, 64, 64)
    space = SearchSpace.from_model(model, shape)
    names = [g.name for g in space.groups]
    assert any(n.startswith("backbone.body.") for n in names) and "roi_heads.box_head.fc6" in names
    # The box head runs once per proposal: its MACs are the example's proposals', and the model says so.
    rows = space.graph.frozen[-1].reason.partition(autoprune.graph.parts.ROWS_NOTE)[2]
    assert rows.startswith("roi_heads.box_head (") and "backbone" not in rows
    counted, by_thop = hook_macs_and_thop(model, shape)
    assert macs(space, space.max_widths()) == counted == by_thop
    widths = space.uniform(0.5)
    assert macs(space, widths) < 0.6 * macs(space, space.max_widths())
    pruned = materialise(model, space, widths)
    assert type(pruned) is type(model)
    assert pruned.roi_heads.box_head.fc6.out_features < 1024
    # RoI pooling carries the pyramid's channels to the box head, which reads them flattened.
    fpn = pruned.backbone.fpn.layer_blocks[0][0].out_channels
    assert fpn < 256 and pruned.roi_heads.box_head.fc6.in_features == fpn * 7 * 7
    images = list(torch.rand(2, *shape))
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    losses = pruned.train()(images, targets)
    sum(losses.values()).backward()
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} == set(losses)
    detections = pruned.eval()(images)
    assert len(detections) == 2 and all(set(d) == {"boxes", "labels", "scores"} for d in detections)


def test_a_retinanet_head_shared_by_the_pyramid_levels_is_searched_with_exact_macs():
    model = _detector("retinanet_resnet50_fpn", min_size=64, max_size=64, num_classes=3)
    shape = (3, 64, 64)
    space = SearchSpace.from_model(model, shape)
    heads = [g for g in space.groups if g.name.startswith("head.classification_head.conv")]
    assert heads and not any(g.fixed for g in heads)
    # The pyramid's levels go to both heads as they are: one group, searched with the heads' towers.
    by_layer = {l.name: space.graph.groups[l.in_layout[0]] for l in space.graph.layers}
    levels = by_layer["head.classification_head.conv.0.0"]
    assert levels is by_layer["head.regression_head.conv.0.0"] and not levels.fixed
    assert {"backbone.fpn.layer_blocks.0.0", "backbone.fpn.extra_blocks.p6"} <= set(levels.producers)
    assert by_layer["head.classification_head.cls_logits"].fixed is False  # the tower's last width too
    for w in (space.max_widths(), space.uniform(0.5)):  # no proposals: exact at every width
        counted, by_thop = hook_macs_and_thop(materialise(model, space, w).eval(), shape)
        assert macs(space, w) == counted == by_thop
    assert macs(space, space.uniform(0.5)) < 0.35 * macs(space, space.max_widths())


def test_a_whole_detector_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("torchvision.models.detection")
    model = ["--model", "torchvision.models.detection:ssdlite320_mobilenet_v3_large", "--model-arg", "weights=null",
             "--model-arg", "weights_backbone=null", "--input-size", "96"]
    assert main(["flops", *model, "--json"]) == 0
    flops = json.loads(capsys.readouterr().out)
    assert flops["free_groups"] >= 20 and [f["path"] for f in flops["frozen"]] == [""]
    assert main(["flops", *model]) == 0
    assert "traced      in parts: backbone, head." in capsys.readouterr().out
    # A tv: name is a classifier; a detector's name says how to build it without fetching weights.
    assert main(["flops", "--model", "tv:ssdlite320_mobilenet_v3_large"]) == 2
    assert "--model torchvision.models.detection:ssdlite320_mobilenet_v3_large --model-arg weights_backbone=null" in (
        capsys.readouterr().err)
    out = tmp_path / "search"
    assert main(["search", *model, "--budget", "0.5", "--objective", "synthetic", "--method", "random", "--trials", "2",
                 "--out", str(out), "--no-progress", "--json"]) == 0
    arch = load_arch(out / "arch.json")
    assert arch["macs"]["pruned"] <= 0.5 * arch["macs"]["base"] and arch["frozen"][0]["path"] == ""
    pruned = build(arch).eval()
    assert type(pruned).__name__ == "SSD"
    with torch.no_grad():
        (detections,) = pruned([torch.rand(3, 96, 96)])
    assert set(detections) == {"boxes", "scores", "labels"}
    assert main(["show", str(out / "arch.json")]) == 0
    assert "frozen forward (SSD): cannot trace SSD with torch.fx" in capsys.readouterr().out


class _PerImage(nn.Module):
    """A root that loops over its images, so that it is traced in parts; ``step`` says what it
    does with one image (a batch of one)."""

    def forward(self, x):
        return [self.step(image[None]) for image in x]


class _SizeFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.c1(x)
        return y.shape[-2:], self.c2(x), y  # a shape the trace takes for one value: three leaves, not four


class _ReadsASize(_PerImage):
    def __init__(self):
        super().__init__()
        self.a, self.b = _SizeFirst(), nn.Conv2d(8, 4, 3)

    def step(self, x):
        _, z, _ = self.a(x)
        return self.b(z)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1))

    def forward(self, x):
        return self.block(self.stem(x))


class _CalledFromOutside(_PerImage):
    def __init__(self):
        super().__init__()
        self.body, self.pre = _Block(), nn.Conv2d(3, 8, 1)

    def step(self, x):
        return self.body(x), self.body.block(torch.relu(self.pre(x)))  # body's block also runs on its own


class _Flattened(_PerImage):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.b = nn.Linear(8 * 16 * 16, 10)

    def step(self, x):
        return self.b(self.a(x))  # the linear layer reads 8 x 256 features: no group of 2048 channels


@pytest.mark.parametrize("model", [_ReadsASize(), _CalledFromOutside(), _Flattened()],
                         ids=["size-leaf", "called-from-outside", "flattened"])
def test_parts_whose_channels_cannot_be_matched_keep_them(model):
    """Either nothing is left to search (the model's own error), or every vector gives a model
    that runs and MACs that a count of it matches."""
    model.eval()
    try:
        space = SearchSpace.from_model(model, SHAPE)
    except TraceError as exc:
        assert "cannot trace" in str(exc)
        return
    for widths in (space.uniform(0.5), space.min_widths()):
        pruned = materialise(model, space, widths).eval()
        counted, _ = hook_macs_and_thop(pruned, SHAPE)
        assert macs(space, widths) == counted
        with torch.no_grad():
            assert len(pruned(torch.randn(2, *SHAPE))) == 2


def test_a_shape_among_a_parts_outputs_does_not_shift_the_others():
    space = SearchSpace.from_model(_ReadsASize().eval(), SHAPE)
    b = next(l for l in space.graph.layers if l.name == "b")
    assert space.graph.groups[b.in_layout[0]].name == "a.c2"  # the tensor it reads, not c1
