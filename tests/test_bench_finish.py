"""experiments/bench_finish.py at tiny settings on the synthetic set: one searched architecture
under the budget, finished four ways, Scratch-B by the library's rule, the record written."""

import importlib.util
import json
from pathlib import Path

import pytest

from autoprune.train import scratch_b_epochs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_finish", ROOT / "experiments" / "bench_finish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_finish_finishes_one_searched_architecture_four_ways(bench, tmp_path, capsys, one_thread):
    results = tmp_path / "finish.json"
    bench.main(["--cpu-scale", "--dataset", "synthetic", "--model", "resnet20", "--limit", "64", "--val-size", "64",
                "--test-limit", "48", "--base-epochs", "1", "--trials", "2", "--eval-bn-batches", "1",
                "--eval-steps", "1", "--eval-batch-size", "32", "--epochs", "1", "--batch-size", "32",
                "--seeds", "0", "1", "--device", "cpu", "--out", str(tmp_path / "run"), "--results", str(results)])
    record = json.loads(results.read_text())
    search = record["search"]
    assert search["macs"]["pruned"] <= 0.4 * search["macs"]["base"]
    assert search["candidates"] == 2 and record["data"]["test"] == 48
    assert [(r["seed"], r["way"]) for r in record["rows"]] == [(s, w) for s in (0, 1) for w in bench.WAYS]
    epochs = {s["way"]: s["epochs"] for s in record["summary"]}
    assert epochs["scratch-e"] == epochs["finetune"] == epochs["finetune+distill"] == 1
    assert epochs["scratch-b"] == scratch_b_epochs(1, search["macs"]["base"], search["macs"]["pruned"]) == 2
    assert all(0 <= r["test_acc"] <= 1 and r["seconds"] > 0 for r in record["rows"])
    assert all(s["n"] == 2 and s["test_std"] is not None for s in record["summary"])
    assert record["table"] in capsys.readouterr().out
    assert Path(record["base"]["path"]).is_file() and Path(search["arch"]).is_file()
