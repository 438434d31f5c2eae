"""Stage producers (part 3): one-shot producers searched and retrained beside the baselines."""

from __future__ import annotations

from pathlib import Path

from .base import ensure_base
from .config import SEARCHED
from .retrain import ok_rows, retrain_row, unit_payload, wkey
from .runner import Proof
from .search import search_unit


def compared_rows(p: Proof, budget: str) -> list[dict]:
    """The retrain stage's rows the producers stand beside: uniform, slimming, l1-global and the
    best searched winner at ``budget``."""
    rows = [x for x in p.r.stage("retrain")["rows"] if x["budget"] == budget]
    out = [x for m in ("uniform", "slimming", "l1-global") for x in rows if x["method"] == m]
    searched = [x for x in rows if x["method"] in SEARCHED + ("dmcp",)]
    if searched:
        best = max(searched, key=lambda x: x["test_mean"])
        out.append({**best, "method": f"best searched ({best['method']})"})
    return out


def stage_producers(p: Proof) -> dict:
    """hrank, activation and ssl at each budget through the search API, then retrained from scratch
    like the retrain stage (a vector it trained already is not trained again)."""
    ensure_base(p)
    pr = p.s3["producers"]
    found = [search_unit(p, "producers", f"search/{b}/{m}", b, m, str(Path("producers") / f"b{b}-{m}"),
                         method_options=dict(pr["options"].get(m, {})))
             for b in pr["budgets"] for m in pr["methods"]]
    trained = p.r.stage("retrain")["units"]
    units = {}
    for row in ok_rows(found):
        for seed in p.s["seeds"]:
            key = f"{wkey(row['widths'])}/s{seed}"
            if key not in trained:
                units.setdefault(f"retrain/{key}", unit_payload(p, row["widths"], seed))
    run = p.run_units("producers", list(units.items()))
    tests = {k: u["test"] for k, u in trained.items()} | {k[len("retrain/"):]: u["test"] for k, u in run["units"].items()}
    rows = []
    for b in pr["budgets"]:
        rows += compared_rows(p, b)
        rows += [r if r.get("error") else retrain_row(r, [tests[f"{wkey(r['widths'])}/s{seed}"] for seed in p.s["seeds"]])
                 for r in found if r["budget"] == b]
    return {"rows": rows, "search": found, "units": run["units"], "workers": run["workers"], "wall_s": run["wall_s"],
            "unit_s_sum": run["unit_s_sum"], "epochs": p.s["train"]["epochs"], "seeds": p.s["seeds"]}
