"""Stage latency: the built models timed on the GPU and the CPU, relative to the base."""

from __future__ import annotations

import torch
from bench_search import latency_ms

from autoprune.arch import build, load_arch
from autoprune.models import create_model

from .common import free
from .retrain import ok_rows
from .runner import Proof


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
            free(p.device)
            p.r.save_unit("latency", key, res)
        out.append(res)
    base = out[0]
    for res in out:
        for k in [k for k in res if k.endswith("_ms")]:
            res[k.replace("_ms", "_ratio")] = res[k] / base[k]
    return {"rows": out, "gpu_batches": lat["gpu_batches"] if p.device.type == "cuda" else [],
            "cpu_batches": lat["cpu_batches"]}
