"""Every bad input gets the promise: one ``autoprune: error: ...`` line, exit 2, nothing written.

The tables below are the whole test: a new case is one line. ``{base}`` is a trained base
checkpoint (synthetic data, 256 validation images), ``{arch}`` an architecture JSON of it,
``{file}`` an existing plain file; ``{tmp}`` is the test's own folder, whose files must be
the same after the command as before it.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

import autoprune
from autoprune.api import MethodConfig
from autoprune.arch import make_arch, save_arch
from autoprune.checkpoint import save_checkpoint
from autoprune.cli import main
from autoprune.errors import (
    ArchError,
    KeepRuleError,
    OutputError,
    SearchError,
    TrainingError,
    UnknownModelError,
    WidthError,
)

FAST = "--dataset synthetic --epochs 1 --max-steps 2 --batch-size 64 --quiet --device cpu"
SEARCH = "search --model resnet20 --budget 0.5 --method random --objective synthetic --trials 2 --no-progress"

CLI_CASES = [  # (id, command line, text the one error line must contain)
    ("search-out-is-a-file", f"{SEARCH} --out {{file}}", "is a file"),
    ("search-out-under-a-file", f"{SEARCH} --out {{file}}/sub", "lies under the file"),
    ("search-out-not-creatable", f"{SEARCH} --out /proc/autoprune/out", "cannot be written"),
    ("pretrain-out-is-a-file", f"pretrain --model resnet20 {FAST} --out {{file}}", "is a file"),
    ("pretrain-out-under-a-file", f"pretrain --model resnet20 {FAST} --out {{file}}/x", "lies under the file"),
    ("pretrain-out-not-creatable", f"pretrain --model resnet20 {FAST} --out /proc/autoprune/out", "cannot be written"),
    ("show-group-width-0", "show {tmp}/width0.json", "must be positive integers"),
    ("show-width-as-string", "show {tmp}/string.json", "must be positive integers"),
    ("show-base-macs-0", "show {tmp}/macs0.json", "needs positive integer 'base'"),
    ("retrain-num-classes-negative", f"retrain {{tmp}}/classes.json {FAST} --out {{tmp}}/rt", "num_classes"),
    ("pretrain-label-smoothing-2", f"pretrain --model resnet20 {FAST} --label-smoothing 2 --out {{tmp}}/o",
     "label smoothing"),
    ("pretrain-lr-inf", f"pretrain --model resnet20 {FAST} --lr inf --out {{tmp}}/o", "lr must be"),
    ("pretrain-lr-nan", f"pretrain --model resnet20 {FAST} --lr nan --out {{tmp}}/o", "lr must be"),
    ("pretrain-weights-blow-up", f"pretrain --model resnet20 {FAST} --lr 1e30 --out {{tmp}}/o", "non-finite"),
    ("pretrain-weight-decay-negative", f"pretrain --model resnet20 {FAST} --weight-decay -1 --out {{tmp}}/o",
     "weight decay"),
    ("search-unknown-keep-rule", f"{SEARCH} --keep l2 --out {{tmp}}/o",
     "unknown keep rule 'l2'; expected one of l1, bn_gamma, random, first, hrank, activation, apoz, reconstruct"),
    ("search-input-too-small", f"{SEARCH.replace('resnet20', 'vgg11')} --input-size 4 --out {{tmp}}/o",
     "forward pass of"),
    ("garbage-tar-gz", f"pretrain --model resnet20 {FAST.replace('synthetic', '{tmp}/garbage.tar.gz')} --out {{tmp}}/o",
     "corrupted or unreadable archive"),
    ("pickle-payload-checkpoint", "eval --checkpoint {tmp}/payload.pt --dataset synthetic --device cpu",
     "pickled objects"),
    ("model-arg-without-value", "flops --model resnet20 --model-arg depth", "expected KEY=VALUE"),
    ("model-arg-unknown-to-the-model", "flops --model resnet20 --model-arg depth=3", "bad constructor arguments"),
    ("model-arg-against-num-classes", "flops --model resnet20 --num-classes 5 --model-arg num_classes=7", "given twice"),
    ("eval-val-overlaps-training", "eval --checkpoint {base} --split val --val-size 100 --device cpu",
     "would overlap"),
    ("eval-val-other-dataset-size", "eval --checkpoint {base} --split val --dataset synthetic --val-size 300 "
     "--device cpu", "would overlap"),
]


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A trained base, its architecture and the broken files the table refers to."""
    root = tmp_path_factory.mktemp("inputs")
    assert main(f"pretrain --model resnet20 {FAST} --val-size 256 --out {root / 'base'}".split()) == 0
    assert main(f"{SEARCH} --out {root / 'search'}".split()) == 0
    return {"base": root / "base" / "model.pt", "arch": json.loads((root / "search" / "arch.json").read_text())}


def _write_broken(tmp, arch: dict) -> None:
    def mutate(name, change):
        a = json.loads(json.dumps(arch))
        change(a)
        (tmp / name).write_text(json.dumps(a))

    mutate("width0.json", lambda a: a["groups"][0].update(width=0))
    mutate("string.json", lambda a: (a["groups"][0].update(kept=str(a["widths"][0]))))
    mutate("macs0.json", lambda a: a["macs"].update(base=0))
    mutate("classes.json", lambda a: (a["model"]["kwargs"].update(num_classes=-5), a.update(num_classes=4)))
    (tmp / "garbage.tar.gz").write_bytes(b"\x1f\x8b" + b"not really gzip" * 20)
    torch.save({"model": Payload()}, tmp / "payload.pt")
    (tmp / "file").write_text("a plain file\n")


def _files(tmp) -> dict:
    return {p.relative_to(tmp): p.stat().st_mtime_ns for p in tmp.rglob("*")}


@pytest.mark.parametrize("argv, needle", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(inputs, tmp_path, capsys, one_thread, argv, needle):
    _write_broken(tmp_path, inputs["arch"])
    before = _files(tmp_path)
    argv = argv.format(tmp=tmp_path, file=tmp_path / "file", base=inputs["base"]).split()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autoprune: error: ") and needle in err[0], err
    assert "weights_only=False" not in err[0]
    assert _files(tmp_path) == before, "nothing may be written by a refused command"


def _space():
    model = autoprune.create_model("resnet20")
    return autoprune.SearchSpace.from_model(model, (3, 32, 32), model_name="resnet20")


def _raises(widths):
    raise KeyError("boom")


API_CASES = [  # (id, call(tmp, space), expected error type, text of its message)
    ("macs-wrong-length", lambda tmp, s: autoprune.macs(s, s.max_widths()[:-1]), WidthError, "entries"),
    ("macs-disallowed-width", lambda tmp, s: autoprune.macs(s, (10**6,) + s.max_widths()[1:]),
     WidthError, "not allowed"),
    ("macs-negative-width", lambda tmp, s: autoprune.macs(s, (-8,) + s.max_widths()[1:]), WidthError, "not allowed"),
    ("params-wrong-length", lambda tmp, s: autoprune.params(s, [16]), WidthError, "entries"),
    ("uniform-0", lambda tmp, s: s.uniform(0), WidthError, "(0, 1]"),
    ("uniform-2", lambda tmp, s: s.uniform(2), WidthError, "(0, 1]"),
    ("create-model-0-classes", lambda tmp, s: autoprune.create_model("resnet20", num_classes=0), UnknownModelError,
     "num_classes"),
    ("objective-raises", lambda tmp, s: autoprune.search("resnet20", 0.5, "random", objective=_raises,
                                                         study=autoprune.StudyConfig(trials=2), out=tmp / "o"),
     SearchError, "KeyError"),
    ("unknown-method-option", lambda tmp, s: autoprune.search("resnet20", 0.5, MethodConfig("abc", {"bogus": 1}),
                                                              objective="synthetic", out=tmp / "o"),
     SearchError, "bogus"),
    ("unknown-keep-rule", lambda tmp, s: autoprune.EvalConfig(keep="l2"), KeepRuleError, "expected one of l1,"),
    ("out-is-a-file", lambda tmp, s: autoprune.search("resnet20", 0.5, "random", objective="synthetic",
                                                      out=tmp / "file"), OutputError, "is a file"),
    ("build-negative-classes", lambda tmp, s: autoprune.build(json.loads((tmp / "classes.json").read_text())),
     ArchError, "num_classes"),
]


@pytest.mark.parametrize("call, error, needle", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input(inputs, tmp_path, call, error, needle):
    _write_broken(tmp_path, inputs["arch"])
    before = _files(tmp_path)
    with pytest.raises(error, match=None) as info:
        call(tmp_path, _space())
    assert needle in str(info.value) and "\n" not in str(info.value)
    if (tmp_path / "o").exists():  # a failed search leaves its study (the record) but no result
        assert not (tmp_path / "o" / "arch.json").exists()
        shutil.rmtree(tmp_path / "o")
    assert _files(tmp_path) == before


def test_non_finite_weights_never_leave_a_checkpoint(inputs, tmp_path, one_thread):
    data = autoprune.DataSpec("synthetic", val_size=256).against(None, "").load("cpu")
    model = autoprune.create_model("resnet20", num_classes=data.num_classes)
    config = autoprune.train.TrainConfig(epochs=1, max_steps=2, batch_size=64, lr=1e30)
    with pytest.raises(TrainingError, match="non-finite"):
        autoprune.train.train(model, data, config, out_dir=tmp_path / "run")
    assert not any((tmp_path / "run").glob("*.pt"))


def test_inputs_that_must_work(inputs, tmp_path, capsys, one_thread):
    """A journal storage inside a not-yet-existing OUT, and pretrain's default split on the
    1,024-image synthetic set."""
    out = tmp_path / "new" / "out"
    argv = f"{SEARCH} --base {inputs['base']} --storage journal:{out}/study.log --out {out}"
    assert main(argv.split()) == 0 and (out / "arch.json").is_file() and (out / "study.log").is_file()
    assert main(f"pretrain --model resnet20 {FAST} --out {tmp_path / 'base'}".split()) == 0
    assert (tmp_path / "base" / "model.pt").is_file()


def test_exporting_a_dict_model_from_the_cli(tmp_path, capsys, monkeypatch, one_thread):
    """A dict of tensors exports; a dict that also holds an int cannot be written: one line, exit 2, no file."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # tests/structured_outputs.py, built by import path
    for kind, code in (("dict", 0), ("count", 2)):
        name = "structured_outputs:heads"
        space = autoprune.SearchSpace.from_model(autoprune.create_model(name, kind=kind), (3, 16, 16), model_name=name)
        arch = make_arch(name, {"kind": kind}, space, space.uniform(0.5))
        save_arch(arch, tmp_path / f"{kind}.json")
        save_checkpoint(tmp_path / f"{kind}.pt", autoprune.build(arch), arch=arch, input_shape=[3, 16, 16])
        out = tmp_path / "out" / f"{kind}.pt"
        argv = ["export", str(tmp_path / f"{kind}.json"), "--checkpoint", str(tmp_path / f"{kind}.pt"),
                "--format", "torchscript", "--out", str(out)]
        assert main(argv) == code
        err = capsys.readouterr().err.strip().splitlines()
        if code:
            assert len(err) == 1 and err[0] == ("autoprune: error: output 'count' is a int; export writes tensors, "
                                                "alone or in tuples, lists, dicts, namedtuples and dataclasses"), err
        assert out.exists() == (code == 0)
