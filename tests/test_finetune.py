"""``autoprune finetune``: a pruned model fine-tuned from inherited weights, optionally distilled."""

import json

import pytest
import torch

from autoprune.arch import arch_space, make_arch, save_arch
from autoprune.checkpoint import load_checkpoint, save_checkpoint
from autoprune.cli import main
from autoprune.data import load_data
from autoprune.finish import distillation_loss, finetune, inherit
from autoprune.keep import get_keep_rule
from autoprune.models import create_model
from autoprune.space import SearchSpace
from autoprune.surgery import materialise
from autoprune.train import TrainConfig, train

FAST = ["--epochs", "1", "--batch-size", "64", "--max-steps", "6", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A briefly trained ResNet-20 base on synthetic data (its checkpoint records the split) and
    an architecture at a third of its widths, as a search would leave them."""
    root = tmp_path_factory.mktemp("finetune")
    data = load_data("synthetic", val_size=256, seed=0, limit=384)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=data.num_classes)
    train(model, data, TrainConfig(epochs=2, batch_size=64, lr=0.05), progress=False)
    base = save_checkpoint(root / "base.pt", model, model_name="resnet20", model_kwargs={"num_classes": 4},
                           dataset=data.meta, input_shape=list(data.input_shape))
    space = SearchSpace.from_model(create_model("resnet20", num_classes=4), (3, 32, 32), model_name="resnet20")
    arch = make_arch("resnet20", {"num_classes": 4}, space, space.uniform(0.34), method="uniform", seed=0,
                     extra={"search": {"evaluator": {"keep": "l1", "seed": 0}}})
    return root, save_arch(arch, root / "arch.json"), base, data


def test_the_pruned_model_inherits_the_bases_weights_by_the_keep_rule(searched):
    _, arch_path, base, _ = searched
    arch = json.loads(arch_path.read_text())
    pruned, teacher, record = inherit(arch, base)
    model, space = arch_space(arch)
    load_checkpoint(base, model)
    expected = materialise(model, space, arch["widths"], keep=get_keep_rule("l1")).state_dict()
    got = pruned.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    assert record["keep"] == "l1" and record["sha1"] and teacher.fc.out_features == 4


def test_distillation_loss_is_zero_against_itself_and_positive_otherwise():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(8, 4)
    x = torch.randn(16, 8)
    loss = distillation_loss(teacher, temperature=2.0, weight=1.0)
    assert loss(x, teacher(x), None).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, torch.zeros(16, 4), None).item() > 0


def test_finetune_distill_writes_a_checkpoint_that_eval_and_export_accept(searched, tmp_path, capsys):
    _, arch_path, base, _ = searched
    out = tmp_path / "distill"
    assert main(["finetune", str(arch_path), "--base", str(base), "--distill", *FAST, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["checkpoint"] == str(out / "model.pt") and 0 <= summary["test_acc"] <= 1
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["mode"] == "finetune" and ckpt["finetune"]["distill"] and ckpt["finetune"]["temperature"] == 4.0
    assert ckpt["arch"]["widths"] == json.loads(arch_path.read_text())["widths"]
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--split", "val", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["accuracy"] == pytest.approx(summary["val_acc"])  # the recorded split, the same model
    assert main(["export", str(arch_path), "--checkpoint", str(out / "model.pt"), "--format", "torchscript",
                 "--out", str(tmp_path / "m.ts")]) == 0
    # retrain takes the fine-tuned model.pt for the architecture it records.
    assert main(["retrain", str(out / "model.pt"), *FAST, "--dataset", "synthetic", "--out", str(tmp_path / "scratch")]) == 0
    assert load_checkpoint(tmp_path / "scratch" / "model.pt")["arch"]["widths"] == ckpt["arch"]["widths"]
    # Rerun with other distillation settings into the same folder: refused, not silently mixed.
    assert main(["finetune", str(arch_path), "--base", str(base), "--distill", "--temperature", "2", *FAST,
                 "--out", str(out)]) == 2
    assert "another fine-tune" in capsys.readouterr().err


def test_finetune_without_a_base_is_one_line(searched, tmp_path, capsys):
    _, arch_path, _, _ = searched
    assert main(["finetune", str(arch_path), *FAST, "--dataset", "synthetic", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--base FILE or --pretrained" in err and "records no base" in err


def test_finetune_defaults_to_the_recorded_base_while_it_is_unchanged(searched, tmp_path):
    from autoprune.checkpoint import file_sha1
    from autoprune.errors import CheckpointError
    from autoprune.finish import recorded_base

    _, _, base, _ = searched
    arch = {"search": {"base": str(base), "base_sha1": file_sha1(base)}}
    assert recorded_base(arch, "arch") == (str(base), False)
    assert recorded_base({"search": {"base_kind": "pretrained"}}, "arch") == (None, True)
    with pytest.raises(CheckpointError, match="has changed"):
        recorded_base({"search": {"base": str(base), "base_sha1": "0" * 40}}, "arch")


def test_distilled_and_plain_fine_tuning_are_seeded_and_differ(searched, tmp_path):
    _, arch_path, base, data = searched
    config = TrainConfig(epochs=1, batch_size=64, lr=0.01, schedule="cosine", warmup=0.0, seed=1, max_steps=4)
    runs = {}
    for name, distill in (("plain", False), ("distill", True), ("distill-again", True)):
        runs[name] = finetune(arch_path, base, data, distill=distill, config=config, out=tmp_path / name)
    a, b = runs["distill"].model.state_dict(), runs["distill-again"].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same result
    plain = runs["plain"].model.state_dict()
    assert any(not torch.equal(a[k], plain[k]) for k in a if a[k].is_floating_point())  # the teacher's term acts
    for r in runs.values():
        assert 0 <= r.val_acc <= 1 and 0 <= r.test_acc <= 1
    print(f"fine-tune val acc: plain {runs['plain'].val_acc:.4f}, distill {runs['distill'].val_acc:.4f}")
