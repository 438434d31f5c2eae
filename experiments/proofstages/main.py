"""The command: options, the results file checked against the settings, and the loop over stages."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import torch

from autoprune.files import write_text

from .base import stage_base
from .cells import run_cell_stage
from .common import Clock, OutOfTime, Results, environment, log, now
from .config import AIMS, CONFIGS, FULL, PART1, PART2, PART3_FULL, PART3_SMOKE, PARTS, SMOKE, rehearsal, v2_needs, v2_parts
from .criteria import stage_criteria
from .latency import stage_latency
from .producers import stage_producers
from .report import report
from .report2 import report_v2, summary_v2
from .retrain import stage_retrain
from .runner import Proof
from .search import stage_search
from .sweep import stage_sweep
from .tau import stage_tau
from .throughput import stage_throughput

DESCRIPTION = "The proof run: every performance claim of autoprune measured in one resumable command."

STAGES = {"throughput": stage_throughput, "base": stage_base, "search": stage_search, "sweep": stage_sweep,
          "retrain": stage_retrain, "tau": stage_tau, "latency": stage_latency, "criteria": stage_criteria,
          "producers": stage_producers}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument("--out", required=True, help="output folder (results.json, proof.md, checkpoints, studies)")
    p.add_argument("--smoke", action="store_true", help="tiny settings on the synthetic dataset, CPU")
    p.add_argument("--rehearse", action="store_true",
                   help="a v2 config's counts (candidates, scorers, vectors, seeds, proxies) with every training cut "
                        "to a few steps on synthetic 32 x 32 images, CPU: checks a GPU plan runs to its end before GPU time")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="stop cleanly before a stage or unit whose estimate does not fit in this many minutes")
    p.add_argument("--config", choices=("v1", *CONFIGS), default="v1",
                   help="v1: the first proof (VGG16; default); v2: MobileNetV2, ResNet-56 and VGG16 at low budgets, "
                        "three seeds, paired tests, the tau test with lopsided vectors, proxies against both finishes; "
                        "v2-cpu: the v2 stages scaled to two CPU cores and about an hour (ResNet-20 and MobileNetV2 on "
                        "10,000 CIFAR-10 images; needs --data-dir); v2-short: v2's MobileNetV2 at 0.1 alone, in two GPU "
                        "sittings")
    p.add_argument("--part", type=int, default=None, help="v1: 1: throughput, base, search, sweep, "
                   "tau; 2: retrain, latency (needs part 1's results in OUT); 3: criteria, producers (needs parts 1 "
                   "and 2). v2: 1 the bases, then per model and budget a search, a retrain and a tau part per seed "
                   "(each needs the parts before it that its stages read; v2 has 45, v2-cpu 26)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10: torchvision folder, ImageFolder folder or .tar.gz")
    p.add_argument("--device", default=None, help="cuda or cpu (default cuda when available; --smoke: cpu)")
    p.add_argument("--workers", type=int, default=None, help="concurrent retrain processes (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--progress", action="store_true", help="progress bars on stderr")
    args = p.parse_args(argv)
    if args.device is None:
        cpu = args.smoke or args.rehearse or args.config == "v2-cpu" or not torch.cuda.is_available()
        args.device = "cpu" if cpu else "cuda"
    if args.workers is None:
        args.workers = 3 if torch.device(args.device).type == "cuda" else 1
    return args


def open_results(args, out: Path, settings: dict, part3: dict, argv) -> Results | None:
    """OUT/results.json, checked against this invocation's settings and stamped with it (None: refused)."""
    results = Results(out / "results.json", uuid.uuid4().hex[:12])
    full = {**settings, "device": args.device}
    stored, stored3 = results.data.get("settings"), results.data.get("settings_part3")
    v2 = settings.get("config") in CONFIGS
    runs3 = args.part in (None, 3) and not v2  # v2 has no part-3 settings
    if (stored is not None and stored != full) or (runs3 and stored3 is not None and stored3 != part3):
        print(f"proof: error: {out / 'results.json'} was written with other settings (smoke vs full, another --config, or "
              "another device); use another --out", file=sys.stderr)
        return None
    if v2:
        stages = v2_parts(settings)[args.part]
        missing = sorted({n for name in stages for n in v2_needs(name) if n not in stages and not results.done(n)})
        if missing:
            print(f"proof: error: --part {args.part} needs {', '.join(missing)} in {out}; run the parts that hold "
                  "them first", file=sys.stderr)
            return None
    else:
        needs = {2: PART1, 3: PART1 + PART2}.get(args.part, ())
        if not all(results.done(s) for s in needs):
            print(f"proof: error: --part {args.part} needs part {' and '.join(str(i) for i in range(1, args.part))}'s "
                  f"results in {out}; run --part {args.part - 1} first", file=sys.stderr)
            return None
    results.data["settings"] = full
    if runs3:  # written once part 3 may run, so that a part-1/2 file stays as it was
        results.data["settings_part3"] = part3
    results.data.setdefault("meta", {})
    results.data["meta"].update(smoke=args.smoke, rehearsal=args.rehearse, environment=environment(torch.device(args.device)),
                                aims=AIMS)
    results.data["meta"].setdefault("invocations", []).append(
        {"run_id": results.run_id, "started_at": now(), "argv": sys.argv[1:] if argv is None else list(argv)})
    results.save()
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    clock = Clock(args.budget_minutes)
    v2 = args.config in CONFIGS
    settings = json.loads(json.dumps(CONFIGS[args.config][1 if args.smoke else 0] if v2 else SMOKE if args.smoke else FULL))
    part3 = json.loads(json.dumps(PART3_SMOKE if args.smoke else PART3_FULL))
    if args.rehearse:
        if not v2 or args.smoke:
            print(f"proof: error: --rehearse takes a v2 config's full settings (--config {' or '.join(CONFIGS)}, "
                  "without --smoke)", file=sys.stderr)
            return 2
        settings = rehearsal(settings)
    parts = v2_parts(settings) if v2 else PARTS
    if args.part not in parts:
        print(f"proof: error: --part {args.part}: config {args.config} has parts 1-{len(parts) - 1}", file=sys.stderr)
        return 2
    if not (args.smoke or args.rehearse) and settings.get("config") == "v2-cpu" and args.data_dir is None:
        print("proof: error: --config v2-cpu trains on a CIFAR-10 subset: give --data-dir (a torchvision folder, an "
              "ImageFolder folder or the .tar.gz)", file=sys.stderr)
        return 2
    if (args.smoke or args.rehearse) and args.data_dir is not None:
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
    stages = parts[args.part]
    proof = Proof(args, settings, results, clock, part3)
    run = (lambda name: run_cell_stage(proof, name)) if v2 else (lambda name: STAGES[name](proof))

    def publish():
        """OUT/proof.md, and for v2 the summary its tables show, stored in results.json."""
        if v2:
            results.data["summary"] = summary_v2(results.data)
            results.save()
        write_text((report_v2 if v2 else report)(results.data), out / "proof.md")

    # SIGTERM (a time limit, `timeout`) unwinds like Ctrl-C, so that child processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for name in stages:
            if results.done(name):
                log(f"{name}: done already (run {results.stage(name)['run_id']})")
                continue
            log(f"{name}: start")
            start = time.perf_counter()
            res = run(name)
            results.finish(name, {**res, "stage_s": round(time.perf_counter() - start, 1)})
            publish()
            log(f"{name}: done in {time.perf_counter() - start:.1f} s")
    except OutOfTime as exc:
        publish()
        log(f"stopping: {exc}")
        print(f"Stopped within --budget-minutes; results so far are in {out / 'results.json'}. "
              "resume with the same command", flush=True)
        return 0
    publish()
    log(f"finished in {time.perf_counter() - clock.start:.1f} s: {out / 'proof.md'}")
    return 0
