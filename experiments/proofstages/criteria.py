"""Stage criteria (part 3): every keep rule ranked against the tau stage's retrains."""

from __future__ import annotations

import statistics
import time

import torch

from autoprune.evaluator import EvalConfig, Evaluator

from .base import ensure_base
from .common import free, log, sync
from .report import fmt
from .runner import Proof
from .search import eval_settings
from .tau import kendall


def criteria_unit(p: Proof, rule: str, base, vectors: list, scratch: list) -> dict:
    """The tau stage's vectors scored by the search-default evaluator keeping channels by ``rule``."""
    config = EvalConfig.for_device(p.device, **p.s["eval"], keep=rule)
    sync(p.device)
    start = time.perf_counter()
    # No score cache: setup_s is what the rule's statistics cost on this base, every time.
    ev = Evaluator(base, p.space, p.data, config=config, device=p.device)
    sync(p.device)
    setup = time.perf_counter() - start
    proxy, seconds = [], []
    for w in vectors:
        sync(p.device)
        t = time.perf_counter()
        res = ev(w)
        sync(p.device)
        seconds.append(time.perf_counter() - t)
        proxy.append(res.score)
    tau, pvalue = kendall(proxy, scratch)
    return {"rule": rule, "tau": tau, "p": pvalue, "proxy": proxy, "seconds": seconds, "setup_s": round(setup, 3),
            "s_per_candidate": statistics.median(seconds), "mean_s": statistics.mean(seconds),
            "proxy_mean": statistics.mean(x for x in proxy if x is not None) if any(x is not None for x in proxy) else None,
            "failed": sum(x is None for x in proxy), "macs_ratio": statistics.mean(p.macs_ratio(w) for w in vectors)}


def stage_criteria(p: Proof) -> dict:
    """Kendall τ of every keep rule against the tau stage's from-scratch accuracies (no new training)."""
    ensure_base(p)
    tau = p.r.stage("tau")
    vectors, scratch = [tuple(w) for w in tau["vectors"]], tau["scratch"]
    base = p.base_model()
    torch.backends.cudnn.benchmark = p.s["search_cudnn_benchmark"]
    rows, warm = [], False
    for rule in p.s3["criteria"]["rules"]:
        row = p.r.unit("criteria", rule)
        if row is None:
            p.clock.check(len(vectors) * p.candidate_estimate() * 1.5 + 10, f"criteria {rule}")
            if not warm:  # the first candidate of a process pays for lazy initialisation
                Evaluator(base, p.space, p.data, config=EvalConfig.for_device(p.device, **p.s["eval"]),
                          device=p.device)(vectors[0])
                warm = True
            row = criteria_unit(p, rule, base, vectors, scratch)
            p.r.save_unit("criteria", rule, row)
            log(f"criteria {rule}: tau {fmt(row['tau'], '{:+.3f}')}, {row['s_per_candidate']:.2f} s/candidate, "
                f"statistics {row['setup_s']:.1f} s")
            free(p.device)
        rows.append(row)
    return {"rows": rows, "budget": tau["budget"], "vectors": tau["vectors"], "scratch": scratch,
            "epochs": tau["epochs"], "eval": eval_settings(p), "cudnn_benchmark": p.s["search_cudnn_benchmark"]}
