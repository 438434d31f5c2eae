"""Stage retrain: every search winner trained from scratch with each seed."""

from __future__ import annotations

import statistics
from dataclasses import asdict

from autoprune.arch import make_arch

from .common import train_config
from .runner import Proof


def unit_payload(p: Proof, widths, seed: int, budget=None, method=None) -> dict:
    arch = make_arch(p.s["model"], p.kwargs, p.space, widths, method=method)
    return {"arch": arch, "config": asdict(train_config(p.s, seed)), "test_limit": p.s["test_limit"]}


def ok_rows(rows: list[dict]) -> list[dict]:
    """Search rows of the methods that produced a winner (a failed method's row holds ``error``)."""
    return [r for r in rows if not r.get("error")]


def wkey(widths) -> str:
    return "-".join(str(int(w)) for w in widths)


def stage_retrain(p: Proof) -> dict:
    rows = ok_rows(p.r.stage("search")["rows"])
    units = {}
    for row in rows:
        for seed in p.s["seeds"]:
            # Methods that found the same vector share its retrains.
            units.setdefault(f"{wkey(row['widths'])}/s{seed}", unit_payload(p, row["widths"], seed))
    run = p.run_units("retrain", list(units.items()))
    out = []
    for row in rows:
        tests = [run["units"][f"{wkey(row['widths'])}/s{seed}"]["test"] for seed in p.s["seeds"]]
        out.append({"budget": row["budget"], "method": row["method"], "macs_ratio": row["macs_ratio"],
                    "params": row["params"], "widths": row["widths"], "val": row["val"], "tests": tests,
                    "test_mean": statistics.mean(tests)})
    return {"rows": out, "units": run["units"], "workers": run["workers"], "wall_s": run["wall_s"],
            "unit_s_sum": run["unit_s_sum"], "epochs": p.s["train"]["epochs"], "seeds": p.s["seeds"]}


def retrain_row(row: dict, tests: list[float], label: str | None = None) -> dict:
    return {"budget": row["budget"], "method": label or row["method"], "macs_ratio": row["macs_ratio"],
            "params": row["params"], "widths": row["widths"], "val": row["val"], "tests": tests,
            "test_mean": statistics.mean(tests)}
