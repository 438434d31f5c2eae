"""experiments/proof.py end to end at its smoke settings: complete, resumable after a kill,
and stopping cleanly within --budget-minutes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROOF = ROOT / "experiments" / "proof.py"
STAGES = ["throughput", "base", "search", "sweep", "tau", "retrain", "latency"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU only, whatever the machine has
    return env


def _cmd(out, *extra):
    return [sys.executable, str(PROOF), "--smoke", "--out", str(out), *extra]


def _stages(out: Path) -> dict:
    try:
        return json.loads((out / "results.json").read_text()).get("stages", {})
    except (OSError, ValueError):  # not written yet (the write itself is atomic)
        return {}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A smoke run killed (SIGKILL) once ``base`` is recorded, then run again to the end."""
    out = tmp_path_factory.mktemp("proof")
    first = subprocess.Popen(_cmd(out), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while "base" not in _stages(out):
            assert first.poll() is None, "the first run ended before it recorded the base stage"
            assert time.monotonic() < deadline, "the base stage was not recorded within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole group: scorer processes die with it
        first.wait()
    before = _stages(out)
    second = subprocess.run(_cmd(out), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    return out, before, second


def test_smoke_run_completes_with_every_stage_and_a_report(resumed_run):
    out, _, run = resumed_run
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["stages"]) == STAGES
    assert results["partial"] == {}, "a finished stage leaves no partial units behind"
    env = results["meta"]["environment"]
    for key in ("git_commit", "torch", "date", "cpu", "cpu_cores"):
        assert env[key], key
    assert results["settings"]["model"] == "resnet20" and results["settings"]["device"] == "cpu"

    st = results["stages"]
    rows = st["search"]["rows"]
    methods = {"abc", "tpe", "random", "uniform", "uniform-fill", "l1-global", "slimming", "dmcp"}
    for budget in ("0.4", "0.1"):
        got = {r["method"]: r for r in rows if r["budget"] == budget}
        assert set(got) == methods
        for r in got.values():
            assert 0 < r["macs_ratio"] <= float(budget)
        assert {got[m]["candidates"] for m in ("abc", "tpe", "random")} == {results["settings"]["candidates"]}
        assert got["uniform-fill"]["macs_ratio"] >= got["uniform"]["macs_ratio"]
    assert [c["workers"] for c in st["search"]["concurrency"]] == results["settings"]["concurrency"]["workers"]
    assert all(c["candidates"] >= c["workers"] and c["cand_per_min"] > 0 for c in st["search"]["concurrency"])
    assert len(st["retrain"]["rows"]) == len(rows)
    assert all(len(r["tests"]) == 2 and 0 <= r["test_mean"] <= 1 for r in st["retrain"]["rows"])
    assert len(st["tau"]["scratch"]) == results["settings"]["tau"]["vectors"]
    assert len(st["tau"]["settings"]) == len(results["settings"]["sweep"])
    assert len(st["latency"]["rows"]) == len(rows) + 1 and st["latency"]["rows"][0]["cpu_b1_ratio"] == 1.0
    assert (out / "base" / "model.pt").is_file()

    md = (out / "proof.md").read_text()
    tables = [block for block in md.split("\n\n") if block.startswith("| ")]
    assert len(tables) >= 8
    for table in tables:
        assert "MACs ratio" in table.splitlines()[0], table.splitlines()[0]
    assert "Not yet run" not in md


def test_a_killed_run_resumes_without_redoing_finished_stages(resumed_run):
    out, before, run = resumed_run
    assert run.returncode == 0, run.stderr[-3000:]
    after = _stages(out)
    assert {"throughput", "base"} <= set(before)
    for stage in ("throughput", "base"):
        assert after[stage]["run_id"] == before[stage]["run_id"]
        assert after[stage]["finished_at"] == before[stage]["finished_at"]
    assert "base: done already" in run.stdout
    assert after["search"]["run_id"] != before["base"]["run_id"]  # the second run did the rest
    invocations = json.loads((out / "results.json").read_text())["meta"]["invocations"]
    assert len(invocations) == 2


def test_a_tiny_time_budget_stops_cleanly_leaving_valid_json(tmp_path):
    run = subprocess.run(_cmd(tmp_path, "--budget-minutes", "0.001"), env=_env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resume with the same command" in run.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["stages"] == {}
    assert results["settings"]["model"] == "resnet20"
    assert "Not yet run: throughput" in (tmp_path / "proof.md").read_text()


def test_part_two_needs_part_one(tmp_path):
    run = subprocess.run(_cmd(tmp_path, "--part", "2"), env=_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2
    assert "--part 2 needs part 1" in run.stderr
