"""The results file, the clock, the log, the environment record and the data every stage shares."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from autoprune.data import load_data
from autoprune.files import write_json
from autoprune.profile import device_name
from autoprune.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]  # the repository


class OutOfTime(Exception):
    """The next unit would not fit in --budget-minutes."""


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
        self.data["stages"][stage] = {**result, "finished_at": now(), "run_id": self.run_id}
        self.data["partial"].pop(stage, None)
        self.save()

    def unit(self, stage: str, key: str):
        return self.data["partial"].get(stage, {}).get(key)

    def save_unit(self, stage: str, key: str, value: dict) -> None:
        self.data["partial"].setdefault(stage, {})[key] = {**value, "finished_at": now(), "run_id": self.run_id}
        self.save()


def now() -> str:
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


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    return {"git_commit": _git_commit(), "date": now(), "python": platform.python_version(),
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


def train_config(settings: dict, seed: int = 0):
    t = settings["train"]
    return TrainConfig(epochs=t["epochs"], batch_size=t["batch_size"], lr=t["lr"], seed=seed, max_steps=t["max_steps"])


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device) -> None:
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
