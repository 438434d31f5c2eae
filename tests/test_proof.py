"""experiments/proof.py (its stages in experiments/proofstages) end to end at its smoke settings:
complete in three parts, resumable after a kill and from a results file written before part 3
existed, and stopping cleanly within --budget-minutes."""

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import kendalltau

from autoprune import cost
from autoprune.models import create_model
from autoprune.space import SearchSpace

ROOT = Path(__file__).resolve().parent.parent
PROOF = ROOT / "experiments" / "proof.py"
STAGES = ["throughput", "base", "search", "sweep", "tau", "retrain", "latency", "criteria", "producers"]
KEEP_RULES = ["l1", "bn_gamma", "random", "hrank", "activation", "apoz", "reconstruct"]


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
def proof_module():
    """The proof's settings, stage table and results check (experiments/proofstages), imported in
    this process with experiments/ on sys.path as the command puts it (undone at once)."""
    saved = list(sys.path)
    try:
        sys.path[:0] = [str(ROOT / "experiments")]
        config = importlib.import_module("proofstages.config")
        main = importlib.import_module("proofstages.main")
    finally:
        sys.path[:] = saved
    return SimpleNamespace(**vars(config), STAGES=main.STAGES, open_results=main.open_results, main=main.main)


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """``--part 1`` killed (SIGKILL) once ``base`` is recorded, then ``--part 1`` and ``--part 2``
    again (which leave results.json as runs before part 3 existed wrote it), then ``--part 3``
    with the base checkpoint deleted, as on a fresh machine that only has the results file."""
    out = tmp_path_factory.mktemp("proof")
    first = subprocess.Popen(_cmd(out, "--part", "1"), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
    runs = {}
    for part in ("1", "2"):
        runs[part] = subprocess.run(_cmd(out, "--part", part), env=_env(), cwd=ROOT, capture_output=True, text=True,
                                    timeout=600)
    parts_1_2 = json.loads((out / "results.json").read_text())
    (out / "base" / "model.pt").unlink()
    runs["3"] = subprocess.run(_cmd(out, "--part", "3"), env=_env(), cwd=ROOT, capture_output=True, text=True,
                               timeout=600)
    return SimpleNamespace(out=out, before=before, runs=runs, parts_1_2=parts_1_2)


def test_smoke_run_completes_with_every_stage_and_a_report(resumed_run):
    out = resumed_run.out
    for part, run in resumed_run.runs.items():
        assert run.returncode == 0, f"--part {part}: {run.stderr[-3000:]}"
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
    assert len(tables) >= 10
    for table in tables:
        assert "MACs ratio" in table.splitlines()[0], table.splitlines()[0]
    assert "Not yet run" not in md


def test_every_keep_rule_is_ranked_against_the_tau_stage_retrains(resumed_run):
    results = json.loads((resumed_run.out / "results.json").read_text())
    tau, crit = results["stages"]["tau"], results["stages"]["criteria"]
    assert [r["rule"] for r in crit["rows"]] == KEEP_RULES
    assert crit["vectors"] == tau["vectors"] and crit["scratch"] == tau["scratch"]
    for r in crit["rows"]:
        assert len(r["proxy"]) == len(tau["vectors"]) and r["failed"] == 0
        assert all(0 <= x <= 1 for x in r["proxy"]) and r["s_per_candidate"] > 0 and r["setup_s"] >= 0
        expected = kendalltau(r["proxy"], tau["scratch"]).statistic
        if math.isfinite(expected):
            assert r["tau"] == pytest.approx(expected)
        else:  # tied accuracies (tiny smoke training): τ undefined, reported as such
            assert r["tau"] is None and r["p"] is None
    md = (resumed_run.out / "proof.md").read_text()
    assert all(f"| `{rule}` |" in md for rule in KEEP_RULES)


def test_producers_are_searched_retrained_and_shown_beside_the_baselines(resumed_run):
    results = json.loads((resumed_run.out / "results.json").read_text())
    st, part3 = results["stages"], results["settings_part3"]["producers"]
    rows = st["producers"]["rows"]
    for budget in part3["budgets"]:
        got = {r["method"]: r for r in rows if r["budget"] == budget}
        assert set(part3["methods"]) | {"uniform", "slimming", "l1-global"} <= set(got)
        assert any(m.startswith("best searched (") for m in got)
        for m in part3["methods"]:
            assert 0 < got[m]["macs_ratio"] <= float(budget)
            assert len(got[m]["tests"]) == len(results["settings"]["seeds"])
        retrained = {r["method"]: r for r in st["retrain"]["rows"] if r["budget"] == budget}
        assert got["uniform"]["tests"] == retrained["uniform"]["tests"]
    units = st["producers"]["units"]
    assert units and all(k.startswith("retrain/") for k in units)
    assert not {k[len("retrain/"):] for k in units} & set(st["retrain"]["units"]), "a vector trained twice"
    assert (resumed_run.out / "producers" / f"b{part3['budgets'][0]}-ssl" / "arch.json").is_file()


def test_a_killed_run_resumes_without_redoing_finished_stages(resumed_run):
    out, before, run = resumed_run.out, resumed_run.before, resumed_run.runs["1"]
    assert run.returncode == 0, run.stderr[-3000:]
    after = _stages(out)
    assert {"throughput", "base"} <= set(before)
    for stage in ("throughput", "base"):
        assert after[stage]["run_id"] == before[stage]["run_id"]
        assert after[stage]["finished_at"] == before[stage]["finished_at"]
    assert "base: done already" in run.stdout
    assert after["search"]["run_id"] != before["base"]["run_id"]  # the second run did the rest
    invocations = json.loads((out / "results.json").read_text())["meta"]["invocations"]
    assert len(invocations) == 4


def test_a_results_file_from_before_part_3_resumes_into_part_3(resumed_run):
    old, out = resumed_run.parts_1_2, resumed_run.out
    assert "settings_part3" not in old and set(old["stages"]) == set(STAGES[:7])
    results = json.loads((out / "results.json").read_text())
    assert results["settings"] == old["settings"], "part 3 leaves the stored settings as they were"
    assert results["settings_part3"]["criteria"]["rules"] == KEEP_RULES
    for stage in STAGES[:7]:
        assert results["stages"][stage]["run_id"] == old["stages"][stage]["run_id"]
    # The base checkpoint was deleted before part 3: trained again, and said so.
    assert len(results["meta"]["base_retrained"]) == 1
    assert "trained again for part 3" in (out / "proof.md").read_text()


def test_a_tiny_time_budget_stops_cleanly_leaving_valid_json(tmp_path):
    run = subprocess.run(_cmd(tmp_path, "--budget-minutes", "0.001"), env=_env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resume with the same command" in run.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["stages"] == {}
    assert results["settings"]["model"] == "resnet20"
    assert "Not yet run: throughput" in (tmp_path / "proof.md").read_text()


def test_the_published_gpu_results_stay_resumable(proof_module):
    # main() refuses a results.json whose stored settings differ from FULL: a key added to FULL
    # would strand this file. Part 3's settings live in PART3_FULL, stored apart.
    stored = json.loads((ROOT / "experiments" / "results" / "proof-h200.json").read_text())
    assert stored["settings"] == {**proof_module.FULL, "device": "cuda"}
    assert not set(proof_module.PART3_FULL) & set(stored["settings"])


def test_a_run_without_part_runs_all_three(proof_module):
    assert proof_module.PARTS[None] == tuple(STAGES)
    assert proof_module.PARTS[3] == ("criteria", "producers") and set(proof_module.STAGES) == set(STAGES)


def _args(part, smoke=True):
    return SimpleNamespace(part=part, device="cpu", smoke=smoke, rehearse=False)


def test_parts_need_the_earlier_parts_and_matching_settings(proof_module, tmp_path, capsys):
    pm = proof_module
    settings, part3 = dict(pm.SMOKE), dict(pm.PART3_SMOKE)
    assert pm.open_results(_args(2), tmp_path, settings, part3, []) is None
    assert "--part 2 needs part 1" in capsys.readouterr().err
    done = {s: {"run_id": "x"} for s in pm.PART1}
    (tmp_path / "results.json").write_text(json.dumps({"stages": done, "settings": {**settings, "device": "cpu"}}))
    assert pm.open_results(_args(3), tmp_path, settings, part3, []) is None
    assert "--part 3 needs part 1 and 2" in capsys.readouterr().err
    assert pm.open_results(_args(2), tmp_path, settings, part3, []) is not None
    assert "settings_part3" not in json.loads((tmp_path / "results.json").read_text())
    changed = {**part3, "criteria": {"rules": ["l1"]}}
    stamped = pm.open_results(_args(None), tmp_path, settings, part3, [])
    assert stamped.data["settings_part3"] == part3
    assert pm.open_results(_args(None), tmp_path, settings, changed, []) is None
    assert "other settings" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# --config v2 at its smoke scale: one tiny model and budget, 1 epoch, a few hundred images.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v2_run(tmp_path_factory):
    """``--config v2 --smoke`` run to the end, then run again (which must only read it back)."""
    out = tmp_path_factory.mktemp("proof-v2")
    cmd = _cmd(out, "--config", "v2")
    first = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    again = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    return SimpleNamespace(out=out, first=first, again=again, results=json.loads((out / "results.json").read_text()))


def test_v2_smoke_runs_every_stage_of_every_cell(v2_run, proof_module):
    assert v2_run.first.returncode == 0, v2_run.first.stderr[-3000:]
    r = v2_run.results
    s, st = r["settings"], r["stages"]
    assert s["config"] == "v2" and s == {**proof_module.V2_SMOKE, "device": "cpu"}
    assert list(st) == list(proof_module.v2_parts(s)[None]) and r["partial"] == {}
    (model, budgets), = s["models"].items()
    for budget in budgets:
        cell = f"{model}/{budget}"
        rows = {x["method"]: x for x in st[f"search/{cell}"]["rows"]}
        assert set(rows) == set(s["searched"]) | set(s["one_shot"])
        assert all(0 < x["macs_ratio"] <= float(budget) for x in rows.values())
        for m in s["searched"]:
            assert rows[m]["scorers"] == s["scorers"] and rows[m]["candidates"] == s["candidates"]
            assert rows[m]["scorers_failed"] == 0
        vectors = st[f"proxy/{cell}"]["vectors"]
        assert len({tuple(v["widths"]) for v in vectors}) == len(vectors) >= s["tau"]["vectors"]
        kinds = {v["kind"].split()[0] for v in vectors}
        assert kinds == {"winner", "early-heavy", "random"}
        assert all(v["macs_ratio"] <= float(budget) and 0 <= v["proxy"] <= 1 for v in vectors)
        for seed in s["seeds"]:
            retrained = st[f"retrain/{cell}/s{seed}"]
            assert {x["method"] for x in retrained["rows"]} == set(rows)
            assert all(0 <= x["test"] <= 1 for x in retrained["rows"])
        for seed in s["tau"]["seeds"]:
            tau = st[f"tau/{cell}/s{seed}"]
            assert len(tau["tests"]) == len(vectors)
            # The winners' runs come from the retrain stage of the same seed, not trained twice.
            assert not set(tau["units"]) & set(st[f"retrain/{cell}/s{seed}"]["units"])
        proxies = st[f"proxies/{cell}"]["proxies"]
        assert list(proxies) == list(s["proxies"])
        for name, row in proxies.items():
            assert row["kind"] == s["proxies"][name]["kind"] and len(row["scores"]) == len(vectors)
            assert all(x is not None for x in row["scores"]) and all(t > 0 for t in row["seconds"])
        for seed in s["finetune"]["seeds"]:
            ft = st[f"finetune/{cell}/s{seed}"]
            assert len(ft["tests"]) == len(vectors) and all(0 <= x <= 1 for x in ft["tests"])
            assert ft["epochs"] == s["finetune"]["epochs"]


def test_v2_multi_fidelity_proxy_promotes_by_optunas_successive_halving(v2_run, proof_module):
    r = v2_run.results
    s = r["settings"]
    proxies = importlib.import_module("proofstages.proxies")
    name, spec = next((k, v) for k, v in s["proxies"].items() if v["kind"] == "halving")
    (model, budgets), = s["models"].items()
    row = r["stages"][f"proxies/{model}/{budgets[0]}"]["proxies"][name]
    steps = proxies.halving_steps(spec)
    assert row["rung_steps"] == steps == [spec["min_steps"] * spec["reduction_factor"] ** k for k in range(spec["rungs"])]
    # Every vector got the cheapest score; the ones promoted got more steps; the first trial in
    # the seeded order always goes on (nothing to compare it with). Which others stop depends on
    # near-tied smoke scores, so it is not asserted.
    assert all(row["steps"][i] == steps[rung] for i, rung in enumerate(row["rungs"]))
    assert max(row["rungs"]) == len(steps) - 1
    assert row["scores"] == pytest.approx([rung + x for rung, x in zip(row["rungs"], row["rung_scores"])])


def test_v2_results_name_every_model_proxy_reference_tau_and_seed(v2_run):
    r = v2_run.results
    s, summary = r["settings"], r["summary"]
    assert summary["models"] == list(s["models"]) and summary["reference"] == "uniform-fill"
    assert summary["seeds"] == s["seeds"] and summary["tau_seeds"] == s["tau"]["seeds"]
    assert summary["finetune_seeds"] == s["finetune"]["seeds"]
    kinds = summary["proxies"]
    assert {"evaluator", "halving", "scratch"} <= set(kinds.values())
    assert "multi-fidelity" in kinds and any(k.startswith("scratch-") for k in kinds)
    cells = [(m, b) for m, budgets in s["models"].items() for b in budgets]
    assert [(c["model"], c["budget"]) for c in summary["cells"]] == cells
    for c in summary["cells"]:
        assert len(c["methods"]["uniform-fill"]["tests"]) == len(s["seeds"])
        assert c["methods"]["uniform-fill"]["vs_reference"] is None
        assert set(c["proxies"]) == {"search evaluator", *kinds}
        for row in c["proxies"].values():
            assert row["mean_s"] > 0 and row["cpu_s_per_candidate"] > 0  # CPU time beside wall time
            for finish in ("scratch", "finetune"):
                t = row[finish]
                assert t["n"] == len(r["stages"][f"proxy/{c['model']}/{c['budget']}"]["vectors"])
                assert "tau" in t and "p" in t
                if t["tau"] is not None:
                    assert row[f"{finish}_tau_per_s"] == pytest.approx(t["tau"] / row["mean_s"])
        assert set(c["best_proxy"]) == {"scratch", "finetune"}
    md = (v2_run.out / "proof.md").read_text()
    assert "multi-fidelity" in md and "τ vs fine-tuned" in md and "| CPU s/candidate |" in md


def test_v2_summary_compares_each_seed_with_uniform_fill_and_ranks_the_tau_vectors(v2_run, proof_module):
    r = v2_run.results
    cells = importlib.import_module("proofstages.cells")
    (model, budgets), = r["settings"]["models"].items()
    c = cells.cell_summary(r, model, budgets[0])
    ref = next(x for x in c["retrained"] if x["method"] == "uniform-fill")
    assert ref["vs_reference"] is None and len(ref["tests"]) == len(r["settings"]["seeds"])
    for x in c["retrained"]:
        if x["method"] != "uniform-fill":
            assert x["vs_reference"]["diffs"] == pytest.approx([a - b for a, b in zip(x["tests"], ref["tests"])])
    stages = r["stages"]
    vectors = stages[f"proxy/{model}/{budgets[0]}"]["vectors"]
    runs = [stages[f"tau/{model}/{budgets[0]}/s{seed}"]["tests"] for seed in r["settings"]["tau"]["seeds"]]
    expected = kendalltau([v["proxy"] for v in vectors], [sum(t) / len(t) for t in zip(*runs)]).statistic
    if math.isfinite(expected):
        assert c["tau"]["tau"] == pytest.approx(expected)
        assert c["tau"]["lo"] <= c["tau"]["tau"] <= c["tau"]["hi"]
    else:
        assert c["tau"]["tau"] is None
    md = (v2_run.out / "proof.md").read_text()
    assert "config v2" in md and "vs uniform-fill" in md and "Not yet run" not in md
    for table in [block for block in md.split("\n\n") if block.startswith("| ")]:
        assert "MACs ratio" in table.splitlines()[0], table.splitlines()[0]


def test_v2_rerun_reads_every_stage_back(v2_run):
    assert v2_run.again.returncode == 0, v2_run.again.stderr[-3000:]
    assert v2_run.again.stdout.count("done already") == len(v2_run.results["stages"])
    again = json.loads((v2_run.out / "results.json").read_text())
    assert again["stages"] == v2_run.results["stages"]


def test_v2_parts_need_the_stages_they_read(proof_module, tmp_path, capsys):
    pm = proof_module
    parts = pm.v2_parts(pm.V2_FULL)
    assert parts[1] == ("base/mobilenetv2",) and parts[2] == ("search/mobilenetv2/0.3", "proxy/mobilenetv2/0.3")
    assert sum(len(p) for k, p in parts.items() if k is not None) == len(parts[None]) == len(set(parts[None]))
    assert pm.v2_needs("tau/vgg16/0.1/s1") == ["proxy/vgg16/0.1", "retrain/vgg16/0.1/s1"]
    assert pm.v2_needs("proxies/vgg16/0.1") == pm.v2_needs("finetune/vgg16/0.1/s0") == ["proxy/vgg16/0.1"]
    # A cell's parts come together, in the order their stages read each other.
    names = list(parts[None])
    for name in names:
        assert all(names.index(n) < names.index(name) for n in pm.v2_needs(name))
    assert names.index("finetune/mobilenetv2/0.3/s0") < names.index("search/mobilenetv2/0.1")
    smoke = pm.v2_parts(pm.V2_SMOKE)
    retrain = next(k for k, p in smoke.items() if k is not None and p[0].startswith("retrain/"))
    assert pm.open_results(_args(retrain), tmp_path, pm.V2_SMOKE, {}, []) is None
    assert "needs search/resnet20/0.3" in capsys.readouterr().err
    assert pm.open_results(_args(1), tmp_path, pm.V2_SMOKE, {}, []) is not None
    # A v1 results file is not resumed as v2, nor the other way round.
    assert pm.open_results(_args(1), tmp_path, pm.SMOKE, pm.PART3_SMOKE, []) is None
    assert "other settings" in capsys.readouterr().err


def test_the_cpu_study_needs_the_data_and_keeps_the_v2_stages(proof_module, tmp_path, capsys):
    pm = proof_module
    assert pm.main(["--config", "v2-cpu", "--out", str(tmp_path / "out")]) == 2
    assert "give --data-dir" in capsys.readouterr().err and not (tmp_path / "out").exists()
    cpu, full = pm.V2_CPU, pm.V2_FULL
    assert cpu["config"] == "v2-cpu" and cpu["data"]["val_size"] + cpu["data"]["limit"] == 10000
    assert set(cpu) == set(full) and set(cpu["models"]) == {"resnet20", "mobilenetv2"}
    assert {spec["kind"] for spec in cpu["proxies"].values()} == {"evaluator", "halving", "scratch"}
    kinds = {name.split("/")[0] for name in pm.v2_parts(cpu)[None]}
    assert kinds == {name.split("/")[0] for name in pm.v2_parts(full)[None]}


def test_the_short_gpu_plan_runs_one_cell_in_two_sittings(proof_module, tmp_path, capsys):
    pm = proof_module
    short = pm.CONFIGS["v2-short"][0]
    parts = pm.v2_parts(short)
    assert set(parts) == {None, 1, 2} and set(short["models"]) == {"mobilenetv2"}
    assert short["candidates"] >= 150 and len(short["seeds"]) == 3
    assert {name.split("/")[0] for name in parts[1]} == {"base", "search", "proxy", "proxies"}
    for name in parts[2]:  # the second sitting reads only the first's stages and its own earlier ones
        assert all(n in parts[1] or parts[2].index(n) < parts[2].index(name) for n in pm.v2_needs(name))
    smoke = pm.CONFIGS["v2-short"][1]
    assert pm.open_results(_args(2), tmp_path, smoke, {}, []) is None
    assert "needs proxy/resnet20/0.3, search/resnet20/0.3" in capsys.readouterr().err


def test_a_rehearsal_runs_each_plans_counts_with_every_training_cut(proof_module, tmp_path, capsys):
    pm = proof_module
    for plan, _ in pm.CONFIGS.values():
        r = pm.rehearsal(plan)
        assert pm.v2_parts(r) == pm.v2_parts(plan)
        assert all(r[k] == plan[k] for k in ("config", "models", "candidates", "scorers", "searched", "one_shot", "seeds",
                                             "tau"))
        assert {n: s["kind"] for n, s in r["proxies"].items()} == {n: s["kind"] for n, s in plan["proxies"].items()}
        assert r["data"]["name"] == "synthetic" and r["data"]["options"]["image_size"] == 32
        assert r["train"]["max_steps"] <= 2 and r["finetune"]["epochs"] == 1
        assert r["eval"]["fine_tune_steps"] <= 2 and r["dmcp"]["steps"] <= 2
        for spec in r["proxies"].values():
            assert spec.get("fine_tune_steps", 0) <= 2 and spec.get("max_steps", 2) <= 2 and spec.get("min_steps", 1) == 1
        # A rehearsal's results file is never resumed by the plan itself, nor the other way round.
        out = tmp_path / plan["config"]
        assert pm.open_results(_args(1, smoke=False), out, r, {}, []) is not None
        assert pm.open_results(_args(1, smoke=False), out, plan, {}, []) is None
        assert "was written with other settings" in capsys.readouterr().err
    for argv in (["--rehearse"], ["--rehearse", "--smoke", "--config", "v2-short"]):
        assert pm.main([*argv, "--out", str(tmp_path / "refused")]) == 2
        assert "--rehearse takes a v2 config's full settings" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_an_unknown_part_is_refused(proof_module, tmp_path, capsys):
    for config, last in (("v1", 3), ("v2", len(proof_module.v2_parts(proof_module.V2_SMOKE)) - 1)):
        argv = ["--smoke", "--device", "cpu", "--config", config, "--out", str(tmp_path / "out"), "--part", str(last + 1)]
        assert proof_module.main(argv) == 2
        assert f"config {config} has parts 1-{last}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_lopsided_vectors_lean_the_way_they_say_within_the_budget(proof_module):
    vectors = importlib.import_module("proofstages.vectors")
    space = SearchSpace.from_model(create_model("resnet20"), (3, 32, 32), model_name="resnet20")
    base = cost.macs(space, space.max_widths())
    max_macs = int(0.3 * base)
    got = dict(vectors.lopsided(space, max_macs, {"early-heavy": [4.0], "late-heavy": [4.0], "bottleneck": [0.25]}))
    ratio = [[w / m for w, m in zip(got[k], space.max_widths())] for k in ("early-heavy 4", "late-heavy 4")]
    assert ratio[0][0] > ratio[1][0] and ratio[0][-1] < ratio[1][-1]
    for w in got.values():
        assert 0.2 * base < cost.macs(space, w) <= max_macs
    winners = [("winner uniform", space.uniform(0.5))]
    drawn = vectors.tau_set(space, max_macs, winners, {"early-heavy": [4.0]}, 6)
    assert [k for k, _ in drawn[:2]] == ["winner uniform", "early-heavy 4"] and len(drawn) == 6
    assert all(cost.macs(space, w) <= max_macs for _, w in drawn[2:]) and len({w for _, w in drawn}) == 6


def test_tau_interval_and_paired_test(proof_module):
    stats = importlib.import_module("proofstages.stats")
    t = stats.tau_ci([1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 5], resamples=300)
    assert t["tau"] == pytest.approx(kendalltau([1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 5]).statistic)
    assert -1 <= t["lo"] <= t["tau"] <= t["hi"] <= 1 and t["lo"] < t["hi"]
    assert stats.tau_ci([1, 2], [3, 3], resamples=10)["tau"] is None  # all ties: undefined, no interval
    # A perfect inverse order: every resample's tau is -1 as well, float noise and all.
    t = stats.tau_ci([0.1, 0.7, 0.3, 0.9, 0.2], [5.5, 1.1, 3.3, 0.7, 4.9], resamples=200)
    assert t["lo"] == t["tau"] == t["hi"] == -1.0
    # The bootstrap's vectorised tau-b is scipy's, ties and all.
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, (40, 9)).astype(float), rng.normal(size=(40, 9))
    y[5] = 1.0
    expected = [kendalltau(a, b).statistic for a, b in zip(x, y)]
    assert np.allclose(stats.kendall_tau_b(x, y), expected, equal_nan=True) and np.isnan(expected[5])
    d = stats.paired([0.9, 0.8, 0.85], [0.8, 0.8, 0.8])
    assert d["diffs"] == pytest.approx([0.1, 0.0, 0.05]) and d["wins"] == 2 and 0 < d["p"] < 1
    assert stats.paired([0.9], [0.8])["p"] is None
