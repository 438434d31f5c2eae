"""``autoprune export``: TorchScript, torch.export and ONNX files that reproduce the pruned model."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import input_shape, randomize
from structured_outputs import KINDS, heads

from autoprune.arch import build, make_arch, save_arch
from autoprune.checkpoint import save_checkpoint
from autoprune.cli import main
from autoprune.errors import ExportError
from autoprune.export import export_model, flatten_outputs, onnx_outputs, run_onnx
from autoprune.models import create_model, list_models
from autoprune.space import SearchSpace
from autoprune.surgery import materialise

try:
    import onnx
except ImportError:  # CI installs the onnx extra; a bare install skips the ONNX cases
    onnx = None

# Newer torch calls TorchScript deprecated; loading one back here is the point.
# Tiny models gain nothing from a second thread, and lose much when other processes share the cores.
pytestmark = [pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning"),
              pytest.mark.usefixtures("one_thread")]
NEEDS_ONNX = pytest.mark.skipif(onnx is None, reason="onnx not installed")
FORMATS = ["torchscript", "pt2", pytest.param("onnx", marks=NEEDS_ONNX)]
# Every zoo model, and two of the promised torchvision models (TV_MODELS) at a small input: fast on
# two cores, and the exporters see the same graph at any size.
EVERY_MODEL = list_models(include_tv=False) + ["tv:resnet50", "tv:mobilenet_v2"]
TV_SIZE = 64


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


def shape_of(name):
    return (3, TV_SIZE, TV_SIZE) if name.startswith("tv:") else input_shape(name)


def calibrated(net, shape):
    """``net`` in eval mode with BatchNorm statistics of a seeded batch plus 0.1 on each variance.

    Random statistics let a deep ResNet's outputs grow to 1e5 and beyond, where fp32 rounding
    alone exceeds 1e-4. Without the 0.1, a near-constant channel divided by its tiny batch
    variance amplifies PyTorch's own rounding: its fp32 output differed from fp64 by 1.1e-4 on
    ResNet-50 (5e-6 with it). The check is about the export, not about that.
    """
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a plain average of the batches seen
    net.train()
    with torch.no_grad():
        net(torch.randn(8, *shape, generator=torch.Generator().manual_seed(2)))
        for m in bns:
            m.running_var += 0.1
    return net.eval()


@pytest.fixture(scope="module")
def at_random_widths():
    """(pruned model, input shape) of ``name`` at seeded random widths, built once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            shape = shape_of(name)
            torch.manual_seed(0)
            model = randomize(create_model(name)).eval()
            space = SearchSpace.from_model(model, shape)
            widths = space.sample(np.random.default_rng(0))
            assert widths != space.max_widths()
            cache[name] = (calibrated(materialise(model, space, widths), shape), shape)
        return cache[name]

    return get


def other_input(shape):
    return torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))


@NEEDS_ONNX
@pytest.mark.parametrize("name", EVERY_MODEL)
def test_onnx_export_of_every_model_at_random_widths(tmp_path, at_random_widths, name):
    net, shape = at_random_widths(name)
    out = tmp_path / "model.onnx"
    assert export_model(net, "onnx", out, shape, batch_size=2) <= 1e-4
    x = other_input(shape)
    with torch.no_grad():
        expected = net(x)
    assert expected.abs().max() > 0.1  # outputs of a size where 1e-4 means something
    assert (run_onnx(out.read_bytes(), x) - expected).abs().max() <= 1e-4


# torch.export takes 5-7 s on the deeper models on two cores: a subset, beside the uniform widths above.
@pytest.mark.parametrize("name, fmt", [("resnet32", "torchscript"), ("resnet32", "pt2"), ("vgg13", "torchscript"),
                                       ("vgg13", "pt2"), ("tv:resnet50", "torchscript")])
def test_torchscript_and_pt2_load_back_at_random_widths(tmp_path, at_random_widths, name, fmt):
    net, shape = at_random_widths(name)
    out = tmp_path / f"model.{fmt}"
    assert export_model(net, fmt, out, shape, batch_size=2) <= 1e-4
    x = other_input(shape)
    with torch.no_grad():
        torch.testing.assert_close(load_back(fmt, out, x), net(x), atol=1e-4, rtol=0)


@NEEDS_ONNX
def test_the_tolerance_grows_with_the_outputs(tmp_path):
    """Random BatchNorm statistics make ResNet-56's outputs huge; fp32 rounding then passes, where 1e-4 alone refuses it."""
    torch.manual_seed(0)
    net = randomize(create_model("resnet56")).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).abs().max() > 1e4
    diff = export_model(net, "onnx", tmp_path / "m.onnx", (3, 32, 32))
    assert diff > 1e-4 and (tmp_path / "m.onnx").is_file()  # refused before the relative term
    with pytest.raises(ExportError, match="largest output"):
        export_model(net, "onnx", tmp_path / "n.onnx", (3, 32, 32), rtol=0.0)
    assert not (tmp_path / "n.onnx").exists()


def test_onnx_without_the_extra_names_the_install(tmp_path, monkeypatch):
    _, _, net = pruned(tmp_path, "vgg11")
    monkeypatch.setitem(sys.modules, "onnx", None)  # what an install without the onnx extra sees
    with pytest.raises(ExportError, match=r"pip install 'autoprune\[onnx\]'"):
        export_model(net, "onnx", tmp_path / "m.onnx", [3, 32, 32])
    assert not (tmp_path / "m.onnx").exists()


# Models that return more than one tensor: every structure, traced, pruned and exported.
NAMES = {"tuple": ["0", "1"], "list": ["0", "1"], "dict": ["out", "aux"], "namedtuple": ["logits", "features"],
         "dataclass": ["logits", "features"], "nested": ["0", "1.maps.0", "1.maps.1"]}
# The tracer does not yet see the tensors inside a dataclass as outputs, so it frees their widths.
SMALL = (3, 16, 16)


def structured(kind):
    """The ``kind`` model of tests/structured_outputs.py pruned to uniform(0.5), and its unpruned self."""
    torch.manual_seed(0)
    model = randomize(heads(kind)).eval()
    space = SearchSpace.from_model(model, SMALL)
    return materialise(model, space, space.uniform(0.5)).eval(), model


@pytest.mark.parametrize("kind", KINDS)
def test_every_output_structure_traces_and_prunes_keeping_its_shapes(kind):
    small, model = structured(kind)
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        want, got = flatten_outputs(model(x)), flatten_outputs(small(x))
    assert [n for n, _ in want] == NAMES[kind]
    assert [(n, t.shape) for n, t in got] == [(n, t.shape) for n, t in want]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_output_structure_exports_one_output_per_tensor(tmp_path, kind, fmt):
    small, _ = structured(kind)
    out = tmp_path / f"m.{fmt}"
    assert export_model(small, fmt, out, SMALL, batch_size=2) <= 1e-4
    x = torch.randn(3 if fmt == "onnx" else 2, *SMALL)  # another batch size: ONNX files take any
    with torch.no_grad():
        want = flatten_outputs(small(x))
    if fmt == "onnx":
        got = onnx_outputs(out.read_bytes(), x)
    else:
        got = flatten_outputs(load_back(fmt, out, x))
        assert isinstance(load_back(fmt, out, x), dict)  # named as in ONNX
    assert [n for n, _ in got] == NAMES[kind]
    for (name, g), (_, w) in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4, msg=name)


@NEEDS_ONNX
def test_onnx_batch_is_dynamic_unless_static(tmp_path):
    small, _ = structured("dict")
    export_model(small, "onnx", tmp_path / "any.onnx", SMALL, batch_size=2)
    export_model(small, "onnx", tmp_path / "two.onnx", SMALL, batch_size=2, static_batch=True)
    dims = {p: [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim[:1]]
                for v in [*onnx.load(str(tmp_path / p)).graph.input, *onnx.load(str(tmp_path / p)).graph.output]]
            for p in ("any.onnx", "two.onnx")}
    assert dims == {"any.onnx": [["batch"]] * 3, "two.onnx": [[2]] * 3}
    with pytest.raises(Exception, match="(?i)dimension"):  # the static file refuses another batch
        onnx_outputs((tmp_path / "two.onnx").read_bytes(), torch.randn(3, *SMALL))


@NEEDS_ONNX
def test_a_baked_batch_asks_for_a_static_one(tmp_path):
    model = heads("batch1").eval()
    with pytest.raises(ExportError, match="--static-batch"):
        export_model(model, "onnx", tmp_path / "m.onnx", SMALL)
    assert not (tmp_path / "m.onnx").exists()
    assert export_model(model, "onnx", tmp_path / "m.onnx", SMALL, static_batch=True) <= 1e-4


def test_outputs_that_are_not_tensors_are_one_line(tmp_path):
    for fmt in ("torchscript", "pt2", "onnx"):
        with pytest.raises(ExportError, match=r"^output 'count' is a int; export writes tensors") as info:
            export_model(heads("count"), fmt, tmp_path / "m", SMALL)
        assert "\n" not in str(info.value) and not (tmp_path / "m").exists()
    with pytest.raises(ExportError, match="holds no tensor"):
        flatten_outputs({"a": None, "b": []})
    with pytest.raises(ExportError, match="clashing names"):
        flatten_outputs({1: torch.zeros(1), "1": torch.zeros(1)})


@NEEDS_ONNX
def test_torchvision_deeplab_exports_its_dict(tmp_path):
    """torchvision's DeepLabV3 returns an OrderedDict ('out', and 'aux' with aux_loss); the small
    models above cover TorchScript and .pt2 of a dict (18 s for DeepLab's .pt2 on two cores)."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3, aux_loss=True).eval()
    space = SearchSpace.from_model(model, (3, 32, 32))
    small = calibrated(materialise(model, space, space.uniform(0.5)), (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, full = small(x), model(x)
    assert {k: v.shape for k, v in want.items()} == {k: v.shape for k, v in full.items()}
    assert list(want) == ["out", "aux"]
    assert export_model(small, "onnx", tmp_path / "m.onnx", (3, 32, 32)) <= 1e-4
    got = onnx_outputs((tmp_path / "m.onnx").read_bytes(), x)
    assert [n for n, _ in got] == ["out", "aux"]
    for (name, g), w in zip(got, want.values()):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4, msg=name)


@NEEDS_ONNX
def test_cli_exports_a_dict_model_with_named_outputs(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    space = SearchSpace.from_model(heads("dict"), SMALL, model_name="structured_outputs:heads")
    arch = make_arch("structured_outputs:heads", {"kind": "dict"}, space, space.uniform(0.5))
    save_arch(arch, tmp_path / "arch.json")
    save_checkpoint(tmp_path / "m.pt", build(arch), arch=arch, input_shape=list(SMALL))
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "arch.json"), "--checkpoint", str(tmp_path / "m.pt"), "--format", "onnx",
                 "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dynamic_batch"] is True
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["out", "aux"]


@NEEDS_ONNX
def test_a_transformers_model_output_exports_its_set_fields(tmp_path):
    """transformers' ModelOutput (a dataclass and an OrderedDict): its unset fields have no output."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    model = transformers.ResNetForImageClassification(config).eval()
    with torch.no_grad():
        assert [n for n, _ in flatten_outputs(model(torch.randn(1, *SMALL)))] == ["logits"]
    for fmt in ("onnx", "torchscript"):
        assert export_model(model, fmt, tmp_path / f"m.{fmt}", SMALL) <= 1e-4
    assert [o.name for o in onnx.load(str(tmp_path / "m.onnx")).graph.output] == ["logits"]


@NEEDS_ONNX
def test_a_yolo_tuple_exports_one_output_per_tensor(tmp_path):
    """ultralytics' YOLOv8n (its packaged yaml, no weights) returns a tuple nesting a dict and a list."""
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    model = tasks.DetectionModel("yolov8n.yaml", verbose=False).eval()
    assert export_model(model, "onnx", tmp_path / "m.onnx", (3, 64, 64)) <= 1e-4
    names = [o.name for o in onnx.load(str(tmp_path / "m.onnx")).graph.output]
    assert names[0] == "0" and len(names) > 1 and all(n.startswith("1.") for n in names[1:])
