"""Tasks: a search, a fine-tune and an eval scored by the user's data, loss and score."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autoprune
from autoprune.api import BaseConfig, StudyConfig
from autoprune.cli import main
from autoprune.data import load_data
from autoprune.errors import SearchError
from autoprune.evaluator import EvalConfig, Evaluator, fine_tune, recalibrate_bn
from autoprune.space import SearchSpace
from autoprune.study import TrialStore
from autoprune.task import ClassificationTask, Task, load_task

REPO = Path(__file__).resolve().parents[1]


class Mask(Task):
    """Foreground of 16x16 images as a per-pixel two-class problem; counts what the evaluator asks for."""

    name = "toy-mask"
    input_shape = (3, 16, 16)

    def __init__(self, pretrainable=True):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, 3, 16, 16, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        self.calls = {"train": 0, "bn": 0, "loss": 0, "score": 0}
        self.pretrainable = pretrainable

    def batches(self, *, batch_size, seed, steps, device, augment=True):
        g = torch.Generator().manual_seed(seed)
        self.calls["train" if augment else "bn"] += 1
        while True:
            for idx in torch.randperm(32, generator=g).split(min(batch_size, 32)):
                yield self.x[idx].to(device), self.y[idx].to(device)

    def loss(self, outputs, batch, *, model):
        self.calls["loss"] += 1
        return F.cross_entropy(outputs, batch[1])

    def score(self, model, *, device):
        self.calls["score"] += 1
        assert not model.training and not torch.is_grad_enabled()
        pred = model(self.x[32:].to(device)).argmax(1)
        return (pred == self.y[32:]).float().mean().item()

    def epoch_steps(self, batch_size):
        if not self.pretrainable:
            return super().epoch_steps(batch_size)
        return 2


def net():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 2, 1))


def test_a_search_on_a_task_trains_and_scores_on_it_and_records_its_name(tmp_path):
    task = Mask()
    result = autoprune.search(net(), 0.5, "random", task, out=tmp_path, base=BaseConfig(pretrain_epochs=2),
                              study=StudyConfig(trials=3), objective=EvalConfig(bn_batches=1, fine_tune_steps=2,
                                                                                batch_size=8))
    assert len(result.trials) == 3 and all(0 <= t["score"] <= 1 for t in result.trials)
    # pre-training (2 epochs of 2 steps) and 2 steps per candidate, each a loss; one BN pass and one score each
    assert task.calls["loss"] == 2 * 2 + 3 * 2
    assert task.calls["bn"] == 3 and task.calls["score"] == 3 + 1  # and the base's score
    search = result.arch["search"]
    assert search["evaluator"]["task"] == {"name": "toy-mask", "input_shape": [3, 16, 16]}
    assert 0 <= search["base_score"] <= 1
    summary = str(result)
    assert summary.count("(task toy-mask)") == 2 and "(validation)" not in summary  # the score and the base's
    store = TrialStore(f"sqlite:///{tmp_path / 'study.db'}", result.arch["search"]["study"], meta={})
    assert store.study.user_attrs["task"] == "toy-mask"


def test_a_data_driven_keep_rule_samples_the_task_s_inputs(tmp_path):
    task = Mask()
    model = net()
    space = SearchSpace.from_model(model, (3, 16, 16))
    ev = Evaluator(model, space, task, config=EvalConfig(bn_batches=1, fine_tune_steps=1, batch_size=8, keep="hrank"))
    widths = [c[len(c) // 2] for c in space.choices]
    assert ev(widths).status == "ok"
    assert task.calls["bn"] == 2  # the keep rule's sample, then the candidate's BatchNorm pass


def test_the_classification_task_is_the_dataset_s_recipe():
    data = load_data("synthetic", num_classes=3, image_size=8, n_train=96, n_test=16, val_size=16)
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 3))
    b = copy.deepcopy(a)
    recalibrate_bn(a, data, batches=2, batch_size=16)
    recalibrate_bn(b, ClassificationTask(data), batches=2, batch_size=16)
    assert torch.equal(a[1].running_mean, b[1].running_mean)
    la = fine_tune(a, data, steps=3, batch_size=16)
    lb = fine_tune(b, ClassificationTask(data), steps=3, batch_size=16)
    assert la == lb and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert math.isfinite(la)


def test_a_method_that_trains_on_a_dataset_refuses_a_task(tmp_path):
    with pytest.raises(SearchError, match="method 'dmcp' trains on a classification dataset"):
        autoprune.search(net(), 0.5, "dmcp", Mask(), out=tmp_path)


def test_a_task_without_an_epoch_cannot_pretrain_a_base(tmp_path):
    with pytest.raises(SearchError, match="does not say how long an epoch is"):
        autoprune.search(net(), 0.5, "random", Mask(pretrainable=False), out=tmp_path, study=StudyConfig(trials=1))


@pytest.mark.parametrize("spec, message", [
    ("nowhere.at_all:make", "cannot import module 'nowhere.at_all'"),
    ("examples.tasks.segmentation", "expected package.module:callable"),
    ("examples.tasks.segmentation:nothing", "has no callable 'nothing'"),
    ("examples.tasks.segmentation:mean_iou", None),
])
def test_a_bad_task_is_one_line(spec, message, monkeypatch):
    monkeypatch.chdir(REPO)
    if message is None:  # callable, but its call fails or returns no Task
        with pytest.raises((SearchError, TypeError)):
            load_task(spec)
        return
    with pytest.raises(SearchError, match=message):
        load_task(spec)


def test_load_task_refuses_what_is_not_a_task(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SearchError, match="returned tuple, not an autoprune.Task"):
        load_task("examples.tasks.segmentation:shapes", n=2, size=8)


def test_the_cli_refuses_a_task_with_data_options(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = main(["search", "--model", "examples.tasks.segmentation:build_model", "--task",
                 "examples.tasks.segmentation:make_task", "--dataset", "cifar10", "--budget", "0.5",
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["autoprune: error: --task brings its own data: drop --dataset"]
    assert not (tmp_path / "s").exists()


def test_the_segmentation_example_searches_finetunes_and_exports(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "seg"
    task = ["--task", "examples.tasks.segmentation:make_task", "--task-arg", "train_images=16",
            "--task-arg", "val_images=8"]
    assert main(["search", "--model", "examples.tasks.segmentation:build_model", *task, "--budget", "0.5",
                 "--method", "random", "--trials", "4", "--pretrain-epochs", "1", "--fine-tune-steps", "1",
                 "--bn-batches", "1", "--eval-batch-size", "8", "--out", str(out), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    arch = json.loads((out / "arch.json").read_text())
    assert arch["macs"]["pruned"] <= 0.5 * arch["macs"]["base"]
    assert arch["search"]["candidates"] == 4 and arch["search"]["evaluator"]["task"]["name"] == "segmentation-miou"
    assert 0 <= summary["score"] <= 1
    for distill in ([], ["--distill"]):
        ft = tmp_path / f"ft{len(distill)}"
        assert main(["finetune", str(out / "arch.json"), *task, "--epochs", "1", "--batch-size", "8",
                     "--out", str(ft), *distill, "--json"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert metrics["task"]["name"] == "segmentation-miou" and 0 <= metrics["score"] <= 1
        assert json.loads((ft / "metrics.json").read_text())["finetune"]["distill"] == bool(distill)
    assert main(["eval", "--checkpoint", str(tmp_path / "ft1" / "model.pt"), *task, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(metrics["score"])
    assert main(["export", str(out / "arch.json"), "--checkpoint", str(tmp_path / "ft1" / "model.pt"),
                 "--format", "onnx", "--out", str(tmp_path / "seg.onnx")]) == 0
    assert (tmp_path / "seg.onnx").stat().st_size > 0
