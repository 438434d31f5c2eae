"""The proof run: every performance claim of autoprune measured in one resumable command.

    python experiments/proof.py --out runs/proof --data-dir .data/cifar10-jpg.tar.gz       # one GPU
    python experiments/proof.py --out runs/proof --data-dir D --part 1 --budget-minutes 8  # in two sittings
    python experiments/proof.py --out runs/proof --data-dir D --part 2 --budget-minutes 8
    python experiments/proof.py --out runs/proof --data-dir D --part 3 --budget-minutes 8
    python experiments/proof.py --out runs/proof-smoke --smoke                               # CPU, minutes

Stages, in order; each writes its result into OUT/results.json (atomically) when it finishes
and is skipped when its result is already there, so running the same command again continues
where a time limit or a kill stopped the previous one. Long stages save each finished unit (a
search method, a retrained vector and seed) as they go.

part 1
  throughput  training-step img/s of VGG16 and ResNet-56: the fast path (resident uint8 data,
              batched augmentation, bf16 + channels_last on CUDA) vs a per-sample torchvision
              DataLoader, in the same run (experiments/bench_train.py's functions)
  base        VGG16 on CIFAR-10, 25 epochs (TrainConfig defaults: batch 512, lr 0.2 onecycle,
              label smoothing 0.1); test accuracy; checkpoint in OUT/base/model.pt
  search      budgets 0.4 and 0.1: abc, tpe, random (equal candidate counts), uniform,
              uniform-fill, l1-global, slimming, dmcp, each through autoprune.api.search on the
              base; then candidates/min with 1, 2, 4 scorer processes sharing one study (a
              journal file), with the GPU utilisation sampled meanwhile
  sweep       evaluator settings (fine-tune steps, BN batches, cudnn.benchmark): seconds per
              candidate and the proxy score of each of the tau stage's vectors under each
  tau         Kendall tau between the proxy score and 25-epoch from-scratch test accuracy over
              12 random equal-MACs vectors at budget 0.1, for each sweep setting; on CUDA several
              retrains at once in a small process pool (--workers)
part 2
  retrain     every winner and baseline from scratch (autoprune.arch.build), 25 epochs, 2
              seeds, in the same pool
  latency     built models: GPU batch 256 and 1 (CUDA), CPU batch 1 and 32, median of repeats,
              relative to the base
part 3 (needs parts 1 and 2; the classic pruning criteria)
  criteria    every keep rule (l1, bn_gamma, random, hrank, activation, apoz, reconstruct)
              scores the tau stage's 12 vectors with the search-default evaluator on the base:
              Kendall tau against the tau stage's from-scratch accuracies (no new training, only
              the data-driven rules' statistics on 256 training images), seconds per candidate
  producers   the one-shot producers hrank, activation and ssl at budgets 0.4 and 0.1 through
              autoprune.api.search, each winner retrained from scratch like the retrain stage
              (25 epochs, the same seeds), beside its uniform, slimming, l1-global and best
              searched rows

Finally OUT/proof.md: markdown tables with the aims beside the measured values.

Time on one H200, measured (BENCHMARKS.md): throughput 33 s, base 21 s, search ~2 min
(16 searches and the concurrency runs), sweep 28 s, tau ~2 min (12 runs of 25 epochs, 3 at a
time), retrain ~6 min (32 runs), latency under 10 s: about 12 minutes, so one sitting of 10
minutes does not hold it. ``--part 1`` (about 5.5 minutes) and ``--part 2`` (about 6.5) split
it into two sittings.
Part 3 is estimated, not yet measured: criteria ~1.5 minutes (7 rules x 12 candidates at the
sweep's ~0.7 s, plus the rules' statistics), producers ~2.5 minutes (6 one-shot searches, ssl's
7 sparsity trainings of 100 steps each, at most 12 retrains 3 at a time at the tau stage's pace),
plus loading the data on a fresh machine: ``--part 3`` in about 5 minutes. A results file carried
to a machine without OUT/base/model.pt (experiments/results/proof-h200.json copied to
OUT/results.json) resumes into part 3: the base is trained again first (~20 s), and the report
says so.
``--budget-minutes`` stops cleanly before a stage or unit that its estimate says would not
fit; ``--part 1``, ``--part 2`` and ``--part 3`` split the run in three sittings.

``--smoke`` runs the same code with tiny settings: ResNet-20 on the synthetic dataset
(16 x 16 images), a few steps everywhere, on the CPU; with ``--data-dir`` it uses 2,000
training, 500 validation and 1,000 test images of the real CIFAR-10 instead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import torch
import torchvision
from scipy.stats import kendalltau

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_search import latency_ms, test_acc  # noqa: E402
from bench_train import bench_conventional, bench_fast  # noqa: E402

from autoprune import cost  # noqa: E402
from autoprune.api import StudyConfig, search  # noqa: E402
from autoprune.arch import build, load_arch, make_arch  # noqa: E402
from autoprune.budget import parse_budget, repair  # noqa: E402
from autoprune.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from autoprune.data import load_data  # noqa: E402
from autoprune.evaluator import EvalConfig, Evaluator  # noqa: E402
from autoprune.files import write_json, write_text  # noqa: E402
from autoprune.models import create_model, model_kwargs  # noqa: E402
from autoprune.profile import device_name  # noqa: E402
from autoprune.space import SearchSpace  # noqa: E402
from autoprune.study import open_storage  # noqa: E402
from autoprune.train import TrainConfig, split_accuracy, train  # noqa: E402

# The tau stage needs only the sweep: it closes part 1 so that parts 1 and 2 each fit one sitting.
PART1 = ("throughput", "base", "search", "sweep", "tau")
PART2 = ("retrain", "latency")
PART3 = ("criteria", "producers")
PARTS = {None: PART1 + PART2 + PART3, 1: PART1, 2: PART2, 3: PART3}  # --part: the stages it runs
SEARCHED = ("abc", "tpe", "random")  # the methods that search, with an equal candidate count
ONE_SHOT = ("uniform", "uniform-fill", "l1-global", "slimming", "dmcp")

FULL = {
    "model": "vgg16", "throughput_models": ["vgg16", "resnet56"],
    "data": {"name": "cifar10", "val_size": 5000, "limit": None, "options": {}}, "test_limit": None,
    "threads": None,
    "throughput": {"batch_size": 512, "warmup": 10, "steps": 30, "repeats": 3, "loader_workers": 8},
    "train": {"epochs": 25, "batch_size": 512, "lr": 0.2, "max_steps": None},
    "budgets": ["0.4", "0.1"], "candidates": 12,
    "eval": {"fine_tune_steps": None, "bn_batches": None, "batch_size": None},  # EvalConfig's GPU defaults
    "search_cudnn_benchmark": False,
    "dmcp": {"steps": 300, "batch_size": 256},
    "concurrency": {"workers": [1, 2, 4], "candidates_per_worker": 4, "budget": "0.1", "method": "random"},
    "sweep": [{"fine_tune_steps": 0, "bn_batches": 40, "cudnn_benchmark": False},
              {"fine_tune_steps": 25, "bn_batches": 40, "cudnn_benchmark": False},
              {"fine_tune_steps": 50, "bn_batches": 40, "cudnn_benchmark": False},
              {"fine_tune_steps": 50, "bn_batches": 10, "cudnn_benchmark": False},
              {"fine_tune_steps": 100, "bn_batches": 40, "cudnn_benchmark": False},
              # Autotuning every new shape costs seconds per candidate: timed on 4 vectors only.
              {"fine_tune_steps": 100, "bn_batches": 40, "cudnn_benchmark": True, "vectors": 4}],
    "seeds": [0, 1],
    "tau": {"budget": "0.1", "vectors": 12},
    "latency": {"gpu_batches": [256, 1], "cpu_batches": [1, 32], "gpu_reps": 20, "cpu_reps": 7},
}

SMOKE = {
    **FULL,
    "model": "resnet20", "throughput_models": ["resnet20"],
    "data": {"name": "synthetic", "val_size": 256, "limit": None, "options": {"image_size": 16}},
    "threads": 1,
    "throughput": {"batch_size": 32, "warmup": 1, "steps": 2, "repeats": 1, "loader_workers": 0},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "max_steps": 4},
    "candidates": 2,
    "eval": {"fine_tune_steps": 2, "bn_batches": 2, "batch_size": 32},
    "dmcp": {"steps": 2, "batch_size": 32},
    "concurrency": {"workers": [2], "candidates_per_worker": 2, "budget": "0.1", "method": "random"},
    "sweep": [{"fine_tune_steps": 0, "bn_batches": 2, "cudnn_benchmark": False},
              {"fine_tune_steps": 2, "bn_batches": 2, "cudnn_benchmark": False},
              {"fine_tune_steps": 2, "bn_batches": 2, "cudnn_benchmark": True, "vectors": 2}],
    "tau": {"budget": "0.1", "vectors": 4},
    "latency": {"gpu_batches": [256, 1], "cpu_batches": [1, 8], "gpu_reps": 5, "cpu_reps": 3},
}

# Part 3's settings live apart from FULL / SMOKE and are stored under "settings_part3", not
# "settings": results files written before part 3 existed (experiments/results/proof-h200.json)
# hold FULL's keys only, and main() refuses a file whose stored settings differ, so part 3's keys
# in FULL would make every such file unresumable. Each dict is checked on its own: "settings"
# always, "settings_part3" when part 3 may run and a run has stored it (an old file gains it on
# its first run that may reach part 3; --part 1 and --part 2 never write it).
PART3_FULL = {
    "criteria": {"rules": ["l1", "bn_gamma", "random", "hrank", "activation", "apoz", "reconstruct"]},
    "producers": {"budgets": ["0.4", "0.1"], "methods": ["hrank", "activation", "ssl"],
                  "options": {"ssl": {"steps": 100, "batch_size": 64, "bisections": 6}}},
}

PART3_SMOKE = {
    **PART3_FULL,
    # One budget keeps the smoke run (and its test) short; the loop over budgets is the same code.
    "producers": {**PART3_FULL["producers"], "budgets": ["0.1"],
                  "options": {"ssl": {"steps": 2, "batch_size": 32, "bisections": 1}}},
}

AIMS = {"fast_img_s": 60000, "base_acc": 0.88, "cand_per_min": 50, "cand_per_min_fast": 100, "tau": 0.5,
        "winner_pp": 0.5}


class OutOfTime(Exception):
    """The next unit would not fit in --budget-minutes."""


# --------------------------------------------------------------------------------------------
# The results file and the clock.
# --------------------------------------------------------------------------------------------


def _clean(obj):
    """JSON-safe: NaN and infinities become None, tuples lists, numpy scalars Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


class Results:
    """OUT/results.json: ``meta``, ``settings``, finished ``stages`` and ``partial`` units."""

    def __init__(self, path: Path, run_id: str):
        self.path = path
        self.run_id = run_id
        self.data = json.loads(path.read_text()) if path.is_file() else {"stages": {}, "partial": {}}
        self.data.setdefault("stages", {})
        self.data.setdefault("partial", {})

    def save(self) -> None:
        write_json(_clean(self.data), self.path)

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def stage(self, stage: str):
        return self.data["stages"].get(stage)

    def finish(self, stage: str, result: dict) -> None:
        self.data["stages"][stage] = {**result, "finished_at": _now(), "run_id": self.run_id}
        self.data["partial"].pop(stage, None)
        self.save()

    def unit(self, stage: str, key: str):
        return self.data["partial"].get(stage, {}).get(key)

    def save_unit(self, stage: str, key: str, value: dict) -> None:
        self.data["partial"].setdefault(stage, {})[key] = {**value, "finished_at": _now(), "run_id": self.run_id}
        self.save()


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


class Clock:
    """The --budget-minutes deadline: ``check(estimate_s, what)`` raises OutOfTime when it would not fit."""

    def __init__(self, minutes: float | None):
        self.start = time.monotonic()
        self.deadline = None if minutes is None else self.start + 60 * minutes

    def check(self, estimate_s: float, what: str) -> None:
        if self.deadline is not None and time.monotonic() + estimate_s > self.deadline:
            left = self.deadline - time.monotonic()
            raise OutOfTime(f"{what} (estimated {estimate_s:.0f} s) does not fit in the {max(left, 0):.0f} s left")


def log(msg: str) -> None:
    print(f"[proof {datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Environment, data, models.
# --------------------------------------------------------------------------------------------


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE.parent, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE.parent,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:

    return {"git_commit": _git_commit(), "date": _now(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu": device_name(torch.device("cpu")), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "os": platform.system()}


def data_spec(settings: dict, data_dir) -> dict:
    return {**settings["data"], "data_dir": None if data_dir is None else str(data_dir), "seed": 0}


def load(spec: dict, device):

    return load_data(spec["name"], spec["data_dir"], val_size=spec["val_size"], seed=spec["seed"], device=device,
                     limit=spec["limit"], **spec["options"])


def _train_config(settings: dict, seed: int = 0):

    t = settings["train"]
    return TrainConfig(epochs=t["epochs"], batch_size=t["batch_size"], lr=t["lr"], seed=seed, max_steps=t["max_steps"])


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


class UtilSampler:
    """Mean GPU utilisation (%) while the ``with`` block runs; None on the CPU or without NVML/nvidia-smi."""

    def __init__(self, device: torch.device, every: float = 0.5):
        self.device, self.every, self.samples = device, every, []
        self._stop = threading.Event()
        self._thread = None

    def read(self):
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # noqa: BLE001 — pynvml missing or no permission: try nvidia-smi
            pass
        try:
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible:
                index = visible.split(",")[index].strip()
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", str(index)], capture_output=True, text=True, timeout=5)
            return float(out.stdout.split()[0]) if out.returncode == 0 else None
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _loop(self):
        while not self._stop.wait(self.every):
            v = self.read()
            if v is None:
                return
            self.samples.append(v)

    def __enter__(self):
        if self.device.type == "cuda":
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def mean(self):
        return round(statistics.mean(self.samples), 1) if self.samples else None


# --------------------------------------------------------------------------------------------
# The run: shared state of one invocation.
# --------------------------------------------------------------------------------------------


class Proof:
    def __init__(self, args, settings: dict, results: Results, clock: Clock, part3: dict | None = None):
        self.args, self.s, self.r, self.clock = args, settings, results, clock
        self.s3 = part3 if part3 is not None else PART3_SMOKE if args.smoke else PART3_FULL
        self.out = Path(args.out)
        self.device = torch.device(args.device)
        self.spec = data_spec(settings, args.data_dir)
        self._data = None
        self._space = None

    # -- lazily built shared objects --------------------------------------------------------
    @property
    def data(self):
        if self._data is None:
            t = time.perf_counter()
            self._data = load(self.spec, self.device)
            log(f"data '{self.spec['name']}' loaded in {time.perf_counter() - t:.1f} s: {self._data.meta['sizes']}")
        return self._data

    @property
    def kwargs(self) -> dict:

        return model_kwargs(self.s["model"], num_classes=self.data.num_classes)

    @property
    def base_path(self) -> Path:
        return self.out / "base" / "model.pt"

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
        base = self.r.stage("base")
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
        done = (self.r.data["partial"].get("search") or {}) | {
            f"{r['budget']}/{r['method']}": r for r in ((self.r.stage("search") or {}).get("rows") or [])}
        rates = [u["search_s"] / u["candidates"] for u in done.values()
                 if u.get("candidates") and u.get("method") in SEARCHED and u.get("search_s")]
        if rates:
            return statistics.median(rates)

        c = EvalConfig.for_device(self.device, **self.s["eval"])
        imgs = 3 * c.fine_tune_steps * c.batch_size + c.bn_batches * c.batch_size + len(self.data.val_y)
        return imgs / (2 * self.train_rate()) + (0.5 if self.device.type == "cuda" else 0.2)

    def unit_estimate(self, stage: str) -> float:
        """Seconds per retrain unit: median of finished ones (any retrain stage), else from the rate."""
        done = []
        for st in ("retrain", "tau"):
            done += [u["seconds"] for u in (self.r.data["partial"].get(st) or {}).values() if "seconds" in u]
            done += [u["seconds"] for u in ((self.r.stage(st) or {}).get("units") or {}).values() if "seconds" in u]
        return statistics.median(done) if done else self.train_estimate(speedup=2.0)

    # -- the retrain runner, sequential or a spawn pool --------------------------------------
    def run_units(self, stage: str, units: list[tuple[str, dict]]) -> dict:
        """Train every (key, payload) not yet saved; each result is saved as it arrives."""
        todo = [(k, p) for k, p in units if self.r.unit(stage, k) is None]
        workers = max(1, min(self.args.workers, len(todo)))
        start = time.perf_counter()
        if todo:
            log(f"{stage}: {len(todo)} of {len(units)} units to train, {workers} at a time")
        if workers == 1:
            for key, payload in todo:
                self.clock.check(self.unit_estimate(stage), f"{stage} unit {key}")
                res = _retrain_unit({**payload, "data": self.data, "device": str(self.device)})
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
                            self.clock.check(self.unit_estimate(stage) * (1 + 0.5 * (workers - 1)), f"{stage} unit {key}")
                        except OutOfTime as exc:
                            stopped = exc
                            break
                        queue.pop(0)
                        pending.append((key, pool.apply_async(_retrain_unit, ({**payload, "device": str(self.device)},))))
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


_WORKER = {}


def _pool_init(spec, device, threads):
    if threads:
        torch.set_num_threads(threads)
    _WORKER["data"] = load(spec, device)


def _retrain_unit(p: dict) -> dict:
    """Build ``p['arch']`` freshly initialised, train it from scratch, and measure test accuracy."""

    data = p.get("data") or _WORKER["data"]
    device = torch.device(p["device"])
    config = TrainConfig.from_dict(p["config"])
    torch.manual_seed(config.seed)
    model = build(p["arch"]).to(device)
    start = time.perf_counter()
    hist = train(model, data, config, device=device, progress=False)
    _sync(device)
    seconds = time.perf_counter() - start
    res = {"test": test_acc(model, data, device, p["test_limit"]), "val": split_accuracy(model, data, "val", device=device),
           "seconds": round(seconds, 2), "img_per_s": hist["img_per_s"], "seed": config.seed}
    del model
    _free(device)
    return res


def _search_worker(kw: dict, barrier, spec: dict, threads, cudnn_benchmark: bool):
    """One scorer process of the concurrency measurement: set up, wait for the others, search."""

    try:
        if threads:
            torch.set_num_threads(threads)
        device = torch.device(kw["device"])
        data = load(spec, device)
        if device.type == "cuda":
            torch.zeros(1, device=device)  # the CUDA context, before the clock starts
            torch.backends.cudnn.benchmark = cudnn_benchmark
    except BaseException:
        barrier.abort()  # the parent and the other workers stop waiting at once
        raise
    barrier.wait()
    search(data=data, **kw)


# --------------------------------------------------------------------------------------------
# Stages.
# --------------------------------------------------------------------------------------------


def stage_throughput(p: Proof) -> dict:
    t = p.s["throughput"]
    x, y = p.data.train_x.cpu(), p.data.train_y.cpu()
    workers = min(t["loader_workers"], os.cpu_count() or 1)
    args = SimpleNamespace(batch_size=t["batch_size"], warmup=t["warmup"], steps=t["steps"], repeats=t["repeats"],
                           workers=workers, data_only=False)
    rows = []
    for name in p.s["throughput_models"]:
        for pipe, fn in (("fast", bench_fast), ("conventional", bench_conventional)):
            est = 2 * (t["warmup"] + t["steps"] * t["repeats"]) * t["batch_size"] / (
                20000 if p.device.type == "cuda" else 200) + 5
            p.clock.check(est, f"throughput {name} {pipe}")
            rates = fn(name, x, y, p.device, args)
            rows.append({"model": name, "pipeline": pipe, "macs_ratio": 1.0, "img_per_s_median": statistics.median(rates),
                         "img_per_s": rates})
            log(f"throughput {name} {pipe}: {statistics.median(rates):,.0f} img/s")
            _free(p.device)
    return {"rows": rows, "batch_size": t["batch_size"], "steps": t["steps"], "repeats": t["repeats"],
            "loader_workers": workers, "images": len(y)}


def stage_base(p: Proof) -> dict:

    config = _train_config(p.s)
    model = create_model(p.s["model"], **p.kwargs)
    hist = None
    if p.base_path.is_file():  # trained by an invocation killed before it could record the result
        load_checkpoint(p.base_path, model)
        model = model.to(p.device)
    else:
        p.clock.check(p.train_estimate(), "base training")
        torch.manual_seed(config.seed)
        start = time.perf_counter()
        hist = train(model, p.data, config, device=p.device, out_dir=p.base_path.parent, progress=p.args.progress,
                     extra={"model_name": p.s["model"], "model_kwargs": p.kwargs})
        _sync(p.device)
        seconds = time.perf_counter() - start
        save_checkpoint(p.base_path, model, model_name=p.s["model"], model_kwargs=p.kwargs,
                        input_shape=list(p.data.input_shape), dataset=p.data.meta, config=asdict(config))
    res = {"model": p.s["model"], "macs_ratio": 1.0, "macs": cost.macs(p.space, p.space.max_widths()),
           "params": cost.params(p.space, p.space.max_widths()), "config": asdict(config),
           "test": test_acc(model, p.data, p.device, p.s["test_limit"]),
           "val": split_accuracy(model, p.data, "val", device=p.device), "checkpoint": "base/model.pt"}
    if hist is not None:
        res.update(train_s=round(seconds, 1), img_per_s=hist["img_per_s"], steps=hist["steps"])
    log(f"base: test {res['test']:.4f}")
    return res


def _search_kwargs(p: Proof, budget: str, method: str, *, trials: int | None = None, storage: str | None = None,
                   study: str | None = None, **extra) -> dict:
    e = p.s["eval"]
    trials = trials or (p.s["candidates"] if method in SEARCHED else 1)
    kw = dict(model=p.s["model"], budget=budget, method=method, base=str(p.base_path), seed=0, device=str(p.device),
              evaluation=EvalConfig(fine_tune_steps=e["fine_tune_steps"], bn_batches=e["bn_batches"],
                                    batch_size=e["batch_size"]),
              study=StudyConfig(trials=trials, storage=storage, name=study), progress=p.args.progress)
    if method == "dmcp":
        kw["method_options"] = dict(p.s["dmcp"])
    kw.update(extra)
    return kw


def search_unit(p: Proof, stage: str, key: str, budget: str, method: str, folder: str, **extra) -> dict:
    """One ``autoprune.api.search`` on the base into ``OUT/folder``: its row, saved as unit ``key``
    of ``stage`` (read back when saved already). A failing method's row holds ``error``."""
    row = p.r.unit(stage, key)
    if row is not None:
        return row
    n = p.s["candidates"] if method in SEARCHED else 1
    est = n * p.candidate_estimate() + 3
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
    _sync(p.device)
    start = time.perf_counter()
    try:
        with UtilSampler(p.device) as util:
            res = search(data=p.data, **kw)
            _sync(p.device)
    except Exception as exc:  # noqa: BLE001 — one broken method must not stop the proof
        row = {"budget": budget, "method": method, "error": f"{type(exc).__name__}: {exc}"[:500]}
        p.r.save_unit(stage, key, row)
        log(f"{stage} {key} FAILED: {row['error']}")
        _free(p.device)
        return row
    wall = time.perf_counter() - start
    s = res.summary()
    row = {"budget": budget, "method": method, "macs_ratio": s["macs_ratio"], "params": s["params"],
           "params_ratio": s["params"] / s["params_base"], "val": s["score"], "widths": s["widths"],
           "candidates": s["candidates"], "failed": s["failed"], "scored_here": res.info["scored_here"],
           "search_s": round(wall, 2), "cand_per_min": round(res.info["scored_here"] / wall * 60, 2),
           "gpu_util": util.mean, "arch": str(Path(folder) / "arch.json")}
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
    return {"rows": rows, "concurrency": conc, "eval": _eval_settings(p),
            "cudnn_benchmark": p.s["search_cudnn_benchmark"], "candidates": p.s["candidates"]}


def _eval_settings(p: Proof) -> dict:

    return EvalConfig.for_device(p.device, **p.s["eval"]).to_dict()


def storage_url(folder: Path) -> str:
    """A journal file in ``folder``: the storage several processes share."""
    return f"journal:{folder / 'study.journal'}"


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


def tau_vectors(p: Proof) -> list[tuple[int, ...]]:
    """``tau.vectors`` distinct random grid points repaired onto the tau budget (seeded)."""

    max_macs = p.max_macs(p.s["tau"]["budget"])
    rng = np.random.default_rng(1)
    vectors, seen = [], set()
    for _ in range(1000 * p.s["tau"]["vectors"]):
        if len(vectors) == p.s["tau"]["vectors"]:
            break
        w = repair(p.space, p.space.sample(rng), max_macs, rng=rng)
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
                _sync(p.device)
                t = time.perf_counter()
                res = ev(w)
                _sync(p.device)
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


def _unit_payload(p: Proof, widths, seed: int, budget=None, method=None) -> dict:

    arch = make_arch(p.s["model"], p.kwargs, p.space, widths, method=method)
    return {"arch": arch, "config": asdict(_train_config(p.s, seed)), "test_limit": p.s["test_limit"]}


def ok_rows(rows: list[dict]) -> list[dict]:
    """Search rows of the methods that produced a winner (a failed method's row holds ``error``)."""
    return [r for r in rows if not r.get("error")]


def _wkey(widths) -> str:
    return "-".join(str(int(w)) for w in widths)


def stage_retrain(p: Proof) -> dict:
    rows = ok_rows(p.r.stage("search")["rows"])
    units = {}
    for row in rows:
        for seed in p.s["seeds"]:
            # Methods that found the same vector share its retrains.
            units.setdefault(f"{_wkey(row['widths'])}/s{seed}", _unit_payload(p, row["widths"], seed))
    run = p.run_units("retrain", list(units.items()))
    out = []
    for row in rows:
        tests = [run["units"][f"{_wkey(row['widths'])}/s{seed}"]["test"] for seed in p.s["seeds"]]
        out.append({"budget": row["budget"], "method": row["method"], "macs_ratio": row["macs_ratio"],
                    "params": row["params"], "widths": row["widths"], "val": row["val"], "tests": tests,
                    "test_mean": statistics.mean(tests)})
    return {"rows": out, "units": run["units"], "workers": run["workers"], "wall_s": run["wall_s"],
            "unit_s_sum": run["unit_s_sum"], "epochs": p.s["train"]["epochs"], "seeds": p.s["seeds"]}


def stage_tau(p: Proof) -> dict:

    sweep = p.r.stage("sweep")
    vectors = [tuple(w) for w in sweep["vectors"]]
    units = [(f"{_wkey(w)}/s0", _unit_payload(p, w, 0)) for w in vectors]
    run = p.run_units("tau", units)
    scratch = [run["units"][k]["test"] for k, _ in units]
    default = _eval_settings(p)
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


def stage_latency(p: Proof) -> dict:

    lat = p.s["latency"]
    shape = tuple(p.data.input_shape)
    cpu = torch.device("cpu")
    rows = [{"budget": "1.0", "method": "base", "macs_ratio": 1.0, "arch": None}]
    rows += [{"budget": r["budget"], "method": r["method"], "macs_ratio": r["macs_ratio"], "arch": r["arch"]}
             for r in ok_rows(p.r.stage("search")["rows"])]
    out = []
    for row in rows:
        key = f"{row['budget']}/{row['method']}"
        res = p.r.unit("latency", key)
        if res is None:
            p.clock.check(5 if p.device.type == "cuda" else 2, f"latency {key}")
            model = create_model(p.s["model"], **p.kwargs) if row["arch"] is None else build(load_arch(p.out / row["arch"]))
            res = {"budget": row["budget"], "method": row["method"], "macs_ratio": row["macs_ratio"]}
            if p.device.type == "cuda":
                for b in lat["gpu_batches"]:
                    res[f"gpu_b{b}_ms"] = latency_ms(model, shape, b, p.device, reps=lat["gpu_reps"])
            for b in lat["cpu_batches"]:
                res[f"cpu_b{b}_ms"] = latency_ms(model, shape, b, cpu, reps=lat["cpu_reps"])
            del model
            _free(p.device)
            p.r.save_unit("latency", key, res)
        out.append(res)
    base = out[0]
    for res in out:
        for k in [k for k in res if k.endswith("_ms")]:
            res[k.replace("_ms", "_ratio")] = res[k] / base[k]
    return {"rows": out, "gpu_batches": lat["gpu_batches"] if p.device.type == "cuda" else [],
            "cpu_batches": lat["cpu_batches"]}


def ensure_base(p: Proof) -> None:
    """Part 3 where part 1's checkpoint is missing (a results file carried to a fresh machine):
    train the base again with the same settings, and record that in ``meta.base_retrained``."""
    if p.base_path.is_file():
        return
    log(f"{p.base_path} is missing: training the base again for part 3")
    res = stage_base(p)
    p.r.data["meta"].setdefault("base_retrained", []).append(
        {"test": res["test"], "val": res["val"], "train_s": res.get("train_s"), "at": _now(), "run_id": p.r.run_id})
    p.r.save()


def _kendall(proxy: list, scratch: list) -> tuple[float | None, float | None]:
    """Kendall τ and its p-value over the pairs whose proxy score exists (None when undefined)."""
    ok = [(a, b) for a, b in zip(proxy, scratch) if a is not None]
    if len(ok) < 2:
        return None, None
    stat = kendalltau([a for a, _ in ok], [b for _, b in ok])
    return (float(stat.statistic), float(stat.pvalue)) if math.isfinite(stat.statistic) else (None, None)


def criteria_unit(p: Proof, rule: str, base, vectors: list, scratch: list) -> dict:
    """The tau stage's vectors scored by the search-default evaluator keeping channels by ``rule``."""
    config = EvalConfig.for_device(p.device, **p.s["eval"], keep=rule)
    _sync(p.device)
    start = time.perf_counter()
    # No score cache: setup_s is what the rule's statistics cost on this base, every time.
    ev = Evaluator(base, p.space, p.data, config=config, device=p.device)
    _sync(p.device)
    setup = time.perf_counter() - start
    proxy, seconds = [], []
    for w in vectors:
        _sync(p.device)
        t = time.perf_counter()
        res = ev(w)
        _sync(p.device)
        seconds.append(time.perf_counter() - t)
        proxy.append(res.score)
    tau, pvalue = _kendall(proxy, scratch)
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
            log(f"criteria {rule}: tau {_f(row['tau'], '{:+.3f}')}, {row['s_per_candidate']:.2f} s/candidate, "
                f"statistics {row['setup_s']:.1f} s")
            _free(p.device)
        rows.append(row)
    return {"rows": rows, "budget": tau["budget"], "vectors": tau["vectors"], "scratch": scratch,
            "epochs": tau["epochs"], "eval": _eval_settings(p), "cudnn_benchmark": p.s["search_cudnn_benchmark"]}


def _retrain_row(row: dict, tests: list[float], label: str | None = None) -> dict:
    return {"budget": row["budget"], "method": label or row["method"], "macs_ratio": row["macs_ratio"],
            "params": row["params"], "widths": row["widths"], "val": row["val"], "tests": tests,
            "test_mean": statistics.mean(tests)}


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
            key = f"{_wkey(row['widths'])}/s{seed}"
            if key not in trained:
                units.setdefault(f"retrain/{key}", _unit_payload(p, row["widths"], seed))
    run = p.run_units("producers", list(units.items()))
    tests = {k: u["test"] for k, u in trained.items()} | {k[len("retrain/"):]: u["test"] for k, u in run["units"].items()}
    rows = []
    for b in pr["budgets"]:
        rows += compared_rows(p, b)
        rows += [r if r.get("error") else _retrain_row(r, [tests[f"{_wkey(r['widths'])}/s{seed}"] for seed in p.s["seeds"]])
                 for r in found if r["budget"] == b]
    return {"rows": rows, "search": found, "units": run["units"], "workers": run["workers"], "wall_s": run["wall_s"],
            "unit_s_sum": run["unit_s_sum"], "epochs": p.s["train"]["epochs"], "seeds": p.s["seeds"]}


STAGES = {"throughput": stage_throughput, "base": stage_base, "search": stage_search, "sweep": stage_sweep,
          "retrain": stage_retrain, "tau": stage_tau, "latency": stage_latency, "criteria": stage_criteria,
          "producers": stage_producers}


# --------------------------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------------------------


def _f(v, fmt="{:.4f}"):
    return "-" if v is None else fmt.format(v)


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _met(ok) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def search_lines(st: dict, aims: list) -> list[str]:
    """The search section's lines; its aims rows are appended to ``aims``."""
    if "search" not in st:
        return []
    lines = []
    s = st["search"]
    lines += ["## Search", "", f"Evaluator: {s['eval']}, cudnn.benchmark {s['cudnn_benchmark']}.", ""]
    table = [[r["budget"], r["method"], "-", f"failed: {r['error'][:120]}", "-", "-", "-", "-", "-"] if r.get("error")
             else [r["budget"], r["method"], f"{r['macs_ratio']:.3f}", f"{r['params'] / 1e6:.3f}M", _f(r["val"]),
                   r["candidates"], r["search_s"], r["cand_per_min"], _f(r.get("gpu_util"), "{:.0f}")]
             for r in s["rows"]]
    lines += _table(["budget", "method", "MACs ratio", "params", "val score", "candidates", "search s",
                     "cand/min", "GPU util %"], table) + [""]
    lines += ["Scorer processes sharing one study (one journal file or SQLite database) on one device:", ""]
    lines += _table(["workers", "budget", "method", "MACs ratio (mean)", "candidates", "s", "cand/min",
                     "GPU util %", "aim"],
                    [[c["workers"], "-", "-", "-", f"failed: {c['error'][:120]}", "-", "-", "-", "-"]
                     if c.get("error") else
                     [c["workers"], c["budget"], c["method"], f"{c['macs_ratio']:.3f}", c["candidates"], c["seconds"],
                      c["cand_per_min"], _f(c.get("gpu_util"), "{:.0f}"), f"≥ {AIMS['cand_per_min']}"]
                     for c in s["concurrency"]]) + [""]
    best = max([r["cand_per_min"] for r in ok_rows(s["rows"]) if r["method"] in SEARCHED]
               + [c["cand_per_min"] for c in ok_rows(s["concurrency"])], default=None)
    aims.append([f"{st.get('base', {}).get('model', '')} candidates/min (search, one device)",
                 ", ".join(dict.fromkeys(r["budget"] for r in s["rows"])), f"≥ {AIMS['cand_per_min']}",
                 _f(best, "{:.1f}"), _met(None if best is None else best >= AIMS["cand_per_min"])])
    return lines


def retrain_lines(st: dict, aims: list) -> list[str]:
    """The retrain section's lines; its aims rows are appended to ``aims``."""
    if "retrain" not in st:
        return []
    lines = []
    r = st["retrain"]
    lines += ["## Retrained from scratch", "", f"{r['epochs']} epochs, seeds {r['seeds']}, {r['workers']} at a "
              f"time: {r['wall_s']} s wall" + (f" for {r['unit_s_sum']} s of unit time." if r["unit_s_sum"] else "."),
              ""]
    uni = {x["budget"]: x["test_mean"] for x in r["rows"] if x["method"] == "uniform"}
    table = []
    for x in r["rows"]:
        d = (x["test_mean"] - uni[x["budget"]]) * 100 if x["budget"] in uni else None
        table.append([x["budget"], x["method"], f"{x['macs_ratio']:.3f}", f"{x['params'] / 1e6:.3f}M", _f(x["val"]),
                      _f(x["test_mean"]), " / ".join(f"{t:.4f}" for t in x["tests"]), _f(d, "{:+.2f}")])
    lines += _table(["budget", "method", "MACs ratio", "params", "val score", "test acc (mean)", "per seed",
                     "vs uniform (pp)"], table) + [""]
    b = min(r["rows"], key=lambda x: float(x["budget"]))["budget"]
    searched = [x for x in r["rows"] if x["budget"] == b and x["method"] in SEARCHED + ("dmcp",)]
    if searched and b in uni:
        w = max(searched, key=lambda x: x["test_mean"])
        d = (w["test_mean"] - uni[b]) * 100
        aims.append([f"best searched winner ({w['method']}) vs uniform at budget {b}", f"{w['macs_ratio']:.3f}",
                     f"≥ +{AIMS['winner_pp']} pp", f"{d:+.2f} pp", _met(d >= AIMS["winner_pp"])])
    return lines


def tau_lines(st: dict, aims: list) -> list[str]:
    """The tau section's lines; its aims rows are appended to ``aims``."""
    if "tau" not in st:
        return []
    lines = []
    t = st["tau"]
    lines += ["## Evaluator fidelity", "", f"Kendall τ between the proxy score and {t['epochs']}-epoch "
              f"from-scratch test accuracy over {len(t['vectors'])} random vectors at budget {t['budget']} "
              f"(MACs ratio {t['macs_ratio_min']:.3f}-{t['macs_ratio_max']:.3f}).", ""]
    lines += _table(["FT steps", "BN batches", "cudnn.benchmark", "MACs ratio (mean)", "s/candidate", "cand/min", "τ",
                     "p", "τ per s", "search default", "aim"],
                    [[x["fine_tune_steps"], x["bn_batches"], x["cudnn_benchmark"], f"{x['macs_ratio']:.3f}",
                      f"{x['s_per_candidate']:.2f}", x["cand_per_min"], _f(x["tau"], "{:.2f}"), _f(x["p"], "{:.3f}"),
                      _f(x["tau_per_s"], "{:.3f}"), "yes" if x["search_default"] else "", f"τ ≥ {AIMS['tau']}"]
                     for x in t["settings"]]) + [""]
    aims.append([f"Kendall τ (search default scorer), budget {t['budget']}", f"{t['macs_ratio_max']:.3f}",
                 f"≥ {AIMS['tau']}", _f(t["tau"], "{:.2f}"), _met(None if t["tau"] is None else t["tau"] >= AIMS["tau"])])
    fast = [x for x in t["settings"] if x["tau"] is not None and x["tau"] >= AIMS["tau"]]
    best = max(fast, key=lambda x: x["cand_per_min"]) if fast else None
    aims.append([f"candidates/min of the fastest scorer with τ ≥ {AIMS['tau']} (evaluator alone)",
                 f"{t['macs_ratio_max']:.3f}", f"≥ {AIMS['cand_per_min_fast']}",
                 "-" if best is None else f"{best['cand_per_min']} (FT {best['fine_tune_steps']}, BN {best['bn_batches']})",
                 _met(None if best is None else best["cand_per_min"] >= AIMS["cand_per_min_fast"])])
    return lines


def report(results: dict) -> str:
    st, meta = results["stages"], results.get("meta", {})
    env = meta.get("environment", {})
    lines = [f"# autoprune proof run{' (smoke settings)' if meta.get('smoke') else ''}", "",
             f"{env.get('date')}, commit {env.get('git_commit')}, torch {env.get('torch')}, "
             f"{env.get('gpu') or 'no GPU'}, {env.get('cpu')} ({env.get('cpu_cores')} cores), "
             f"device {env.get('device')}. Every setting is in results.json.", ""]
    aims = []
    if "throughput" in st:
        rows = st["throughput"]["rows"]
        lines += ["## Training throughput", "", f"Batch {st['throughput']['batch_size']}, median of "
                  f"{st['throughput']['repeats']} windows of {st['throughput']['steps']} steps.", ""]
        table = []
        for r in rows:
            other = next((o for o in rows if o["model"] == r["model"] and o["pipeline"] != r["pipeline"]), None)
            ratio = r["img_per_s_median"] / other["img_per_s_median"] if other and r["pipeline"] == "fast" else None
            aim = f"≥ {AIMS['fast_img_s']:,}" if r["model"] == "vgg16" and r["pipeline"] == "fast" else "-"
            table.append([r["model"], r["pipeline"], f"{r['macs_ratio']:.3f}", f"{r['img_per_s_median']:,.0f}",
                          _f(ratio, "{:.2f}×"), aim])
            if r["model"] == "vgg16" and r["pipeline"] == "fast":
                aims.append(["VGG16 fast-path training", "1.000", f"≥ {AIMS['fast_img_s']:,} img/s",
                             f"{r['img_per_s_median']:,.0f} img/s", _met(r["img_per_s_median"] >= AIMS["fast_img_s"])])
        lines += _table(["model", "pipeline", "MACs ratio", "img/s", "fast / conventional", "aim"], table) + [""]
    if "base" in st:
        b = st["base"]
        lines += ["## Base model", ""] + _table(
            ["model", "MACs ratio", "params", "epochs", "test acc", "val acc", "train s", "aim"],
            [[b["model"], "1.000", f"{b['params'] / 1e6:.2f}M", b["config"]["epochs"], _f(b["test"]), _f(b["val"]),
              _f(b.get("train_s"), "{:.1f}"), f"≥ {AIMS['base_acc']:.2f}"]]) + [""]
        aims.append([f"{b['model']} base test acc, {b['config']['epochs']} epochs", "1.000", f"≥ {AIMS['base_acc']:.2f}",
                     _f(b["test"]), _met(b["test"] >= AIMS["base_acc"])])
    lines += search_lines(st, aims)
    if "sweep" in st and "tau" not in st:
        lines += ["## Evaluator settings (τ after the tau stage)", ""] + _table(
            ["FT steps", "BN batches", "cudnn.benchmark", "MACs ratio (mean)", "s/candidate", "cand/min"],
            [[r["fine_tune_steps"], r["bn_batches"], r["cudnn_benchmark"], f"{r['macs_ratio']:.3f}",
              f"{r['s_per_candidate']:.2f}", r["cand_per_min"]] for r in st["sweep"]["rows"]]) + [""]
    lines += retrain_lines(st, aims)
    lines += tau_lines(st, aims)
    if "latency" in st:
        L = st["latency"]
        cols = [f"gpu_b{b}" for b in L["gpu_batches"]] + [f"cpu_b{b}" for b in L["cpu_batches"]]
        base = L["rows"][0]
        head = ["budget", "method", "MACs ratio"] + [f"{c.replace('_b', ' batch ').upper().replace('BATCH', 'batch')} "
                                                     f"(base {base[c + '_ms']:.2f} ms)" for c in cols]
        lines += ["## Latency of the built models, relative to the base", "", "Median of repeats; GPU in bf16 "
                  "channels_last.", ""]
        lines += _table(head, [[x["budget"], x["method"], f"{x['macs_ratio']:.3f}"]
                               + [f"{x[c + '_ratio']:.2f}" for c in cols] for x in L["rows"]]) + [""]
    lines += criteria_lines(st) + producers_lines(st, meta)
    if aims:
        lines = lines[:4] + ["## Aims", ""] + _table(["claim", "MACs ratio", "aim", "measured", "met"], aims) + [""] + lines[4:]
    missing = [s for s in PART1 + PART2 + PART3 if s not in st]
    if missing:
        lines += [f"Not yet run: {', '.join(missing)}.", ""]
    return "\n".join(lines)


def criteria_lines(st: dict) -> list[str]:
    if "criteria" not in st:
        return []
    c = st["criteria"]
    lines = ["## Keep rules (which channels a candidate inherits)", "",
             f"Kendall τ between each rule's proxy score (evaluator: {c['eval']['bn_batches']} BN batches, "
             f"{c['eval']['fine_tune_steps']} fine-tune steps at batch {c['eval']['batch_size']}) and the tau stage's "
             f"{c['epochs']}-epoch from-scratch test accuracy over its {len(c['vectors'])} vectors at budget "
             f"{c['budget']}; statistics s: scoring the base once for the rule.", ""]
    return lines + _table(["rule", "MACs ratio (mean)", "τ", "p", "s/candidate", "statistics s", "mean proxy", "failed"],
                          [[f"`{x['rule']}`", f"{x['macs_ratio']:.3f}", _f(x["tau"], "{:+.2f}"), _f(x["p"], "{:.3f}"),
                            f"{x['s_per_candidate']:.2f}", f"{x['setup_s']:.1f}", _f(x["proxy_mean"]), x["failed"]]
                           for x in c["rows"]]) + [""]


def producers_lines(st: dict, meta: dict) -> list[str]:
    if "producers" not in st:
        return []
    pr = st["producers"]
    uni = {x["budget"]: x["test_mean"] for x in pr["rows"] if x["method"] == "uniform"}
    table = []
    for x in pr["rows"]:
        if x.get("error"):
            table.append([x["budget"], x["method"], "-", f"failed: {x['error'][:120]}", "-", "-", "-"])
            continue
        d = (x["test_mean"] - uni[x["budget"]]) * 100 if x["budget"] in uni else None
        table.append([x["budget"], x["method"], f"{x['macs_ratio']:.3f}", f"{x['params'] / 1e6:.3f}M",
                      _f(x["test_mean"]), " / ".join(f"{t:.4f}" for t in x["tests"]), _f(d, "{:+.2f}")])
    lines = ["## One-shot producers, retrained from scratch", "",
             f"hrank, activation and ssl widths from the search API on the base, {pr['epochs']} epochs from scratch, "
             f"seeds {pr['seeds']}, beside the retrain stage's rows.", ""]
    again = meta.get("base_retrained", [])
    lines += [f"The base checkpoint was missing and was trained again for part 3 (test acc {_f(b['test'])}, "
              f"run {b['run_id']}): the keep rules and these producers read that base." for b in again] + [""] * bool(again)
    return lines + _table(["budget", "method", "MACs ratio", "params", "test acc (mean)", "per seed", "vs uniform (pp)"],
                          table) + [""]


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (results.json, proof.md, checkpoints, studies)")
    p.add_argument("--smoke", action="store_true", help="tiny settings on the synthetic dataset, CPU")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="stop cleanly before a stage or unit whose estimate does not fit in this many minutes")
    p.add_argument("--part", type=int, choices=(1, 2, 3), default=None, help="1: throughput, base, search, sweep, "
                   "tau; 2: retrain, latency (needs part 1's results in OUT); 3: criteria, producers (needs parts 1 "
                   "and 2)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10: torchvision folder, ImageFolder folder or .tar.gz")
    p.add_argument("--device", default=None, help="cuda or cpu (default cuda when available; --smoke: cpu)")
    p.add_argument("--workers", type=int, default=None, help="concurrent retrain processes (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--progress", action="store_true", help="progress bars on stderr")
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if args.workers is None:
        args.workers = 3 if torch.device(args.device).type == "cuda" else 1
    return args


def open_results(args, out: Path, settings: dict, part3: dict, argv) -> Results | None:
    """OUT/results.json, checked against this invocation's settings and stamped with it (None: refused)."""
    results = Results(out / "results.json", uuid.uuid4().hex[:12])
    full = {**settings, "device": args.device}
    stored, stored3 = results.data.get("settings"), results.data.get("settings_part3")
    runs3 = args.part in (None, 3)
    if (stored is not None and stored != full) or (runs3 and stored3 is not None and stored3 != part3):
        print(f"proof: error: {out / 'results.json'} was written with other settings (smoke vs full, or another "
              "device); use another --out", file=sys.stderr)
        return None
    needs = {2: PART1, 3: PART1 + PART2}.get(args.part, ())
    if not all(results.done(s) for s in needs):
        print(f"proof: error: --part {args.part} needs part {' and '.join(str(i) for i in range(1, args.part))}'s "
              f"results in {out}; run --part {args.part - 1} first", file=sys.stderr)
        return None
    results.data["settings"] = full
    if runs3:  # written once part 3 may run, so that a part-1/2 file stays as it was
        results.data["settings_part3"] = part3
    results.data.setdefault("meta", {})
    results.data["meta"].update(smoke=args.smoke, environment=environment(torch.device(args.device)), aims=AIMS)
    results.data["meta"].setdefault("invocations", []).append(
        {"run_id": results.run_id, "started_at": _now(), "argv": sys.argv[1:] if argv is None else list(argv)})
    results.save()
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    clock = Clock(args.budget_minutes)
    settings = json.loads(json.dumps(SMOKE if args.smoke else FULL))
    part3 = json.loads(json.dumps(PART3_SMOKE if args.smoke else PART3_FULL))
    if args.smoke and args.data_dir is not None:
        # The smoke settings on a small seeded subset of real CIFAR-10: checks the real-data path.
        settings.update(data={"name": "cifar10", "val_size": 500, "limit": 2000, "options": {}}, test_limit=1000)
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Decoded datasets are cached inside OUT (unless AUTOPRUNE_CACHE says where): every process of
    # the run (scorers, retrain workers) then reads one file, even where the home folder is read-only.
    os.environ.setdefault("AUTOPRUNE_CACHE", str((out / "cache").resolve()))
    results = open_results(args, out, settings, part3, argv)
    if results is None:
        return 2
    stages = PARTS[args.part]
    proof = Proof(args, settings, results, clock, part3)
    # SIGTERM (a time limit, `timeout`) unwinds like Ctrl-C, so that child processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for name in stages:
            if results.done(name):
                log(f"{name}: done already (run {results.stage(name)['run_id']})")
                continue
            log(f"{name}: start")
            start = time.perf_counter()
            res = STAGES[name](proof)
            results.finish(name, {**res, "stage_s": round(time.perf_counter() - start, 1)})
            write_text(report(results.data), out / "proof.md")
            log(f"{name}: done in {time.perf_counter() - start:.1f} s")
    except OutOfTime as exc:
        write_text(report(results.data), out / "proof.md")
        log(f"stopping: {exc}")
        print(f"Stopped within --budget-minutes; results so far are in {out / 'results.json'}. "
              "resume with the same command", flush=True)
        return 0
    write_text(report(results.data), out / "proof.md")
    log(f"finished in {time.perf_counter() - clock.start:.1f} s: {out / 'proof.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
