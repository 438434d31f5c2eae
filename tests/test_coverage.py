"""experiments/coverage.py: one child's row, the Torch-Pruning comparison, a row kept when the
child runs out of time, and the rule that a frozen-leaf trace counts only with half its convs
searchable."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
COVERAGE = ROOT / "experiments" / "coverage.py"


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("coverage_under_test", COVERAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(model, convs, frozen, all_convs, leaves=()):
    return {"model": model, "size": 32, "trace_s": 0.1, "free": 3, "convs": convs, "frozen": frozen,
            "leaves": list(leaves), "all_convs": all_convs, "exact_full": True, "exact_pruned": True,
            "runs": True, "half": 0.3}


def test_one_row_is_exact_and_runs(coverage):
    row = coverage.one("resnet20", 32)
    assert row["exact_full"] and row["exact_pruned"] and row["runs"]
    assert row["frozen"] == 0 and row["all_convs"] == row["convs"] == 21
    assert 0.2 < row["half"] <= 0.35


def test_torch_pruning_column_prunes_and_keeps_the_classifier(coverage):
    pytest.importorskip("torch_pruning")
    row = coverage.tp_row("resnet20", 32)
    assert row["tp_runs"] is True and 0.2 < row["tp_half"] < 0.35


def test_classifier_is_every_layer_with_num_classes_outputs(coverage):
    convs = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 10, 1), nn.Flatten())
    assert coverage.classifier(convs, 10) == [convs[1]]
    mlp = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 7))
    assert coverage.classifier(mlp, 10) == [mlp[1]]  # none has 10 outputs: the last Linear


def test_frozen_leaf_trace_counts_only_with_half_the_convs_searchable(coverage):
    rows = [_row("a", 10, 0, 10), _row("b", 10, 2, 20, ["x (Block)"]), _row("c", 10, 0, 20, ["x (Block)"]),
            {"model": "d", "error": "TraceError: no"}]
    assert [coverage.counted(r) for r in rows] == [True, False, True, False]  # c: exactly half
    text = coverage.table(rows)
    assert "| b | yes, but under half searchable |" in text
    assert text.splitlines()[-1].startswith("2 of 4 trace (1 more with under half of their convs searchable)")


def test_a_child_past_its_time_limit_keeps_its_first_line(coverage):
    first = json.dumps(_row("m", 4, 0, 4))
    row = coverage._merge("m", first + "\n", "over the 9 s limit")
    assert row["runs"] and "error" not in row and "broke" not in row
    crashed = coverage._merge("m", "", "Traceback ...\nRuntimeError: boom")
    assert crashed["error"] == "RuntimeError: boom"
    broke = coverage._merge("m", json.dumps({"model": "m", "trace_s": 0.1}), "Killed")
    assert broke["broke"] == "Killed"


def test_child_process_prints_both_parts(coverage):
    rows = coverage.run_all(["resnet20"], 32, timeout=120)
    assert rows[0]["runs"] and ("tp_runs" in rows[0]) == coverage.HAVE_TP


def test_real_models_are_built_without_weights_and_listed(coverage):
    assert {f for f, _, _ in coverage.REAL.values()} == {"ultralytics", "transformers", "smp", "tv-detection",
                                                          "tv-segmentation"}
    assert all(kw.get("weights", None) is None and kw.get("encoder_weights", None) is None
               for _, _, kw in coverage.REAL.values())


def test_a_real_segmentation_model_gets_every_column(coverage):
    """torchvision's DeepLabV3 (an OrderedDict output) traces, prunes, exports and trains after pruning."""
    rows = []
    row = coverage.real_row("tv-deeplabv3_mobilenet_v3_large", 32, emit=lambda r: rows.append(dict(r)))
    assert row["exact_full"] is row["exact_pruned"] is row["runs"] is row["onnx"] is row["framework"] is True
    assert 0.5 < row["share"] <= 1 and 0.2 < row["half"] < 0.4
    assert len(rows) == 6 and "runs" not in rows[0]  # emitted after the trace and after each step


def test_a_real_model_of_an_extra(coverage):
    """segmentation-models-pytorch's Unet, built as its users build it (the zoo extra)."""
    pytest.importorskip("segmentation_models_pytorch")
    row = coverage.real_row("smp-unet", 32)
    assert row["exact_full"] is row["exact_pruned"] is row["runs"] is row["onnx"] is row["framework"] is True


def test_real_table_reports_errors_per_column(coverage):
    rows = [{"model": "yolov8n", "error": "TraceError: cannot trace"},
            {"model": "smp-unet", "size": 32, "trace_s": 0.1, "free": 3, "leaves": [], "share": 1.0, "half": 0.25,
             "exact_full": True, "exact_pruned": True, "runs": True, "onnx": "ExportError: no", "framework": True,
             "tp_runs": False, "tp_half": 0.3}]
    text = coverage.real_table(rows)
    assert "| yolov8n | `DetectionModel(cfg=yolov8n.yaml)` | no: TraceError: cannot trace |" in text
    assert "| yes / yes | yes | NO: ExportError: no | yes | NO (output shape) | 0.300 |" in text
    assert text.splitlines()[-1] == ("1 of 2 trace as built; 1 exact; 1 keep every output shape pruned; 0 export to "
                                     "ONNX; 1 work in their framework. Torch-Pruning: 0 of 2 prune and run")


def test_real_table_adds_the_modelopt_columns(coverage):
    rows = [{"model": "yolov8n", "mo_error": "ApplyModeError: no configurable hparams"},
            {"model": "smp-unet", "mo_hparams": 30, "mo_convert_s": 1.0, "mo_half": 0.3, "mo_runs": True},
            {"model": "hf-resnet", "mo_hparams": 35, "mo_broke": "RuntimeError: boom"},
            {"model": "tv-ssd300_vgg16", "mo_error": "ValueError: no", "mo_hparams": 17, "mo_half": 0.4, "mo_runs": True}]
    text = coverage.real_table(rows, ("modelopt",))
    assert text.splitlines()[0] == ("| model | built as | ModelOpt converts (searchable hparams) | ModelOpt MACs at the "
                                    "middle choice | ModelOpt export runs, every output shape kept |")
    assert "| yolov8n | `DetectionModel(cfg=yolov8n.yaml)` | no: ApplyModeError: no configurable hparams |  |  |" in text
    assert "| smp-unet | `Unet(encoder_weights=None)` | yes (30) | 0.300 | yes |" in text
    assert "| yes (35) |  | NO: RuntimeError: boom |" in text
    assert "| no: ValueError: no; after one forward, yes (17) | 0.400 | yes |" in text
    assert text.splitlines()[-1] == ("ModelOpt: 2 of 4 convert (1 more after one forward); 2 export at the middle "
                                     "choice and run with every output shape kept")
    assert coverage.real_table(rows) == text  # by default the parts that some row has


def test_a_child_past_its_time_limit_marks_each_part_it_did_not_finish(coverage):
    converted = json.dumps({"mo_hparams": 3, "mo_convert_s": 1.0})
    row = coverage._merge("m", converted, "over the 9 s limit", ("tp", "modelopt"))
    assert row["tp_error"] == row["mo_broke"] == "over the 9 s limit" and "error" not in row
    assert coverage._merge("m", "", "Killed", ("modelopt",))["mo_error"] == "Killed"


def test_middle_choices_are_nearest_half_the_largest(coverage):
    mtn = pytest.importorskip("modelopt.torch.nas")
    model = mtn.convert(nn.Sequential(nn.Conv2d(3, 128, 3), nn.BatchNorm2d(128), nn.ReLU(), nn.Conv2d(128, 96, 1),
                                      nn.BatchNorm2d(96), nn.ReLU(), nn.Conv2d(96, 10, 1)), mode="fastnas")
    middle = coverage.middle_choices(model)
    assert sorted(middle.values()) == [64, 64]  # 128 -> 64; 96 (choices 32, 64, 96) -> 64, the larger of 32 and 64
