"""The shared state of one invocation (Proof) and the retrain runner, sequential or a spawn pool."""

from __future__ import annotations

import copy
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import torch
from bench_search import test_acc

from autoprune import cost
from autoprune.arch import build
from autoprune.budget import parse_budget
from autoprune.checkpoint import load_checkpoint
from autoprune.evaluator import EvalConfig
from autoprune.models import create_model, model_kwargs
from autoprune.space import SearchSpace
from autoprune.train import TrainConfig, split_accuracy, train

from .common import Clock, OutOfTime, Results, data_spec, free, load, log, sync
from .config import PART3_FULL, PART3_SMOKE, SEARCHED


class Proof:
    """One invocation: its options, settings, results file and clock, the data, and the model's
    base and search space. A config of several models (v2) works through one view per model,
    ``at(model)``, that shares everything but the model."""

    def __init__(self, args, settings: dict, results: Results, clock: Clock, part3: dict | None = None):
        self.args, self.s, self.r, self.clock = args, settings, results, clock
        self.s3 = part3 if part3 is not None else PART3_SMOKE if args.smoke else PART3_FULL
        self.out = Path(args.out)
        self.device = torch.device(args.device)
        self.spec = data_spec(settings, args.data_dir)
        self._shared = {"data": None}  # one load of the data for every view of the run
        self._space = None
        self.model_key = None  # the model of a view (at()): its stages are named STAGE/MODEL/...

    def at(self, model: str) -> Proof:
        """The view of this run for ``model``: its base in OUT/MODEL/base, its own search space."""
        view = copy.copy(self)
        view.s = {**self.s, "model": model}
        view.model_key, view._space = model, None
        return view

    # -- lazily built shared objects --------------------------------------------------------
    @property
    def data(self):
        if self._shared["data"] is None:
            t = time.perf_counter()
            self._shared["data"] = load(self.spec, self.device)
            log(f"data '{self.spec['name']}' loaded in {time.perf_counter() - t:.1f} s: "
                f"{self._shared['data'].meta['sizes']}")
        return self._shared["data"]

    @property
    def kwargs(self) -> dict:
        return model_kwargs(self.s["model"], num_classes=self.data.num_classes)

    @property
    def base_path(self) -> Path:
        return (self.out if self.model_key is None else self.out / self.model_key) / "base" / "model.pt"

    def base_model(self):
        model = create_model(self.s["model"], **self.kwargs)
        load_checkpoint(self.base_path, model)
        return model.to(self.device)

    @property
    def space(self):
        if self._space is None:
            self._space = SearchSpace.from_model(create_model(self.s["model"], **self.kwargs),
                                                 tuple(self.data.input_shape), model_name=self.s["model"])
        return self._space

    def max_macs(self, budget) -> int:
        return parse_budget(budget).max_macs(cost.macs(self.space, self.space.max_widths()))

    def macs_ratio(self, widths) -> float:
        return cost.macs(self.space, widths) / cost.macs(self.space, self.space.max_widths())

    # -- cost estimates (seconds), from settings and the speeds measured so far -------------
    def train_rate(self) -> float:
        """Training img/s of the base model: measured in ``base`` or ``throughput``, else a guess."""
        base = self.r.stage("base" if self.model_key is None else f"base/{self.model_key}")
        if base and base.get("img_per_s"):
            return base["img_per_s"]
        tp = self.r.stage("throughput")
        if tp:
            rows = [r for r in tp["rows"] if r["model"] == self.s["model"] and r["pipeline"] == "fast"]
            if rows:
                return rows[0]["img_per_s_median"] * 0.8
        return 40000.0 if self.device.type == "cuda" else 300.0

    def train_estimate(self, speedup: float = 1.0) -> float:
        t = self.s["train"]
        n = len(self.data.train_y)
        per_epoch = n // t["batch_size"] or 1
        steps = t["epochs"] * per_epoch if t["max_steps"] is None else min(t["max_steps"], t["epochs"] * per_epoch)
        return steps * t["batch_size"] / (self.train_rate() * speedup) + 0.3 * t["epochs"] + 2

    def candidate_estimate(self) -> float:
        """Seconds per candidate: measured in earlier search units, else from the training rate."""
        done = [u for st in _named(self.r.data["partial"], "search") for u in self.r.data["partial"][st].values()]
        done += [r for st in _named(self.r.data["stages"], "search") for r in self.r.stage(st).get("rows") or []]
        rates = [u["search_s"] / u["candidates"] for u in done
                 if u.get("candidates") and u.get("method") in SEARCHED and u.get("search_s")]
        if rates:
            return statistics.median(rates)

        c = EvalConfig.for_device(self.device, **self.s["eval"])
        imgs = 3 * c.fine_tune_steps * c.batch_size + c.bn_batches * c.batch_size + len(self.data.val_y)
        return imgs / (2 * self.train_rate()) + (0.5 if self.device.type == "cuda" else 0.2)

    def unit_estimate(self, stage: str, default: float | None = None) -> float:
        """Seconds per unit of ``stage``: the median of finished ones of its kind (from-scratch
        retrains: the retrain and tau stages; a fine-tune: the finetune stages), else ``default``,
        else from the training rate."""
        kinds = ("finetune",) if stage.split("/")[0] == "finetune" else ("retrain", "tau")
        done = []
        for st in _named(self.r.data["partial"], *kinds):
            done += [u["seconds"] for u in self.r.data["partial"][st].values() if "seconds" in u]
        for st in _named(self.r.data["stages"], *kinds):
            done += [u["seconds"] for u in (self.r.stage(st).get("units") or {}).values() if "seconds" in u]
        if done:
            return statistics.median(done)
        return default if default is not None else self.train_estimate(speedup=2.0)

    # -- the retrain runner, sequential or a spawn pool --------------------------------------
    def run_units(self, stage: str, units: list[tuple[str, dict]], fn=None, estimate: float | None = None) -> dict:
        """Train every (key, payload) not yet saved with ``fn(payload) -> result`` (a module-level
        function; default: from scratch); each result is saved as it arrives. ``estimate``:
        seconds per unit until units of the stage's kind have been timed."""
        fn = fn or _retrain_unit
        todo = [(k, p) for k, p in units if self.r.unit(stage, k) is None]
        workers = max(1, min(self.args.workers, len(todo)))
        start = time.perf_counter()
        if todo:
            log(f"{stage}: {len(todo)} of {len(units)} units to train, {workers} at a time")
        if workers == 1:
            for key, payload in todo:
                self.clock.check(self.unit_estimate(stage, estimate), f"{stage} unit {key}")
                res = fn({**payload, "data": self.data, "device": str(self.device)})
                self.r.save_unit(stage, key, res)
                log(f"{stage} {key}: test {res['test']:.4f} in {res['seconds']:.1f} s")
        else:

            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_pool_init, initargs=(self.spec, str(self.device), self.s["threads"])) as pool:
                pending, queue = [], list(todo)
                stopped = None
                while queue or pending:
                    while queue and len(pending) < workers and stopped is None:
                        key, payload = queue[0]
                        try:
                            # Concurrent units share the device: each takes about `workers` times longer.
                            self.clock.check(self.unit_estimate(stage, estimate) * (1 + 0.5 * (workers - 1)),
                                             f"{stage} unit {key}")
                        except OutOfTime as exc:
                            stopped = exc
                            break
                        queue.pop(0)
                        pending.append((key, pool.apply_async(fn, ({**payload, "device": str(self.device)},))))
                    if stopped is not None and not pending:
                        break
                    time.sleep(0.2)
                    for key, job in [kj for kj in pending if kj[1].ready()]:
                        pending.remove((key, job))
                        res = job.get()
                        self.r.save_unit(stage, key, res)
                        log(f"{stage} {key}: test {res['test']:.4f} in {res['seconds']:.1f} s")
                if stopped is not None:
                    raise stopped
        done = {k: self.r.unit(stage, k) for k, _ in units}
        wall = time.perf_counter() - start
        return {"units": done, "workers": workers, "wall_s": round(wall, 1),
                "unit_s_sum": round(sum(done[k]["seconds"] for k, _ in todo), 1) if todo else None}


def _named(table: dict, *stages: str) -> list[str]:
    """The keys of ``table`` that are one of ``stages`` or a per-model stage of one (``search/vgg16/0.1``)."""
    return [k for k in table if k in stages or k.split("/")[0] in stages and "/" in k]


_WORKER = {}


def _pool_init(spec, device, threads):
    if threads:
        torch.set_num_threads(threads)
    _WORKER["data"] = load(spec, device)


def worker_data(p: dict):
    """The data of a unit: handed over in-process, else the pool worker's own load."""
    return p.get("data") or _WORKER["data"]


def _retrain_unit(p: dict) -> dict:
    """Build ``p['arch']`` freshly initialised, train it from scratch, and measure test accuracy."""

    data = worker_data(p)
    device = torch.device(p["device"])
    config = TrainConfig.from_dict(p["config"])
    torch.manual_seed(config.seed)
    model = build(p["arch"]).to(device)
    start = time.perf_counter()
    hist = train(model, data, config, device=device, progress=False)
    sync(device)
    seconds = time.perf_counter() - start
    res = {"test": test_acc(model, data, device, p["test_limit"]), "val": split_accuracy(model, data, "val", device=device),
           "seconds": round(seconds, 2), "img_per_s": hist["img_per_s"], "seed": config.seed}
    del model
    free(device)
    return res
