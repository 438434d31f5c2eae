"""examples/tasks/detection.py: YOLOv8n searched on ultralytics' own loss and scored by mAP@0.5."""

import importlib
import json
import math
from pathlib import Path

import pytest
import torch

from autoprune.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def det(monkeypatch):
    """The example module, imported from the repository root as the CLI imports it."""
    pytest.importorskip("ultralytics")
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module("examples.tasks.detection")

# Two images: boxes as (class, x1, y1, x2, y2) in pixels.
TARGETS = [torch.tensor([[0., 0, 0, 10, 10], [1, 20, 20, 40, 40]]), torch.tensor([[0., 5, 5, 25, 25]])]


def _found(targets, conf=0.9):
    """Detections (x1, y1, x2, y2, confidence, class) that are exactly ``targets``."""
    return [torch.cat([t[:, 1:], torch.full((len(t), 1), conf), t[:, :1]], 1) for t in targets]


def test_map50_of_hand_made_detections(det):
    map50 = det.map50
    top = map50(_found(TARGETS), TARGETS)
    assert top == pytest.approx(0.995)  # ultralytics' 101-point AP of a perfect ranking
    assert map50([torch.zeros(0, 6)] * 2, TARGETS) == 0.0
    wrong_class = [d.clone() for d in _found(TARGETS)]
    for d in wrong_class:
        d[:, 5] = 1 - d[:, 5]
    assert map50(wrong_class, TARGETS) == 0.0
    shifted = [d.clone() for d in _found(TARGETS)]
    for d in shifted:
        d[:, [0, 2]] += 0.6 * (d[:, 2:3] - d[:, 0:1])  # IoU 0.25 with its target
    assert map50(shifted, TARGETS) == 0.0
    # Class 1 missed: the mean over the two classes halves; a duplicate ranked last costs nothing.
    only_zero = [d[d[:, 5] == 0] for d in _found(TARGETS)]
    assert map50(only_zero, TARGETS) == pytest.approx(top / 2)
    assert map50([torch.cat([d, _found([t], 0.1)[0]]) for d, t in zip(_found(TARGETS), TARGETS)],
                 TARGETS) == pytest.approx(top)


def test_rectangles_are_labelled_as_ultralytics_reads_them(det):
    images, labels = det.rectangles(6, size=64, seed=3)
    assert images.shape == (6, 3, 64, 64) and all(1 <= len(lab) <= 3 for lab in labels)
    for lab in labels:
        assert set(lab[:, 0].tolist()) <= {0.0, 1.0}
        assert ((lab[:, 1:] > 0) & (lab[:, 1:] <= 1)).all()
    batch = det.collate(images[:2], labels[:2], torch.tensor([True, False]))
    n = len(labels[0]) + len(labels[1])
    assert batch["cls"].shape == (n, 1) and batch["bboxes"].shape == (n, 4) and batch["batch_idx"].shape == (n,)
    assert torch.equal(batch["img"][0], images[0].flip(-1))
    assert torch.allclose(batch["bboxes"][:len(labels[0]), 0], 1 - labels[0][:, 1])


def test_distill_is_zero_against_itself_and_pulls_towards_the_teacher(det, one_thread):
    task = det.make_task(train_images=4, val_images=2)
    torch.manual_seed(0)
    student, teacher = det.build_model(), det.build_model().eval()
    batch = next(iter(task.batches(batch_size=2, seed=0, steps=1, device="cpu")))
    outputs = student(task.inputs(batch))
    assert task.distill(outputs, outputs, batch, temperature=2.0).abs() < 1e-5
    with torch.no_grad():
        taught = teacher(task.inputs(batch))  # eval mode: (boxes, raw outputs)
    loss = task.distill(outputs, taught, batch, temperature=2.0)
    loss.backward()
    assert loss > 0 and student.model[-1].cv3[0][-1].weight.grad.abs().sum() > 0


def test_search_cli_prunes_yolo_on_its_own_loss(det, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    rc = main(["search", "--model", "examples.tasks.detection:build_model", "--task", "examples.tasks.detection:make_task",
               "--task-arg", "train_images=16", "--task-arg", "val_images=8", "--budget", "0.5", "--method", "random",
               "--trials", "4", "--out", str(out), "--pretrain-epochs", "1", "--fine-tune-steps", "2", "--bn-batches", "1",
               "--eval-batch-size", "8", "--device", "cpu", "--no-progress"])
    assert rc == 0
    rows = (out / "trials.csv").read_text().splitlines()[1:]
    scores = [float(row.split(",")[2]) for row in rows if row.split(",")[1] == "ok"]
    assert len(scores) == 4, rows  # a failed row gives its reason
    assert all(0 <= s <= 1 and math.isfinite(s) for s in scores)
    arch = json.loads((out / "arch.json").read_text())
    assert arch["macs"]["pruned"] <= 0.5 * arch["macs"]["base"]
    assert arch["search"]["evaluator"]["task"]["name"] == det.DetectionTask.name
    assert 0 <= arch["search"]["base_score"] <= 1
