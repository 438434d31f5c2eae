"""A detection task: ultralytics' YOLOv8n trained on its own loss and scored by mAP@0.5.

The data are synthetic boxes the module draws itself: noisy images holding one to three filled
rectangles that do not overlap, red ones of class 0 and blue ones of class 1, labelled as
ultralytics labels them (class, then centre x, centre y, width and height as fractions of the
side). The loss is the model's own (``v8DetectionLoss`` through ``model.loss``), per image, on
the raw head outputs of the train-mode forward; the score is mAP@0.5 on held-out images: the
eval-mode boxes through ultralytics' non-maximum suppression, matched to the labels in order of
confidence, averaged by ultralytics' ``ap_per_class`` (101-point interpolation, whose top value
is 0.995). Search it from the repository root::

    autoprune search --model examples.tasks.detection:build_model \\
        --task examples.tasks.detection:make_task --budget 0.5 --method random --trials 4 \\
        --pretrain-epochs 30

On the CPU, with the evaluator's defaults, that base scores about 0.45 and the four candidates
at half its MACs 0.18 to 0.44.

Swap in your own data by giving :class:`DetectionTask` your images and labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from ultralytics.cfg import DEFAULT_CFG_DICT, get_cfg
from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils.metrics import ap_per_class, box_iou
from ultralytics.utils.ops import xywh2xyxy

try:  # recent ultralytics keeps its NMS in utils.nms, older releases in utils.ops
    from ultralytics.utils.nms import non_max_suppression
except ImportError:
    from ultralytics.utils.ops import non_max_suppression

import autoprune
from autoprune.task import index_batches

MODEL = "examples.tasks.detection:build_model"
COLOURS = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.3, 0.9]])  # class 0 red, class 1 blue
NUM_CLASSES = len(COLOURS)


def build_model(num_classes: int = NUM_CLASSES) -> torch.nn.Module:
    """YOLOv8n built from its config (no download), with ultralytics' default hyper-parameters
    as ``model.args``: the box, class and DFL gains its loss reads."""
    cfg = yaml_model_load("yolov8n.yaml")
    cfg["nc"] = num_classes
    model = DetectionModel(cfg, verbose=False)
    model.args = get_cfg(DEFAULT_CFG_DICT)
    return model


def rectangles(n: int, *, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``n`` images (n, 3, size, size) with 1-3 rectangles each, and per image a (k, 5) tensor of
    labels: class, centre x, centre y, width, height (fractions of the side)."""
    g = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.1 * torch.randn(n, 3, size, size, generator=g)
    labels = []
    for i in range(n):
        boxes = []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            for _ in range(20):  # a place clear of the rectangles drawn so far, or none
                w, h = torch.randint(size // 6, size // 2, (2,), generator=g).tolist()
                x0 = int(torch.randint(0, size - w + 1, (1,), generator=g))
                y0 = int(torch.randint(0, size - h + 1, (1,), generator=g))
                if all(x0 >= b[3] or x0 + w <= b[1] or y0 >= b[4] or y0 + h <= b[2] for b in boxes):
                    break
            else:
                continue
            c = int(torch.randint(0, NUM_CLASSES, (1,), generator=g))
            images[i, :, y0:y0 + h, x0:x0 + w] = COLOURS[c, :, None, None] + 0.1 * torch.randn(3, h, w, generator=g)
            boxes.append((c, x0, y0, x0 + w, y0 + h))
        labels.append(torch.tensor([[c, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size,
                                     (y1 - y0) / size] for c, x0, y0, x1, y1 in boxes]))
    return images, labels


def collate(images: torch.Tensor, labels: list[torch.Tensor], flip: torch.Tensor | None = None) -> dict:
    """A batch as ultralytics' loss reads it: ``img``, and one row per box of ``batch_idx``,
    ``cls`` (n, 1) and ``bboxes`` (n, 4, normalised xywh); ``flip`` mirrors chosen images."""
    rows = []
    for j, lab in enumerate(labels):
        lab = lab.clone()
        if flip is not None and flip[j]:
            lab[:, 1] = 1 - lab[:, 1]
        rows.append(torch.cat([torch.full((len(lab), 1), float(j)), lab], 1))
    if flip is not None:
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    t = torch.cat(rows) if rows else torch.zeros(0, 6)
    return {"img": images, "batch_idx": t[:, 0], "cls": t[:, 1:2], "bboxes": t[:, 2:]}


def map50(detections: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    """mAP@0.5 of per-image ``detections`` (m, 6: x1, y1, x2, y2, confidence, class) against
    per-image ``targets`` (k, 5: class, x1, y1, x2, y2). In order of confidence, a detection is
    correct when it overlaps an unclaimed target of its class with IoU >= 0.5; the AP per class
    is ultralytics' ``ap_per_class``, averaged over the classes that have targets."""
    correct, conf, pred_cls = [], [], []
    for det, tgt in zip(detections, targets):
        det = det[det[:, 4].argsort(descending=True)]
        iou = box_iou(det[:, :4], tgt[:, 1:]) if len(det) and len(tgt) else torch.zeros(len(det), len(tgt))
        iou[det[:, 5:6] != tgt[:, 0]] = 0  # a box of another class is no match
        claimed = torch.zeros(len(tgt), dtype=torch.bool)
        for d in range(len(det)):
            overlap = iou[d].masked_fill(claimed, 0)
            best = int(overlap.argmax()) if len(tgt) else -1
            hit = best >= 0 and bool(overlap[best] >= 0.5)
            if hit:
                claimed[best] = True
            correct.append(hit)
        conf.append(det[:, 4])
        pred_cls.append(det[:, 5])
    target_cls = torch.cat([t[:, 0] for t in targets]).numpy()
    if not len(target_cls):
        return 0.0
    ap = ap_per_class(np.array(correct, dtype=bool).reshape(-1, 1), torch.cat(conf).numpy(),
                      torch.cat(pred_cls).numpy(), target_cls)[5]
    return float(ap[:, 0].mean())


def _raw(outputs) -> dict:
    """The raw head outputs (``boxes``, ``scores``, ``feats``) of a train- or eval-mode forward."""
    return outputs[1] if isinstance(outputs, tuple) else outputs


class DetectionTask(autoprune.Task):
    """Ultralytics' detection loss on ``train``, mAP@0.5 on ``val``: each an (images, labels) pair,
    labels as :func:`rectangles` makes them."""

    name = "detection-map50"

    def __init__(self, train, val, *, conf: float = 0.001, iou: float = 0.7):
        self.train, self.val, self.conf, self.iou = train, val, conf, iou
        self.input_shape = tuple(train[0].shape[1:])

    def batches(self, *, batch_size, seed, steps, device, augment=True):
        images, labels = self.train
        g = torch.Generator().manual_seed(seed)
        for idx in index_batches(len(images), batch_size=batch_size, steps=steps, generator=g):
            flip = torch.rand(len(idx), generator=g) < 0.5 if augment else None
            batch = collate(images[idx], [labels[i] for i in idx.tolist()], flip)
            yield {k: v.to(device) for k, v in batch.items()}

    def inputs(self, batch):
        return batch["img"]

    def loss(self, outputs, batch, *, model):
        raw = _raw(outputs)
        if isinstance(raw, dict):  # float32: the loss sums over every anchor, whatever autocast made
            raw = {**raw, "boxes": raw["boxes"].float(), "scores": raw["scores"].float()}
        total, _ = model.loss(batch, raw)  # (box, cls, dfl), each gain-scaled and times the batch size
        return total.sum() / len(batch["img"])

    def score(self, model, *, device):
        images, labels = self.val
        size = torch.tensor(images.shape[-2:]).flip(0).repeat(2)  # (w, h, w, h)
        detections = []
        for i in range(0, len(images), 32):
            out = model(images[i:i + 32].to(device))
            detections += [d.float().cpu() for d in non_max_suppression(out, conf_thres=self.conf, iou_thres=self.iou)]
        targets = [torch.cat([lab[:, :1], xywh2xyxy(lab[:, 1:]) * size], 1) for lab in labels]
        return map50(detections, targets)

    def distill(self, outputs, teacher_outputs, batch, *, temperature):
        """Binary KL between softened class scores plus KL between softened box-side distributions
        (the DFL bins), per anchor; zero when the student's raw outputs are the teacher's."""
        s, t = _raw(outputs), _raw(teacher_outputs)
        s_cls, t_cls = s["scores"].float() / temperature, t["scores"].float() / temperature
        p = torch.sigmoid(t_cls)
        cls = (F.binary_cross_entropy_with_logits(s_cls, p, reduction="none")
               - F.binary_cross_entropy_with_logits(t_cls, p, reduction="none")).sum(1).mean()
        b, c, a = s["boxes"].shape  # (batch, 4 sides x bins, anchors)
        s_box = F.log_softmax(s["boxes"].float().view(b, 4, c // 4, a) / temperature, dim=2)
        t_box = F.log_softmax(t["boxes"].float().view(b, 4, c // 4, a) / temperature, dim=2)
        box = F.kl_div(s_box, t_box, log_target=True, reduction="none").sum((1, 2)).mean()
        return temperature ** 2 * (cls + box)

    def epoch_steps(self, batch_size):
        return max(1, len(self.train[0]) // min(batch_size, len(self.train[0])))


def make_task(train_images: int = 512, val_images: int = 64, size: int = 64, seed: int = 0) -> DetectionTask:
    """The task on synthetic rectangles: ``train_images`` to train on, ``val_images`` to score on."""
    return DetectionTask(rectangles(train_images, size=size, seed=seed),
                         rectangles(val_images, size=size, seed=seed + 1))
