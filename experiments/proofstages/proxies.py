"""The proxies of the v2 proof and the second finish, one model and budget (a cell) at a time.

    proxies/MODEL/B            every tau vector scored by every proxy of the settings, timed
    finetune/MODEL/B/sS        every tau vector fine-tuned from the weights it inherits, seed S

A proxy is one of three kinds (settings ``proxies``):

evaluator   autoprune's Evaluator with the search's settings and ``fine_tune_steps`` of its own
            (0: BatchNorm re-estimation only)
halving     multi-fidelity: one Optuna trial per vector under a SuccessiveHalvingPruner. The
            trial inherits the weights, re-estimates BatchNorm and fine-tunes in rungs of
            ``min_steps × reduction_factor^k`` steps in all (k < ``rungs``), reporting its
            validation score after each; the pruner stops it where the vectors scored so far at
            that rung put it outside the top 1/reduction_factor. Each rung is a fine-tune of its
            own (a fresh half cosine, the next seed), as a trial that may stop cannot know its
            length in advance. Its score ranks by the rung reached, then by the last score there
            (``rung + score``), the order in which a search would prefer them; the vectors are
            taken in a seeded random order, since a sequential pruner favours early trials.
scratch     the vector built freshly initialised and trained ``epochs`` epochs (at most
            ``max_steps`` steps, the schedule fitted to them) of the retrain recipe, seed ``seed``,
            scored on the validation split: Scratch-E in miniature.

A proxy whose settings are the search's evaluator's takes the scores and seconds the proxy stage
measured with it rather than scoring the vectors again.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, replace

import numpy as np
import optuna
import torch
from bench_search import test_subset

from autoprune.arch import build
from autoprune.evaluator import EvalConfig, Evaluator, fine_tune, recalibrate_bn
from autoprune.finish import finetune
from autoprune.surgery import materialise
from autoprune.task import score_model
from autoprune.train import TrainConfig, train

from .common import free, log, sync
from .retrain import unit_payload, wkey
from .runner import Proof
from .stats import median_of


def _vectors(q: Proof, budget: str) -> list[tuple[int, ...]]:
    return [tuple(v["widths"]) for v in q.r.stage(f"proxy/{q.model_key}/{budget}")["vectors"]]


def timed(fn, widths, device) -> tuple[float | None, float, float]:
    """(score, seconds, CPU seconds) of one candidate, the device's queue drained on both sides.
    The CPU seconds are this process's, every thread's: on a CPU shared with other jobs they are
    the candidate's cost, where the wall seconds add the wait for a core."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    score = fn(widths)
    sync(device)
    return score, time.perf_counter() - start, time.process_time() - cpu


class EvaluatorProxy:
    """The search's evaluator with ``fine_tune_steps`` of the proxy's own."""

    def __init__(self, q: Proof, spec: dict):
        config = replace(EvalConfig.for_device(q.device, **q.s["eval"]), fine_tune_steps=spec["fine_tune_steps"])
        self.config = config
        self.ev = Evaluator(q.base_model(), q.space, q.data, config=config, device=q.device)

    def __call__(self, widths) -> float | None:
        return self.ev(widths).score

    def settings(self) -> dict:
        return self.config.to_dict()


class ScratchProxy:
    """``epochs`` epochs from scratch of the retrain recipe, validation accuracy."""

    def __init__(self, q: Proof, spec: dict):
        self.q, self.spec = q, spec
        payload = unit_payload(q, q.space.max_widths(), spec["seed"])
        self.config = TrainConfig.from_dict({**payload["config"], "epochs": spec["epochs"],
                                             "max_steps": spec.get("max_steps", payload["config"]["max_steps"])})

    def __call__(self, widths) -> float | None:
        model = build(unit_payload(self.q, widths, self.spec["seed"])["arch"]).to(self.q.device)
        torch.manual_seed(self.config.seed)
        val = train(model, self.q.data, self.config, device=self.q.device, progress=False)["val_acc"]
        del model
        free(self.q.device)
        return float(val)

    def settings(self) -> dict:
        return asdict(self.config)


def halving_steps(spec: dict) -> list[int]:
    """Fine-tune steps done when each rung reports: ``min_steps × reduction_factor^k``."""
    return [spec["min_steps"] * spec["reduction_factor"] ** k for k in range(spec["rungs"])]


def halving_scores(q: Proof, vectors: list[tuple[int, ...]], spec: dict) -> list[dict]:
    """The multi-fidelity proxy over ``vectors``: per vector its rung reached, the score there,
    the fine-tune steps it got, the composite ``rung + score`` and its seconds."""
    config = EvalConfig.for_device(q.device, **q.s["eval"])
    ev = Evaluator(q.base_model(), q.space, q.data, config=config, device=q.device)  # its fitted keep rule
    steps = halving_steps(spec)
    order = np.random.default_rng(spec["seed"]).permutation(len(vectors))
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=spec["min_steps"],
                                                    reduction_factor=spec["reduction_factor"])
    study = optuna.create_study(direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=spec["seed"]))
    out: list[dict | None] = [None] * len(vectors)

    def objective(trial: optuna.Trial) -> float:
        i = int(order[trial.number])
        sync(q.device)
        start, cpu, rung, score, done = time.perf_counter(), time.process_time(), 0, None, 0
        try:
            model = materialise(ev.base, ev.space, vectors[i], keep=ev.keep, seed=config.seed).to(q.device)
            recalibrate_bn(model, ev.task, batches=config.bn_batches, batch_size=config.batch_size, device=q.device,
                           seed=config.seed)
            for rung, total in enumerate(steps):
                fine_tune(model, ev.task, steps=total - done, lr=config.lr, batch_size=config.batch_size,
                          device=q.device, seed=config.seed + rung)
                done, score = total, score_model(model, ev.task, q.device)
                trial.report(score, total)
                if rung + 1 < len(steps) and trial.should_prune():
                    break
        except (RuntimeError, ValueError) as exc:  # a failed candidate, as the evaluator reports it
            log(f"multi-fidelity {wkey(vectors[i])}: {type(exc).__name__}: {exc}"[:300])
            score = None
        sync(q.device)
        out[i] = {"rung": rung, "score": score, "steps": done, "seconds": time.perf_counter() - start,
                  "cpu_seconds": time.process_time() - cpu,
                  "proxy": None if score is None else rung + score}
        if score is None:
            raise optuna.TrialPruned()
        return score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=len(vectors), catch=())
    free(q.device)
    return out


def _proxy_unit(q: Proof, budget: str, name: str, spec: dict, vectors: list[tuple[int, ...]]) -> dict:
    """Every vector scored by one proxy: scores, seconds each, and the proxy's settings."""
    search = EvalConfig.for_device(q.device, **q.s["eval"])
    if spec["kind"] == "evaluator" and spec["fine_tune_steps"] == search.fine_tune_steps:
        # The search's own evaluator: the proxy stage scored and timed these vectors with it already.
        rows = q.r.stage(f"proxy/{q.model_key}/{budget}")["vectors"]
        extra = {"settings": search.to_dict(), "same_as": "search evaluator"}
    elif spec["kind"] == "halving":
        rows = halving_scores(q, vectors, spec)
        extra = {"rungs": [r["rung"] for r in rows], "steps": [r["steps"] for r in rows],
                 "rung_scores": [r["score"] for r in rows], "rung_steps": halving_steps(spec),
                 "settings": search.to_dict()}
    else:
        fn = {"evaluator": EvaluatorProxy, "scratch": ScratchProxy}[spec["kind"]](q, spec)
        if spec["kind"] == "evaluator":
            fn(vectors[0])  # the first candidate of a process pays for lazy initialisation: untimed
        rows = [dict(zip(("proxy", "seconds", "cpu_seconds"), timed(fn, w, q.device))) for w in vectors]
        extra = {"settings": fn.settings()}
    # Every kind's rows hold a vector's proxy score and its seconds; CPU seconds are missing from a
    # proxy stage recorded before they were.
    scores, seconds, cpu = ([r.get(k) for r in rows] for k in ("proxy", "seconds", "cpu_seconds"))
    return {**spec, "name": name, "scores": scores, "seconds": seconds, "mean_s": statistics.mean(seconds),
            "s_per_candidate": statistics.median(seconds), "cpu_seconds": cpu, "cpu_s_per_candidate": median_of(cpu),
            **extra}


def _proxy_estimate(q: Proof, spec: dict, n: int) -> float:
    """Seconds for ``n`` vectors under one proxy, from the search's measured seconds per candidate."""
    c = EvalConfig.for_device(q.device, **q.s["eval"])
    per_step = q.candidate_estimate() / (c.fine_tune_steps + 10)
    if spec["kind"] == "evaluator":
        return 0 if spec["fine_tune_steps"] == c.fine_tune_steps else n * per_step * (spec["fine_tune_steps"] + 10) + 2
    if spec["kind"] == "halving":
        return n * per_step * (2 * spec["min_steps"] + 10 * spec["rungs"]) + 2
    fraction = spec["epochs"] / q.s["train"]["epochs"]
    if spec.get("max_steps"):
        fraction = min(fraction, spec["max_steps"] * q.s["train"]["batch_size"] / (q.s["train"]["epochs"] * len(q.data.train_y)))
    return n * q.train_estimate() * fraction


def cell_proxies(q: Proof, budget: str) -> dict:
    """The cell's tau vectors scored by every proxy, each proxy a unit of its own."""
    from .cells import _skipped  # the cell helpers import this module's stages

    skipped = _skipped(q, budget)
    if skipped:
        return skipped
    stage, vectors = f"proxies/{q.model_key}/{budget}", _vectors(q, budget)
    torch.backends.cudnn.benchmark = q.s["search_cudnn_benchmark"]
    rows = {}
    for name, spec in q.s["proxies"].items():
        row = q.r.unit(stage, name)
        if row is None:
            q.clock.check(_proxy_estimate(q, spec, len(vectors)), f"{stage} {name}")
            row = _proxy_unit(q, budget, name, spec, vectors)
            q.r.save_unit(stage, name, row)
            log(f"{stage} {name}: {row['s_per_candidate']:.2f} s/candidate")
        rows[name] = row
    return {"proxies": rows, "n": len(vectors)}


def cell_finetune(q: Proof, budget: str, seed: int) -> dict:
    """The cell's tau vectors fine-tuned from the base with ``seed`` (autoprune.finetune)."""
    from .cells import _skipped

    skipped = _skipped(q, budget)
    if skipped:
        return skipped
    f = q.s["finetune"]
    units = {}
    for w in _vectors(q, budget):
        payload = unit_payload(q, w, seed)
        config = {**asdict(TrainConfig.for_device(q.device, epochs=f["epochs"], lr=f["lr"], schedule="cosine",
                                                  warmup=0.0, seed=seed)),
                  "batch_size": payload["config"]["batch_size"], "max_steps": payload["config"]["max_steps"]}
        units.setdefault(wkey(w), {**payload, "config": config, "base": str(q.base_path)})
    run = q.run_units(f"finetune/{q.model_key}/{budget}/s{seed}", list(units.items()), fn=finetune_unit,
                      estimate=q.train_estimate() * f["epochs"] / q.s["train"]["epochs"])
    return {"seed": seed, "tests": [run["units"][wkey(w)]["test"] for w in _vectors(q, budget)], "units": run["units"],
            "workers": run["workers"], "wall_s": run["wall_s"], "epochs": f["epochs"]}


def finetune_unit(p: dict) -> dict:
    """Fine-tune ``p['arch']`` from the weights it inherits from ``p['base']``; test accuracy."""
    from .runner import worker_data

    # The test split cut to the images test_acc measures: finetune tests every image it is given.
    data, device = test_subset(worker_data(p), p["test_limit"]), torch.device(p["device"])
    start = time.perf_counter()
    res = finetune(p["arch"], p["base"], data, config=TrainConfig.from_dict(p["config"]), device=device,
                   seed=p["config"]["seed"])
    sync(device)
    seconds = time.perf_counter() - start
    test = res.test_acc
    out = {"test": test, "val": res.val_acc, "seconds": round(seconds, 2), "seed": p["config"]["seed"]}
    del res
    free(device)
    return out
