"""Stage sweep: seconds per candidate and proxy scores of the tau vectors under each evaluator setting."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from autoprune.budget import Limits, repair
from autoprune.evaluator import EvalConfig, Evaluator

from .common import log, sync
from .runner import Proof


def tau_vectors(p: Proof) -> list[tuple[int, ...]]:
    """``tau.vectors`` distinct random grid points repaired onto the tau budget (seeded)."""

    max_macs = p.max_macs(p.s["tau"]["budget"])
    rng = np.random.default_rng(1)
    vectors, seen = [], set()
    for _ in range(1000 * p.s["tau"]["vectors"]):
        if len(vectors) == p.s["tau"]["vectors"]:
            break
        w = repair(p.space, p.space.sample(rng), Limits(max_macs), rng=rng)
        if w not in seen:
            seen.add(w)
            vectors.append(w)
    return vectors


def stage_sweep(p: Proof) -> dict:
    """Seconds per candidate and proxy scores of the tau vectors under each evaluator setting."""

    vectors = tau_vectors(p)
    base = p.base_model()
    batch = p.s["eval"]["batch_size"]
    rows = []
    warm = False
    for i, setting in enumerate(p.s["sweep"]):
        key = f"setting{i}"
        row = p.r.unit("sweep", key)
        if row is None:
            config = EvalConfig.for_device(p.device, fine_tune_steps=setting["fine_tune_steps"],
                                           bn_batches=setting["bn_batches"], batch_size=batch)
            ev = Evaluator(base, p.space, p.data, config=config, device=p.device)
            todo = vectors[:setting.get("vectors") or len(vectors)]
            est = len(todo) * p.candidate_estimate() * (setting["fine_tune_steps"] + 10) / (
                (EvalConfig.for_device(p.device, **p.s["eval"]).fine_tune_steps or 1) + 10) + 2
            p.clock.check(est, f"sweep {key}")
            if not warm:  # the first candidate of a process pays for lazy initialisation
                torch.backends.cudnn.benchmark = False
                ev(vectors[0])
                warm = True
            torch.backends.cudnn.benchmark = setting["cudnn_benchmark"]
            proxy, seconds = [], []
            for w in todo:
                sync(p.device)
                t = time.perf_counter()
                res = ev(w)
                sync(p.device)
                seconds.append(time.perf_counter() - t)
                proxy.append(res.score)
            row = {**setting, "batch_size": config.batch_size, "lr": config.lr, "proxy": proxy, "seconds": seconds,
                   "s_per_candidate": statistics.median(seconds), "mean_s": statistics.mean(seconds),
                   "cand_per_min": round(60 / statistics.mean(seconds), 1),
                   "macs_ratio": statistics.mean(p.macs_ratio(w) for w in todo)}
            p.r.save_unit("sweep", key, row)
            log(f"sweep {key} {setting}: {row['s_per_candidate']:.2f} s/candidate")
        rows.append(row)
    torch.backends.cudnn.benchmark = p.s["search_cudnn_benchmark"]
    return {"rows": rows, "vectors": [list(w) for w in vectors], "budget": p.s["tau"]["budget"]}
