"""A segmentation task: torchvision's DeepLabV3 (MobileNetV3-Large) scored by mIoU.

The data are synthetic shapes the module draws itself: noisy images holding a filled rectangle
(class 1) and a filled disc (class 2) on a background (class 0), with their masks. The loss is
per-pixel cross-entropy on the model's ``out`` map; the score is the mean intersection over
union of the three classes on held-out images. Search it from the repository root::

    autoprune search --model examples.tasks.segmentation:build_model \\
        --task examples.tasks.segmentation:make_task --budget 0.5 --method random --trials 4

Swap in your own data by giving :class:`SegmentationTask` your images and masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision

import autoprune
from autoprune.task import index_batches

MODEL = "examples.tasks.segmentation:build_model"
NUM_CLASSES = 3


def build_model(num_classes: int = NUM_CLASSES) -> torch.nn.Module:
    """DeepLabV3 with a MobileNetV3-Large backbone, built without downloading weights."""
    return torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)


def shapes(n: int, *, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, 3, size, size) with a rectangle and a disc each, and their masks (n, size, size)."""
    g = torch.Generator().manual_seed(seed)
    images = 0.2 * torch.randn(n, 3, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    colours = torch.rand(n, 2, 3, generator=g) * 2 - 1
    for i in range(n):
        top, left = torch.randint(0, size // 2, (2,), generator=g).tolist()
        h, w = torch.randint(size // 6, size // 2, (2,), generator=g).tolist()
        masks[i, top:top + h, left:left + w] = 1
        cy, cx = torch.randint(size // 6, size - size // 6, (2,), generator=g).tolist()
        r = int(torch.randint(size // 10, size // 5, (1,), generator=g))
        masks[i][(rows - cy) ** 2 + (cols - cx) ** 2 <= r * r] = 2
        for c in (1, 2):
            images[i][:, masks[i] == c] += colours[i, c - 1, :, None]
    return images, masks


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean over classes of |pred ∩ target| / |pred ∪ target| (classes absent from both skipped)."""
    ious = []
    for c in range(num_classes):
        p, t = pred == c, target == c
        union = (p | t).sum().item()
        if union:
            ious.append((p & t).sum().item() / union)
    return sum(ious) / len(ious)


class SegmentationTask(autoprune.Task):
    """Per-pixel cross-entropy on ``train``, mIoU on ``val``: each an (images, masks) pair."""

    name = "segmentation-miou"

    def __init__(self, train, val, *, num_classes: int = NUM_CLASSES):
        self.train, self.val, self.num_classes = train, val, num_classes
        self.input_shape = tuple(train[0].shape[1:])

    def batches(self, *, batch_size, seed, steps, device, augment=True):
        images, masks = self.train
        g = torch.Generator().manual_seed(seed)
        for idx in index_batches(len(images), batch_size=batch_size, steps=steps, generator=g):
            x, y = images[idx], masks[idx]
            if augment:  # the same horizontal flip for an image and its mask
                flip = torch.rand(len(idx), generator=g) < 0.5
                x, y = torch.where(flip[:, None, None, None], x.flip(-1), x), torch.where(flip[:, None, None], y.flip(-1), y)
            yield x.to(device), y.to(device)

    def loss(self, outputs, batch, *, model):
        return F.cross_entropy(outputs["out"].float(), batch[1])

    def score(self, model, *, device):
        images, masks = self.val
        preds = torch.cat([model(images[i:i + 32].to(device))["out"].argmax(1).cpu() for i in range(0, len(images), 32)])
        return mean_iou(preds, masks, self.num_classes)

    def distill(self, outputs, teacher_outputs, batch, *, temperature):
        student = F.log_softmax(outputs["out"].float() / temperature, dim=1)
        teacher = F.log_softmax(teacher_outputs["out"].float() / temperature, dim=1)
        per_pixel = F.kl_div(student, teacher, log_target=True, reduction="none").sum(1)
        return temperature ** 2 * per_pixel.mean()

    def epoch_steps(self, batch_size):
        return max(1, len(self.train[0]) // min(batch_size, len(self.train[0])))


def make_task(train_images: int = 48, val_images: int = 16, size: int = 64, seed: int = 0) -> SegmentationTask:
    """The task on synthetic shapes: ``train_images`` to train on, ``val_images`` to score on."""
    return SegmentationTask(shapes(train_images, size=size, seed=seed), shapes(val_images, size=size, seed=seed + 1))
