"""Stage tau: Kendall tau between proxy scores and from-scratch accuracy."""

from __future__ import annotations

import math

from scipy.stats import kendalltau

from .retrain import unit_payload, wkey
from .runner import Proof
from .search import eval_settings


def stage_tau(p: Proof) -> dict:
    sweep = p.r.stage("sweep")
    vectors = [tuple(w) for w in sweep["vectors"]]
    units = [(f"{wkey(w)}/s0", unit_payload(p, w, 0)) for w in vectors]
    run = p.run_units("tau", units)
    scratch = [run["units"][k]["test"] for k, _ in units]
    default = eval_settings(p)
    settings = []
    for row in sweep["rows"]:
        ok = [(a, b) for a, b in zip(row["proxy"], scratch) if a is not None]
        # A setting timed on a subset of the vectors gets no tau: a smaller sample is not comparable.
        full = len(row["proxy"]) == len(vectors)
        stat = kendalltau([a for a, _ in ok], [b for _, b in ok]) if full and len(ok) >= 2 else None
        tau = None if stat is None or not math.isfinite(stat.statistic) else float(stat.statistic)
        settings.append({**{k: row[k] for k in ("fine_tune_steps", "bn_batches", "cudnn_benchmark", "batch_size")},
                         "tau": tau, "p": None if tau is None else float(stat.pvalue),
                         "s_per_candidate": row["s_per_candidate"], "cand_per_min": row["cand_per_min"],
                         "tau_per_s": None if tau is None else tau / row["mean_s"],
                         "macs_ratio": row["macs_ratio"],
                         "search_default": row["fine_tune_steps"] == default["fine_tune_steps"]
                         and row["bn_batches"] == default["bn_batches"]
                         and row["cudnn_benchmark"] == p.s["search_cudnn_benchmark"]})
    main = next((s for s in settings if s["search_default"]), None) or max(
        (s for s in settings if s["tau"] is not None), key=lambda s: s["fine_tune_steps"], default=settings[-1])
    ratios = [p.macs_ratio(w) for w in vectors]
    return {"budget": sweep["budget"], "vectors": [list(w) for w in vectors], "scratch": scratch,
            "macs_ratio_min": min(ratios), "macs_ratio_max": max(ratios), "tau": main["tau"], "p": main["p"],
            "settings": settings, "units": run["units"], "workers": run["workers"], "wall_s": run["wall_s"],
            "epochs": p.s["train"]["epochs"]}


def kendall(proxy: list, scratch: list) -> tuple[float | None, float | None]:
    """Kendall τ and its p-value over the pairs whose proxy score exists (None when undefined)."""
    ok = [(a, b) for a, b in zip(proxy, scratch) if a is not None]
    if len(ok) < 2:
        return None, None
    stat = kendalltau([a for a, _ in ok], [b for _, b in ok])
    return (float(stat.statistic), float(stat.pvalue)) if math.isfinite(stat.statistic) else (None, None)
