"""Stage base: the base model trained once, and trained again for part 3 when its checkpoint is missing."""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import torch
from bench_search import test_acc

from autoprune import cost
from autoprune.checkpoint import load_checkpoint, save_checkpoint
from autoprune.models import create_model
from autoprune.train import split_accuracy, train

from .common import log, now, sync, train_config
from .runner import Proof


def stage_base(p: Proof) -> dict:
    config = train_config(p.s)
    if p.s.get("base_epochs"):  # a base trained longer than the retrains (the CPU study's)
        config = replace(config, epochs=p.s["base_epochs"])
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
        sync(p.device)
        seconds = time.perf_counter() - start
        save_checkpoint(p.base_path, model, model_name=p.s["model"], model_kwargs=p.kwargs,
                        input_shape=list(p.data.input_shape), dataset=p.data.meta, config=asdict(config))
    res = {"model": p.s["model"], "macs_ratio": 1.0, "macs": cost.macs(p.space, p.space.max_widths()),
           "params": cost.params(p.space, p.space.max_widths()), "config": asdict(config),
           "test": test_acc(model, p.data, p.device, p.s["test_limit"]),
           "val": split_accuracy(model, p.data, "val", device=p.device),
           "checkpoint": p.base_path.relative_to(p.out).as_posix()}
    if hist is not None:
        res.update(train_s=round(seconds, 1), img_per_s=hist["img_per_s"], steps=hist["steps"])
    log(f"base: test {res['test']:.4f}")
    return res


def ensure_base(p: Proof) -> None:
    """Part 3 where part 1's checkpoint is missing (a results file carried to a fresh machine):
    train the base again with the same settings, and record that in ``meta.base_retrained``."""
    if p.base_path.is_file():
        return
    log(f"{p.base_path} is missing: training the base again for part 3")
    res = stage_base(p)
    p.r.data["meta"].setdefault("base_retrained", []).append(
        {"test": res["test"], "val": res["val"], "train_s": res.get("train_s"), "at": now(), "run_id": p.r.run_id})
    p.r.save()
