"""``autoprune export``: TorchScript, torch.export and ONNX files that reproduce the pruned model."""

import json

import pytest
import torch

from autoprune.arch import build, make_arch, save_arch
from autoprune.checkpoint import save_checkpoint
from autoprune.cli import main
from autoprune.errors import ExportError
from autoprune.export import export_model
from autoprune.models import create_model
from autoprune.space import SearchSpace

try:
    import onnx
except ImportError:  # CI installs the onnx extra; a bare install skips the ONNX cases
    onnx = None

# Newer torch calls TorchScript deprecated; loading one back here is the point.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
FORMATS = ["torchscript", "pt2", pytest.param("onnx", marks=pytest.mark.skipif(onnx is None, reason="onnx not installed"))]


def pruned(tmp_path, name):
    """A half-width architecture of ``name`` and a checkpoint of it with non-default weights."""
    model = create_model(name)
    space = SearchSpace.from_model(model, (3, 32, 32), model_name=name)
    arch = make_arch(name, {"num_classes": 10}, space, space.uniform(0.5))
    torch.manual_seed(0)
    net = build(arch)
    with torch.no_grad():  # BatchNorm statistics away from 0/1, so that eval mode matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    save_arch(arch, tmp_path / f"{name}.json")
    save_checkpoint(tmp_path / f"{name}.pt", net, arch=arch, input_shape=[3, 32, 32])
    return tmp_path / f"{name}.json", tmp_path / f"{name}.pt", net.eval()


def load_back(fmt, path, x):
    if fmt == "torchscript":
        return torch.jit.load(str(path))(x)
    if fmt == "pt2":
        return torch.export.load(str(path)).module()(x)
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load(str(path))
    return torch.from_numpy(ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})[0])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mobilenetv2"])
def test_export_reproduces_the_model(tmp_path, capsys, name, fmt):
    arch, ckpt, net = pruned(tmp_path, name)
    out = tmp_path / "out" / f"model.{fmt}"
    assert main(["export", str(arch), "--checkpoint", str(ckpt), "--format", fmt, "--out", str(out),
                 "--batch-size", "2", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["out"] == str(out) and row["input_shape"] == [2, 3, 32, 32] and row["max_abs_diff"] <= 1e-4
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left beside it
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_back(fmt, out, x), net(x), atol=1e-4, rtol=1e-4)


def test_the_checkpoint_alone_names_the_model(tmp_path, capsys):
    _, ckpt, net = pruned(tmp_path, "resnet20")
    out = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out))(x), net(x), atol=1e-4, rtol=1e-4)


def test_unknown_format_is_a_usage_error(tmp_path):
    arch, ckpt, _ = pruned(tmp_path, "vgg11")
    with pytest.raises(SystemExit) as exc:
        main(["export", str(arch), "--checkpoint", str(ckpt), "--format", "tflite", "--out", str(tmp_path / "m")])
    assert exc.value.code == 2 and not (tmp_path / "m").exists()


def test_bad_inputs_are_one_line_and_leave_no_file(tmp_path, capsys):
    arch, _, _ = pruned(tmp_path, "resnet20")
    _, other, _ = pruned(tmp_path, "vgg11")
    (tmp_path / "file").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [
        ([str(arch), "--checkpoint", str(other), "--out", str(tmp_path / "m.pt")], "is for another model"),
        ([str(arch), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.pt")], "not found"),
        ([str(arch), "--checkpoint", str(other), "--out", str(tmp_path / "file" / "m.pt")], "under the file"),
        ([str(arch), "--checkpoint", str(other), "--out", str(tmp_path)], "is a folder"),
    ]
    for argv, message in cases:
        assert main(["export", *argv, "--format", "torchscript"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("autoprune: error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_export_that_does_not_match_is_not_written(tmp_path):
    _, _, net = pruned(tmp_path, "vgg11")
    with pytest.raises(ExportError, match="does not reproduce the model"):
        export_model(net, "pt2", tmp_path / "out" / "m.pt2", [3, 32, 32], atol=-1.0)
    assert not (tmp_path / "out" / "m.pt2").exists() and not list((tmp_path / "out").glob(".*"))
