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
