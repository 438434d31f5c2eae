"""Weights made elsewhere: --pretrained (torchvision's and timm's caches) and --weights FILE.

Every test fills the caches itself in a temporary folder and turns downloads off; a download
attempt fails the test instead of reaching the network.
"""

import json

import pytest
import torch

from autoprune.checkpoint import file_sha1, load_weights, read_state_dict, save_checkpoint
from autoprune.cli import main
from autoprune.dataspec import DataSpec
from autoprune.errors import CheckpointError, WeightsError, WeightsNotCachedError
from autoprune.models import create_model, create_pretrained
from autoprune.train import split_accuracy

TV_FILE = "resnet18-f37072fd.pth"  # the file name of torchvision's ResNet18_Weights.IMAGENET1K_V1 URL
SEARCH = ["--model", "tv:resnet18", "--dataset", "synthetic", "--input-size", "32", "--num-classes", "4",
          "--method", "l1-global", "--budget", "0.5", "--fine-tune-steps", "1", "--bn-batches", "1",
          "--eval-batch-size", "32", "--device", "cpu", "--no-progress"]


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty torch.hub and Hugging Face caches, downloads off, and any download attempt an error."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("AUTOPRUNE_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def _fill_tv_cache(root, seed=1):
    """A seeded ImageNet-shaped ResNet-18 state dict where torchvision's cache keeps its weights."""
    torch.manual_seed(seed)
    state = create_model("tv:resnet18").state_dict()
    folder = root / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / TV_FILE)
    return state, folder / TV_FILE


def test_pretrained_tv_model_gets_exactly_the_cached_weights(caches):
    state, _ = _fill_tv_cache(caches)
    made = create_pretrained("tv:resnet18")
    got = made.model.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    assert made.note is None and made.weights == "ResNet18_Weights.IMAGENET1K_V1"


def test_pretrained_with_other_classes_reinitialises_the_classifier_only(caches):
    state, _ = _fill_tv_cache(caches)
    made = create_pretrained("tv:resnet18", num_classes=4)
    got = made.model.state_dict()
    assert got["fc.weight"].shape == (4, 512) and made.reinitialised == ("fc",)
    assert all(torch.equal(got[k], state[k]) for k in state if not k.startswith("fc."))
    assert "1000 classes" in made.note and "re-initialised for 4" in made.note and "\n" not in made.note


def test_pretrained_with_an_empty_cache_offline_is_one_line_naming_the_file(caches, capsys):
    assert main(["flops", "--model", "tv:resnet18", "--pretrained"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("autoprune: error:")
    assert TV_FILE in err and str(caches / "torch" / "hub" / "checkpoints") in err
    with pytest.raises(WeightsNotCachedError):
        create_pretrained("tv:resnet18")


def test_pretrained_timm_model_reads_the_hugging_face_cache(caches):
    timm = pytest.importorskip("timm")
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(2)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    repo = caches / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    safetensors.save_file(state, repo / "snapshots" / ("0" * 40) / "model.safetensors")
    made = create_pretrained("timm:resnet18", num_classes=4)
    got = made.model.state_dict()
    assert got["fc.weight"].shape == (4, 512) and "re-initialised for 4" in made.note
    assert all(torch.equal(got[k], state[k]) for k in state if not k.startswith("fc."))
    with pytest.raises(WeightsNotCachedError, match="models--timm--resnet34"):
        create_pretrained("timm:resnet34")


def test_pretrained_is_for_library_models_only(caches):
    with pytest.raises(WeightsError, match="tv:NAME and timm:NAME"):
        create_pretrained("resnet20")


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model_state_dict", "model", "ddp", "nested"])
def test_weights_files_of_other_tools_load(tmp_path, wrap):
    torch.manual_seed(3)
    state = create_model("resnet20", num_classes=4).state_dict()
    payload = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
               "model_state_dict": {"model_state_dict": state, "optimizer_state_dict": {}},
               "model": {"model": state}, "ddp": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
               "nested": {"checkpoint": 1, "model": {"state_dict": state}}}[wrap]
    torch.save(payload, tmp_path / "w.pt")
    model = create_model("resnet20", num_classes=4)
    info = load_weights(model, tmp_path / "w.pt")
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    assert info["sha1"] == file_sha1(tmp_path / "w.pt") and info["kind"] == "weights"
    assert read_state_dict(tmp_path / "w.pt").keys() == state.keys()


def test_weights_that_do_not_fit_are_one_line_naming_missing_and_unexpected_keys(tmp_path, capsys):
    state = create_model("resnet20", num_classes=4).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["conv1.weight"]
    torch.save(state, tmp_path / "w.pt")
    argv = ["search", *("resnet20" if a == "tv:resnet18" else a for a in SEARCH), "--weights", str(tmp_path / "w.pt"),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing keys, e.g. conv1.weight" in err
    assert "unexpected keys, e.g. extra.weight" in err
    assert not (tmp_path / "out").exists()
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_state_dict(tmp_path / "empty.pt")


def _val_accuracy(state) -> float:
    data = DataSpec(name="synthetic").against(None, "").load("cpu")
    model = create_model("tv:resnet18", num_classes=4)
    model.load_state_dict(state)
    return split_accuracy(model, data, "val")


@pytest.mark.parametrize("how", ["pretrained", "weights"])
def test_search_takes_pretrained_or_weights_as_its_base(caches, capsys, how):
    if how == "pretrained":
        _, file = _fill_tv_cache(caches)
        extra = ["--pretrained"]
    else:
        torch.manual_seed(4)
        file = caches / "r18.pt"
        torch.save({"model_state_dict": {f"module.{k}": v for k, v in
                                         create_model("tv:resnet18", num_classes=4).state_dict().items()}}, file)
        extra = ["--weights", str(file)]
    out = caches / "run"
    assert main(["search", *SEARCH, *extra, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    record = json.loads((out / "arch.json").read_text())["search"]
    assert record["base"] == str(file) and record["base_sha1"] == file_sha1(file)
    assert record["base_kind"] == how and summary["base_score"] == record["base_score"]
    assert summary["macs_ratio"] <= 0.5 and not (out / "base").exists()  # nothing pre-trained
    if how == "pretrained":
        assert "re-initialised for 4" in captured.err  # the classifier note, one line on stderr
    else:  # the score is measured on these weights, not assumed
        state = {k[len("module."):]: v for k, v in torch.load(file, weights_only=True)["model_state_dict"].items()}
        assert record["base_score"] == pytest.approx(_val_accuracy(state))


def test_one_base_only(caches, capsys):
    _fill_tv_cache(caches)
    ckpt = caches / "base.pt"
    torch.save(create_model("tv:resnet18", num_classes=4).state_dict(), ckpt)
    assert main(["search", *SEARCH, "--pretrained", "--base", str(ckpt), "--out", str(caches / "o")]) == 2
    assert "give one base" in capsys.readouterr().err
    recorded = caches / "own.pt"
    save_checkpoint(recorded, create_model("tv:resnet18", num_classes=4), model_name="tv:resnet18",
                    dataset={"name": "synthetic", "seed": 0, "val_size": 256})
    assert main(["search", *SEARCH, "--weights", str(recorded), "--out", str(caches / "o")]) == 2
    assert "give it as the base (--base)" in capsys.readouterr().err


def test_finetune_inherits_from_pretrained_weights(caches):
    from autoprune.arch import make_arch
    from autoprune.finish import inherit
    from autoprune.space import SearchSpace

    state, _ = _fill_tv_cache(caches)
    space = SearchSpace.from_model(create_model("tv:resnet18", num_classes=4), (3, 32, 32), model_name="tv:resnet18")
    arch = make_arch("tv:resnet18", {"num_classes": 4}, space, space.uniform(0.5))
    pruned, teacher, record = inherit(arch, pretrained=True)
    assert torch.equal(teacher.conv1.weight, state["conv1.weight"]) and record["kind"] == "pretrained"
    rows = pruned.conv1.weight.flatten(1)
    assert all(any(torch.equal(r, s) for s in state["conv1.weight"].flatten(1)) for r in rows)  # inherited rows
