"""Models users bring, traced as built (no wrapper, no patch): ultralytics YOLO, transformers
CNN classifiers, segmentation_models_pytorch. Each traces, its analytic MACs equal a hook count
of the pruned model, and the pruned model is the original class and keeps its outputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cost import hook_macs_and_thop

from autoprune.arch import build, load_arch
from autoprune.cli import main
from autoprune.cost import macs
from autoprune.space import SearchSpace
from autoprune.surgery import materialise


def _pruned(model, shape):
    model = model.eval()
    space = SearchSpace.from_model(model, shape)
    widths = space.uniform(0.5)
    pruned = materialise(model, space, widths).eval()
    assert type(pruned) is type(model)  # pruned in place of a copy, not an fx GraphModule
    with torch.no_grad():
        counted, _ = hook_macs_and_thop(pruned, shape)
    assert macs(space, widths) == counted
    return space, pruned


def _share(space) -> float:
    return macs(space, space.uniform(0.5)) / macs(space, space.uniform(1.0))


@pytest.mark.parametrize("yaml", ["yolov8n.yaml", "yolo11n.yaml"])
def test_yolo_detection_model_traces_as_built_with_its_c2f_blocks_and_head_searchable(yaml):
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    model = tasks.DetectionModel(yaml, verbose=False)
    space, pruned = _pruned(model, (3, 64, 64))
    # list(self.cv1(x).chunk(2, 1)) in C2f / C3k2: its halves follow the cv1 group
    assert any(g.name == "model.2.cv1.conv" for g in space.groups), [g.name for g in space.groups][:8]
    head = f"model.{len(model.model) - 1}"
    # Detect makes its anchors from its maps' sizes: its conv branches are searched, only the
    # DFL (a view of its channels into 4 x 16) and YOLO11's attention stay whole
    assert {f.path for f in space.graph.frozen} <= {f"{head}.dfl", "model.10.m.0.attn"}
    free = {space.graph.groups[g].name for g in space.free}
    assert f"{head}.cv2.0.0.conv" in free and any(n.startswith(f"{head}.cv3.2.") for n in free)
    assert model.model[-1].shape is None  # the trace cached nothing on the head
    assert _share(space) < 0.45
    for shape in ((1, 3, 64, 64), (2, 3, 96, 128)):  # the pruned head makes anchors for any size
        x = torch.randn(shape)
        with torch.no_grad():
            assert pruned(x)[0].shape == model.eval()(x)[0].shape


def test_yolo_segmentation_model_traces_and_a_pruned_yolo_predicts():
    ultralytics = pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import SegmentationModel  # deferred: an optional package
    space, _ = _pruned(SegmentationModel("yolov8n-seg.yaml", verbose=False), (3, 64, 64))
    assert "model.22.cv4.0.0.conv" in {space.graph.groups[g].name for g in space.free}  # mask coefficients
    assert _share(space) < 0.45
    yolo = ultralytics.YOLO("yolov8n.yaml")
    space = SearchSpace.from_model(yolo.model.eval(), (3, 64, 64))
    yolo.model = materialise(yolo.model, space, space.uniform(0.5)).eval()
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    (result,) = yolo.predict(image, imgsz=64, verbose=False)
    assert result.boxes.data.shape[1] == 6


def test_yolo_pose_obb_and_classification_models_trace_with_their_heads_searchable():
    """Pose's head writes its decoded keypoints into strided slices, OBB's takes the cosine of
    its angle channels, Classify a softmax over its classes: all are followed, only the DFL
    stays whole, and the keypoint and class channels keep their width."""
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    space, pruned = _pruned(tasks.PoseModel("yolov8n-pose.yaml", verbose=False), (3, 64, 64))
    assert {f.path for f in space.graph.frozen} == {"model.22.dfl"} and _share(space) < 0.45
    groups = {g.name: g for g in space.graph.groups}
    assert groups["model.22.cv4.0.2"].fixed and not groups["model.22.cv4.0.0.conv"].fixed  # 17 x 3 keypoint values
    with torch.no_grad():
        assert pruned(torch.zeros(2, 3, 64, 64))[0].shape == (2, 56, 84)
    space, pruned = _pruned(tasks.OBBModel("yolov8n-obb.yaml", verbose=False), (3, 64, 64))
    assert {f.path for f in space.graph.frozen} == {"model.22.dfl"}
    assert "model.22.cv4.0.0.conv" in {space.graph.groups[g].name for g in space.free}  # the angle branch
    assert _share(space) < 0.45
    model = tasks.ClassificationModel("yolov8n-cls.yaml", nc=7, verbose=False)
    space, pruned = _pruned(model, (3, 64, 64))
    assert not space.graph.frozen and "model.9.conv.conv" in {space.graph.groups[g].name for g in space.free}
    with torch.no_grad():
        probs = pruned(torch.randn(2, 3, 64, 64))[0]  # (softmax, logits) in eval mode
    assert probs.shape == (2, 7) and torch.allclose(probs.sum(1), torch.ones(2))


@pytest.mark.parametrize("family", ["ResNet", "ConvNext"])
def test_transformers_classifiers_trace_and_keep_their_model_output(family):
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, f"{family}Config")(num_labels=7)
    model = getattr(transformers, f"{family}ForImageClassification")(config)
    space, pruned = _pruned(model, (3, 64, 64))
    assert not space.graph.frozen  # the embedder's check on the input channels runs in Python
    out = pruned(torch.randn(2, 3, 64, 64))
    assert type(out).__name__ == "ImageClassifierOutputWithNoAttention" and out.logits.shape == (2, 7)
    assert _share(space) < 0.45


def test_smp_deeplabv3plus_with_its_shape_check_is_fully_searchable():
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = smp.DeepLabV3Plus(encoder_name="resnet18", encoder_weights=None, classes=3)
    space, pruned = _pruned(model, (3, 64, 64))
    assert not space.graph.frozen
    with torch.no_grad():
        assert pruned(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert _share(space) < 0.45


def test_yolov8n_from_the_command_line_flops_search_export_and_run(tmp_path, capsys, one_thread):
    """As a user runs it: flops, a short search, an ONNX export of the pruned model, then the
    pruned model in ultralytics' predictor and the ONNX file in onnxruntime at another batch."""
    ultralytics = pytest.importorskip("ultralytics")
    ort = pytest.importorskip("onnxruntime")
    model = ["--model", "ultralytics.nn.tasks:DetectionModel", "--model-arg", "cfg=yolov8n.yaml", "--model-arg",
             "verbose=false", "--input-size", "64", "--mode", "eval"]
    assert main(["flops", *model, "--json"]) == 0
    flops = json.loads(capsys.readouterr().out)
    assert [f["path"] for f in flops["frozen"]] == ["model.22.dfl"] and flops["free_groups"] >= 40
    out = tmp_path / "search"
    assert main(["search", *model, "--budget", "0.5", "--objective", "synthetic", "--method", "random", "--trials", "3",
                 "--out", str(out), "--no-progress", "--json"]) == 0
    capsys.readouterr()
    arch = load_arch(out / "arch.json")
    assert arch["model"]["mode"] == "eval" and arch["macs"]["pruned"] <= 0.5 * arch["macs"]["base"] == 0.5 * flops["macs"]
    pruned = build(arch).eval()
    torch.save(pruned.state_dict(), tmp_path / "model.pt")
    assert main(["export", str(out / "arch.json"), "--checkpoint", str(tmp_path / "model.pt"), "--format", "onnx",
                 "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff"] <= 1e-4
    x = torch.randn(2, 3, 64, 64)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got, *_) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, pruned(x)[0].numpy(), atol=1e-4, rtol=1e-4)
    yolo = ultralytics.YOLO("yolov8n.yaml")
    yolo.model = pruned
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    (result,) = yolo.predict(image, imgsz=64, verbose=False, device="cpu")
    assert result.boxes.data.shape[1] == 6
    # ultralytics' own validator, on a tiny set of four images in its layout.
    metrics = yolo.val(data=str(_tiny_yolo_set(tmp_path / "set")), imgsz=64, batch=4, device="cpu", plots=False,
                       verbose=False, workers=0, project=str(tmp_path / "runs"))
    assert "metrics/mAP50(B)" in metrics.results_dict and metrics.speed["inference"] > 0


def _tiny_yolo_set(root):
    """Four 64 px images of one white box each, labelled as ultralytics reads them, and its yaml."""
    from PIL import Image

    for sub in ("images", "labels"):
        (root / sub / "val").mkdir(parents=True)
    for i in range(4):
        image = np.zeros((64, 64, 3), np.uint8)
        image[16:48, 8 + i:40 + i] = 255
        Image.fromarray(image).save(root / "images" / "val" / f"{i}.jpg")
        (root / "labels" / "val" / f"{i}.txt").write_text(f"0 {(24 + i) / 64} 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/val\nval: images/val\nnames:\n  0: box\n")
    return root / "data.yaml"


def test_a_pruned_yolo_through_ultralytics_own_export(tmp_path, monkeypatch, one_thread):
    ultralytics = pytest.importorskip("ultralytics")
    pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)  # the exporter writes beside the model's yaml name, in the working directory
    yolo = ultralytics.YOLO("yolov8n.yaml")
    space = SearchSpace.from_model(yolo.model.eval(), (3, 64, 64))
    yolo.model = materialise(yolo.model, space, space.uniform(0.5)).eval()
    blocks = [m for m in yolo.model.modules() if type(m).__name__ == "C2f"]
    assert blocks and all(2 * m.c == m.cv1.conv.out_channels for m in blocks)  # the width its forward_split reads
    exported = yolo.export(format="onnx", imgsz=64, device="cpu")  # runs forward_split
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    (result,) = ultralytics.YOLO(exported, task="detect").predict(image, imgsz=64, verbose=False, device="cpu")
    assert Path(exported).is_file() and result.boxes.data.shape[1] == 6
