"""The stages of the v2 proof (--config v2), one model and budget (a cell) at a time.

Each stage is named STAGE/MODEL[/BUDGET[/sSEED]] in results.json and runs on the model's view
of the run (``Proof.at``): its base in OUT/MODEL/base, its search folders in OUT/MODEL/search.

    base/MODEL                 the base, as the first proof's base stage
    search/MODEL/B             the searched methods (each with several scorer processes on one
                               study) and the one-shot methods; an unreachable budget is recorded
    proxy/MODEL/B              the tau vectors (winners, lopsided, random) and their proxy scores
    proxies/MODEL/B            the tau vectors under every proxy of the settings (proxies.py)
    retrain/MODEL/B/sS         every winner from scratch with seed S
    tau/MODEL/B/sS             the tau vectors the retrain stage did not train, with seed S
    finetune/MODEL/B/sS        the tau vectors fine-tuned from the base with seed S (proxies.py)

The comparisons (mean ± std, the paired test against the reference, tau and its interval, per
proxy against both finishes) are computed from these by ``cell_summary``, for the report.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from autoprune.budget import Limits
from autoprune.errors import BudgetError
from autoprune.evaluator import EvalConfig, Evaluator

from .base import stage_base
from .common import free, log
from .proxies import cell_finetune, cell_proxies, timed
from .retrain import ok_rows, unit_payload, wkey
from .runner import Proof
from .search import eval_settings, search_unit
from .stats import mean_std, median_of, paired, tau_ci
from .vectors import tau_set


def _cell(q: Proof, budget: str) -> str:
    return f"{q.model_key}/{budget}"


def _skipped(q: Proof, budget: str) -> dict | None:
    """The result of a stage of a cell whose budget the model cannot reach (None: it can)."""
    search = q.r.stage(f"search/{_cell(q, budget)}")
    return {"skipped": search["unreachable"]} if search.get("unreachable") else None


def cell_base(q: Proof) -> dict:
    return stage_base(q)


def cell_search(q: Proof, budget: str) -> dict:
    """Every searched method (``scorers`` processes sharing one study each) and every one-shot
    method at ``budget``, as the first proof's search units."""
    stage = f"search/{_cell(q, budget)}"
    info = {"model": q.model_key, "budget": budget, "eval": eval_settings(q), "candidates": q.s["candidates"],
            "scorers": q.s["scorers"]}
    try:
        Limits.of(q.space, budget)
    except BudgetError as exc:
        log(f"{stage}: {exc}")
        return {**info, "rows": [], "unreachable": str(exc)}
    rows = [search_unit(q, stage, method, budget, method, str(Path(q.model_key) / "search" / f"b{budget}-{method}"),
                        helpers=q.s["scorers"] - 1 if method in q.s["searched"] else 0)
            for method in [*q.s["searched"], *q.s["one_shot"]]]
    return {**info, "rows": rows}


def cell_proxy(q: Proof, budget: str) -> dict:
    """The cell's tau vectors and the proxy score of each under the search's evaluator."""
    skipped = _skipped(q, budget)
    if skipped:
        return skipped
    t = q.s["tau"]
    rows = ok_rows(q.r.stage(f"search/{_cell(q, budget)}")["rows"])
    winners = [(f"winner {r['method']}", tuple(r["widths"])) for r in rows]
    vectors = tau_set(q.space, q.max_macs(budget), winners, t["lopsided"], t["vectors"])
    q.clock.check(len(vectors) * q.candidate_estimate() + 5, f"proxy/{_cell(q, budget)}")
    torch.backends.cudnn.benchmark = q.s["search_cudnn_benchmark"]
    ev = Evaluator(q.base_model(), q.space, q.data, config=EvalConfig.for_device(q.device, **q.s["eval"]),
                   device=q.device)
    ev(vectors[0][1])  # the first candidate of a process pays for lazy initialisation: untimed
    out = []
    for label, w in vectors:
        proxy, seconds, cpu = timed(lambda v: ev(v).score, w, q.device)
        out.append({"kind": label, "widths": list(w), "macs_ratio": q.macs_ratio(w), "proxy": proxy, "seconds": seconds,
                    "cpu_seconds": cpu})
    free(q.device)
    return {"vectors": out, "eval": eval_settings(q)}


def cell_retrain(q: Proof, budget: str, seed: int) -> dict:
    """Every winner of the cell from scratch with ``seed`` (methods that found one vector share it)."""
    skipped = _skipped(q, budget)
    if skipped:
        return skipped
    rows = ok_rows(q.r.stage(f"search/{_cell(q, budget)}")["rows"])
    units = {}
    for r in rows:
        units.setdefault(wkey(r["widths"]), unit_payload(q, r["widths"], seed))
    run = q.run_units(f"retrain/{_cell(q, budget)}/s{seed}", list(units.items()))
    return {"seed": seed, "rows": [{"method": r["method"], "widths": r["widths"], "macs_ratio": r["macs_ratio"],
                                    "params": r["params"], "test": run["units"][wkey(r["widths"])]["test"]}
                                   for r in rows],
            "units": run["units"], "workers": run["workers"], "wall_s": run["wall_s"], "epochs": q.s["train"]["epochs"]}


def cell_tau(q: Proof, budget: str, seed: int) -> dict:
    """The tau vectors from scratch with ``seed``; the winners' runs come from the retrain stage."""
    skipped = _skipped(q, budget)
    if skipped:
        return skipped
    vectors = q.r.stage(f"proxy/{_cell(q, budget)}")["vectors"]
    trained = q.r.stage(f"retrain/{_cell(q, budget)}/s{seed}")["units"]
    units = {}
    for v in vectors:
        if wkey(v["widths"]) not in trained:
            units.setdefault(wkey(v["widths"]), unit_payload(q, v["widths"], seed))
    run = q.run_units(f"tau/{_cell(q, budget)}/s{seed}", list(units.items()))
    tests = {k: u["test"] for k, u in trained.items()} | {k: u["test"] for k, u in run["units"].items()}
    return {"seed": seed, "tests": [tests[wkey(v["widths"])] for v in vectors], "units": run["units"],
            "workers": run["workers"], "wall_s": run["wall_s"], "epochs": q.s["train"]["epochs"]}


def run_cell_stage(p: Proof, name: str) -> dict:
    """The v2 stage ``name`` (STAGE/MODEL[/BUDGET[/sSEED]]) on its model's view of the run."""
    kind, model, *rest = name.split("/")
    args = rest[:1] + [int(s[1:]) for s in rest[1:]]  # BUDGET, then the seed of sSEED
    return CELL_STAGES[kind](p.at(model), *args)


CELL_STAGES = {"base": cell_base, "search": cell_search, "proxy": cell_proxy, "proxies": cell_proxies,
               "retrain": cell_retrain, "tau": cell_tau, "finetune": cell_finetune}


def _retrained(st: dict, cell: str, seeds: list[int]) -> dict:
    """method -> its row and its test accuracy per seed (seeds whose retrain stage is done only)."""
    out = {}
    for seed in seeds:
        for r in (st.get(f"retrain/{cell}/s{seed}") or {}).get("rows", []):
            out.setdefault(r["method"], {**r, "tests": []})["tests"].append(r["test"])
    return out


def _finishes(st: dict, s: dict, cell: str) -> dict:
    """Per tau vector the mean test accuracy of each finish whose seeds are all done (else None):
    ``scratch`` over the tau seeds, ``finetune`` over the fine-tune seeds."""
    out = {}
    for finish, stage, seeds in (("scratch", "tau", s["tau"]["seeds"]), ("finetune", "finetune", s["finetune"]["seeds"])):
        runs = [st.get(f"{stage}/{cell}/s{seed}") for seed in seeds]
        out[finish] = ([sum(r["tests"][i] for r in runs) / len(runs) for i in range(len(runs[0]["tests"]))]
                       if runs and all(r and "tests" in r for r in runs) else None)
    return out


def _proxy_rows(st: dict, s: dict, cell: str, finishes: dict) -> list[dict]:
    """Per proxy (the search's evaluator first) its seconds per candidate and, against each finish,
    Kendall tau with its bootstrap interval and tau per second of proxy time."""
    proxy = st.get(f"proxy/{cell}") or {}
    rows = []
    if proxy.get("vectors"):
        seconds = [v["seconds"] for v in proxy["vectors"] if "seconds" in v]
        rows.append({"name": "search evaluator", "kind": "evaluator", "settings": proxy.get("eval"),
                     "scores": [v["proxy"] for v in proxy["vectors"]],
                     "mean_s": statistics.mean(seconds) if seconds else None,
                     "s_per_candidate": statistics.median(seconds) if seconds else None,
                     "cpu_s_per_candidate": median_of([v.get("cpu_seconds") for v in proxy["vectors"]])})
    rows += list(((st.get(f"proxies/{cell}") or {}).get("proxies") or {}).values())
    out = []
    for r in rows:
        row = {k: r.get(k) for k in ("name", "kind", "settings", "mean_s", "s_per_candidate", "cpu_s_per_candidate")}
        for finish, accs in finishes.items():
            ok = [i for i, x in enumerate(r["scores"]) if x is not None]
            t = None if accs is None else tau_ci([r["scores"][i] for i in ok], [accs[i] for i in ok],
                                                 resamples=s["tau"]["bootstrap"])
            row[finish] = t
            row[f"{finish}_tau_per_s"] = (t["tau"] / r["mean_s"] if t and t["tau"] is not None and r.get("mean_s")
                                          else None)
        out.append(row)
    return out


def cell_summary(results: dict, model: str, budget: str) -> dict:
    """What the v2 report shows of a cell, from results.json: per method the test accuracy over the
    seeds (mean ± std) and the paired comparison with the reference per seed; the tau test over
    the search evaluator's scores and the mean of the tau seeds, with its bootstrap interval, and
    tau between two seeds (how well one seed ranks the vectors: the ceiling a proxy can reach);
    per proxy, tau against each finish (from scratch, fine-tuned) and tau per second."""
    s, st, cell = results["settings"], results["stages"], f"{model}/{budget}"
    search = st.get(f"search/{cell}") or {}
    methods = _retrained(st, cell, s["seeds"])
    ref = methods.get(s["reference"])
    rows = []
    for method, r in methods.items():
        mean, std = mean_std(r["tests"])
        vs = paired(r["tests"], ref["tests"]) if ref and method != s["reference"] else None
        rows.append({**r, "test_mean": mean, "test_std": std, "vs_reference": vs})
    out = {"model": model, "budget": budget, "unreachable": search.get("unreachable"), "search": search.get("rows", []),
           "retrained": rows, "reference": s["reference"], "tau": None}
    proxy = st.get(f"proxy/{cell}") or {}
    out["finishes"] = _finishes(st, s, cell) if proxy.get("vectors") else {"scratch": None, "finetune": None}
    out["proxies"] = _proxy_rows(st, s, cell, out["finishes"])
    if out["finishes"]["scratch"] is not None:
        vectors = proxy["vectors"]
        runs = [st[f"tau/{cell}/s{seed}"]["tests"] for seed in s["tau"]["seeds"]]
        out["tau"] = {**out["proxies"][0]["scratch"],
                      "seeds": tau_ci(runs[0], runs[1], resamples=s["tau"]["bootstrap"]) if len(runs) > 1 else None,
                      "kinds": [v["kind"] for v in vectors], "accs": out["finishes"]["scratch"],
                      "macs_ratio_min": min(v["macs_ratio"] for v in vectors),
                      "macs_ratio_max": max(v["macs_ratio"] for v in vectors)}
    return out
