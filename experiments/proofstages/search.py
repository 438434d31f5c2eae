"""Stage search: every method through autoprune.api.search, and scorer processes sharing one study."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import shutil
import statistics
import time
from pathlib import Path

import optuna
import torch

from autoprune.api import MethodConfig, StudyConfig, search
from autoprune.evaluator import EvalConfig
from autoprune.study import open_storage

from .common import OutOfTime, UtilSampler, free, load, log, sync
from .config import ONE_SHOT, SEARCHED
from .runner import Proof


def _search_kwargs(p: Proof, budget: str, method: str, *, trials: int | None = None, storage: str | None = None,
                   study: str | None = None, **extra) -> dict:
    e = p.s["eval"]
    trials = trials or (p.s["candidates"] if method in SEARCHED else 1)
    kw = dict(model=p.s["model"], budget=budget, method=method, base=str(p.base_path), seed=0, device=str(p.device),
              objective=EvalConfig(fine_tune_steps=e["fine_tune_steps"], bn_batches=e["bn_batches"],
                                    batch_size=e["batch_size"]),
              study=StudyConfig(trials=trials, storage=storage, name=study), progress=p.args.progress)
    options = {**(p.s["dmcp"] if method == "dmcp" else {}), **extra.pop("method_options", {})}
    kw["method"] = MethodConfig(method, options)
    kw.update(extra)
    return kw


def search_unit(p: Proof, stage: str, key: str, budget: str, method: str, folder: str, helpers: int = 0,
                **extra) -> dict:
    """One ``autoprune.api.search`` on the base into ``OUT/folder``: its row, saved as unit ``key``
    of ``stage`` (read back when saved already). A failing method's row holds ``error``. With
    ``helpers``, that many more scorer processes score the same study (its journal file) meanwhile;
    the row's cand/min then counts every process's candidates."""
    row = p.r.unit(stage, key)
    if row is not None:
        return row
    n = p.s["candidates"] if method in SEARCHED else 1
    est = n * p.candidate_estimate() / (1 + 0.7 * helpers) + 3
    if method == "dmcp":
        est += p.s["dmcp"]["steps"] * 5 * p.s["dmcp"]["batch_size"] / p.train_rate()
    if method == "ssl":  # (bisections + 1) short sparsity trainings of a copy of the base
        o = extra.get("method_options") or {}
        est += (o.get("bisections", 6) + 1) * o.get("steps", 100) * 3 * o.get("batch_size", 64) / p.train_rate()
    p.clock.check(est, f"{stage} {key}")
    torch.backends.cudnn.benchmark = p.s["search_cudnn_benchmark"]
    (p.out / folder).mkdir(parents=True, exist_ok=True)
    # A journal file, not the default SQLite database: creating and writing a study
    # costs a fraction of SQLite's synchronous commits (~1.5 s per search call).
    kw = _search_kwargs(p, budget, method, out=p.out / folder, storage=storage_url(p.out / folder),
                        study=Path(folder).name, **extra)
    before = _complete(p.out / folder, Path(folder).name) if helpers else 0
    sync(p.device)
    start = time.perf_counter()
    try:
        with UtilSampler(p.device) as util, scorers(p, kw, helpers) as failed:
            res = search(data=p.data, **kw)
            sync(p.device)
    except Exception as exc:  # noqa: BLE001 — one broken method must not stop the proof
        row = {"budget": budget, "method": method, "error": f"{type(exc).__name__}: {exc}"[:500]}
        p.r.save_unit(stage, key, row)
        log(f"{stage} {key} FAILED: {row['error']}")
        free(p.device)
        return row
    wall = time.perf_counter() - start
    s = res.summary()
    row = {"budget": budget, "method": method, "macs_ratio": s["macs_ratio"], "params": s["params"],
           "params_ratio": s["params"] / s["params_base"], "val": s["score"], "widths": s["widths"],
           "candidates": s["candidates"], "failed": s["failed"], "scored_here": res.info["scored_here"],
           "search_s": round(wall, 2), "cand_per_min": round(res.info["scored_here"] / wall * 60, 2),
           "gpu_util": util.mean, "arch": str(Path(folder) / "arch.json")}
    if helpers:
        row.update(scorers=helpers + 1, scorers_failed=len(failed),
                   cand_per_min=round((s["candidates"] - before) / wall * 60, 2))
    p.r.save_unit(stage, key, row)
    log(f"{stage} {key}: val {row['val']:.4f}, MACs {row['macs_ratio']:.3f}, "
        f"{row['candidates']} candidates, {row['cand_per_min']} /min")
    return row


def stage_search(p: Proof) -> dict:
    rows = [search_unit(p, "search", f"{budget}/{method}", budget, method, str(Path("search") / f"b{budget}-{method}"))
            for budget in p.s["budgets"] for method in SEARCHED + ONE_SHOT]
    conc = []
    for n in p.s["concurrency"]["workers"]:
        try:
            conc.append(concurrency(p, n))
        except OutOfTime:
            raise
        except Exception as exc:  # noqa: BLE001 — recorded, and the proof goes on
            row = {"workers": n, "error": f"{type(exc).__name__}: {exc}"[:500]}
            p.r.save_unit("search", f"concurrency/N{n}", row)
            log(f"search concurrency/N{n} FAILED: {row['error']}")
            conc.append(row)
    return {"rows": rows, "concurrency": conc, "eval": eval_settings(p),
            "cudnn_benchmark": p.s["search_cudnn_benchmark"], "candidates": p.s["candidates"]}


def eval_settings(p: Proof) -> dict:
    return EvalConfig.for_device(p.device, **p.s["eval"]).to_dict()


def storage_url(folder: Path) -> str:
    """A journal file in ``folder``: the storage several processes share."""
    return f"journal:{folder / 'study.journal'}"


@contextlib.contextmanager
def scorers(p: Proof, kw: dict, n: int):
    """``n`` more processes scoring the study of ``kw`` while the ``with`` block searches it; yields
    the list of those that failed, filled once they have ended (a failed one leaves its share to
    the others: the study still gets every candidate)."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_search_worker, args=({**kw, "out": Path(kw["out"]) / f"scorer{i}", "progress": False},
                                                      None, p.spec, p.s["threads"], p.s["search_cudnn_benchmark"]))
             for i in range(n)]
    failed = []
    for proc in procs:
        proc.start()
    try:
        yield failed
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    failed += [proc.exitcode for proc in procs if proc.exitcode != 0]
    if failed:
        log(f"{len(failed)} of {n} helper scorer processes failed (exit codes {failed})")


def _complete(folder: Path, study: str) -> int:
    """Candidates already complete in the study of a search folder (0 when there is none yet)."""
    if not (folder / "study.journal").is_file():
        return 0
    trials = optuna.load_study(study_name=study, storage=open_storage(storage_url(folder))).trials
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def _search_worker(kw: dict, barrier, spec: dict, threads, cudnn_benchmark: bool):
    """One scorer process beside others: set up, wait for the others (``barrier``, the concurrency
    measurement; None: start at once), search."""
    try:
        if threads:
            torch.set_num_threads(threads)
        device = torch.device(kw["device"])
        data = load(spec, device)
        if device.type == "cuda":
            torch.zeros(1, device=device)  # the CUDA context, before the clock starts
            torch.backends.cudnn.benchmark = cudnn_benchmark
    except BaseException:
        if barrier is not None:
            barrier.abort()  # the parent and the other workers stop waiting at once
        raise
    if barrier is not None:
        barrier.wait()
    search(data=data, **kw)


def concurrency(p: Proof, n: int) -> dict:
    """Candidates/min of ``n`` scorer processes sharing one study on one device."""


    key = f"concurrency/N{n}"
    row = p.r.unit("search", key)
    if row is not None:
        return row
    c = p.s["concurrency"]
    total = n * c["candidates_per_worker"]
    p.clock.check(c["candidates_per_worker"] * p.candidate_estimate() * (1 + 0.5 * (n - 1)) + 15, f"search {key}")
    folder = p.out / "search" / f"concurrency-N{n}"
    if folder.exists():  # a killed earlier attempt: start the measurement afresh

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    study = f"concurrency-N{n}"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n + 1)
    procs = []
    for i in range(n):
        kw = _search_kwargs(p, c["budget"], c["method"], trials=total, storage=storage_url(folder), study=study,
                            out=folder / f"worker{i}", progress=False)
        procs.append(ctx.Process(target=_search_worker, args=(kw, barrier, p.spec, p.s["threads"],
                                                              p.s["search_cudnn_benchmark"])))
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=300)
        with UtilSampler(p.device) as util:
            for proc in procs:
                proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError(f"a concurrency worker failed (exit codes {[proc.exitcode for proc in procs]})")

    trials = [t for t in optuna.load_study(study_name=study, storage=open_storage(storage_url(folder))).trials
              if t.state == optuna.trial.TrialState.COMPLETE and t.datetime_complete is not None]
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    span = (last - first).total_seconds()
    ratios = [p.macs_ratio(t.user_attrs["widths"]) for t in trials]
    row = {"workers": n, "budget": c["budget"], "method": c["method"], "candidates": len(trials),
           "macs_ratio": statistics.mean(ratios), "seconds": round(span, 2),
           "cand_per_min": round(len(trials) / max(span, 1e-9) * 60, 2), "gpu_util": util.mean}
    p.r.save_unit("search", key, row)
    log(f"search {key}: {row['candidates']} candidates in {span:.1f} s, {row['cand_per_min']} /min, GPU {util.mean}")
    return row
