"""Benchmark of the search's own overhead: what one candidate costs besides scoring it.

    python experiments/bench_overhead.py --trials 10000 --workers 8 --pg-trials 5000

Part 1: ``random``, ``abc`` and ``tpe`` each run to ``--trials`` candidates of the synthetic
objective (no scoring cost) on ``resnet56`` at 40 % of the MACs, one process, on SQLite and on
a journal file. The time between consecutive candidates' scoring starts is pure overhead; it
is reported as the mean over the first and the last 10 % of the study, with a profile of
where it goes (ask, repair, replay, claim, heartbeat start/stop, finish, tell).

Part 2: ``--workers`` processes share one PostgreSQL study (a throw-away cluster, started the
way tests/test_workers.py does) to ``--pg-trials`` candidates of an objective that sleeps
``--sleep`` s (standing in for a GPU score), beside one worker alone to a few candidates.
It checks the exact trial count and that no candidate was scored twice, and reports the
throughput against one worker's.

On a machine shared with other jobs, wall time includes waiting for a core: the process's CPU
time per candidate is reported beside it (it leaves out SQLite's waits for the disk).

GPU-equivalent efficiency: the share of wall time that would be scoring if scoring took
``--gpu-seconds`` per candidate (0.13 s) and the overhead stayed what was measured:
``gpu / (gpu + overhead per candidate)`` (per worker, for the shared study).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoprune import driver, evaluator, study  # noqa: E402
from autoprune.api import StudyConfig, search  # noqa: E402
from autoprune.optimizers import Optimizer  # noqa: E402

# (owner, attribute, step name): the steps of one candidate's life that the profile times.
# Steps nest (repair runs inside ask, records inside replay and claim): each is timed whole.
STEPS = [(driver._Loop, "replay", "replay"), (Optimizer, "ask", "ask"), (Optimizer, "repair", "repair"),
         (study.TrialStore, "records", "records"), (study.TrialStore, "claim", "claim"),
         (study._Heartbeat, "add", "heartbeat start"), (study._Heartbeat, "discard", "heartbeat stop"),
         (study.TrialStore, "finish", "finish"), (Optimizer, "tell", "tell")]


class Profile:
    """Wall and CPU time of each step, stamped with the candidate being prepared when it ran."""

    def __init__(self):
        self.starts: list[float] = []  # perf_counter at each scoring start
        self.cpu: list[float] = []  # this process's CPU time at each scoring start
        self.calls: list[tuple[str, int, float, float]] = []  # (step, candidate index, wall s, CPU s)
        self.saved = []

    def install(self) -> None:
        for owner, attr, name in STEPS:
            original = owner.__dict__[attr]
            self.saved.append((owner, attr, original))
            setattr(owner, attr, self._timed(original, name))
        original = evaluator.SyntheticObjective.__call__
        self.saved.append((evaluator.SyntheticObjective, "__call__", original))

        def call(obj, widths):
            self.starts.append(time.perf_counter())
            self.cpu.append(time.process_time())
            return original(obj, widths)
        evaluator.SyntheticObjective.__call__ = call

    def uninstall(self) -> None:
        for owner, attr, original in reversed(self.saved):
            setattr(owner, attr, original)
        self.saved = []

    def _timed(self, fn, name):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls.append((name, len(self.starts), time.perf_counter() - t, time.process_time() - c))
        return timed

    def window(self, lo: int, hi: int) -> dict:
        """ms per candidate between scoring starts lo..hi, and each step's wall and CPU ms per
        candidate there."""
        n = hi - lo
        steps, cpu = collections.defaultdict(float), collections.defaultdict(float)
        for name, i, s, c in self.calls:
            if lo < i <= hi:  # calls made while preparing candidates lo+1 .. hi
                steps[name] += s
                cpu[name] += c
        return {"ms": 1e3 * (self.starts[hi] - self.starts[lo]) / n, "cpu_ms": 1e3 * (self.cpu[hi] - self.cpu[lo]) / n,
                "steps": {k: round(1e3 * v / n, 2) for k, v in steps.items()},
                "cpu_steps": {k: round(1e3 * v / n, 2) for k, v in cpu.items()}}


def one_process(method: str, storage: str, trials: int, out: Path, model: str, budget: float) -> dict:
    """One method to ``trials`` synthetic candidates in one process; the first and last 10 %."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    url = f"sqlite:///{out / 'study.db'}" if storage == "sqlite" else f"journal:{out / 'study.log'}"
    prof = Profile()
    prof.install()
    t = time.perf_counter()
    try:
        result = search(model, budget, method, objective="synthetic", out=out / "run", seed=0, progress=False,
                        study=StudyConfig(trials=trials, storage=url))
    finally:
        prof.uninstall()
    wall = time.perf_counter() - t
    tenth = max(1, trials // 10)
    n = len(prof.starts)
    first, last = prof.window(0, min(tenth, n - 1)), prof.window(max(0, n - 1 - tenth), n - 1)
    return {"method": method, "storage": storage, "trials": trials, "scored": n, "wall_s": round(wall, 1),
            "first_ms": round(first["ms"], 1), "last_ms": round(last["ms"], 1),
            "growth": round(last["ms"] / first["ms"], 2), "best": result.score,
            "first_cpu_ms": round(first["cpu_ms"], 1), "last_cpu_ms": round(last["cpu_ms"], 1),
            "first_steps": first["steps"], "last_steps": last["steps"],
            "first_cpu_steps": first["cpu_steps"], "last_cpu_steps": last["cpu_steps"]}


# -- PostgreSQL -------------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys, time
    from autoprune.api import StudyConfig, search
    from autoprune.evaluator import SyntheticObjective
    url, name, trials, sleep, out, model, budget = sys.argv[1:8]
    synthetic = []
    def slow(widths):  # stands in for a GPU score: sleeps, then the synthetic score
        time.sleep(float(sleep))
        return synthetic[0](widths)
    from autoprune.space import SearchSpace
    from autoprune.models import create_model
    synthetic.append(SyntheticObjective(SearchSpace.from_model(create_model(model)), seed=0))
    search(model, float(budget), "random", objective=slow, out=out, seed=0, progress=False,
           study=StudyConfig(trials=int(trials), storage=url, name=name))
""")


def _pg_server(root: Path):
    """(URL, stop function) of a throw-away PostgreSQL cluster in ``root``; None without one."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_workers import _pg_bin  # deferred: the tests' way of finding the server binary

    bin_dir = _pg_bin()
    if bin_dir is None:
        return None
    data = root / "data"
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *cmd: subprocess.run(as_user + [str(c) for c in cmd], check=True, capture_output=True)  # noqa: E731
    run(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust")
    run(bin_dir / "pg_ctl", "-D", data, "-w", "-l", root / "log", "start",
        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=200")
    stop = lambda: subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",  # noqa: E731
                                             "stop"], capture_output=True)
    return f"postgresql://postgres@127.0.0.1:{port}", stop


def _pg_study(server: str, db: str, workers: int, trials: int, args, out: Path) -> dict:
    import psycopg  # deferred: the postgres extra is optional

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    url = f"{server}/{db}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, "shared", str(trials), str(args.sleep),
                               str(out / f"{db}-{i}"), args.model, str(args.budget)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t
    bad = [e[-500:] for p, e in zip(procs, errors) if p.returncode != 0]
    records = study.TrialStore(url, "shared", meta={}).records()
    ok = [r for r in records if r.status == "ok"]
    starts = sorted(t.datetime_start.timestamp() for t in study.TrialStore(url, "shared", meta={}).study.get_trials()
                    if "widths" in t.user_attrs)
    span = starts[-1] - starts[0] if len(starts) > 1 else wall
    per_s = (len(starts) - 1) / span if span > 0 else 0.0
    overhead = workers / per_s - args.sleep if per_s else float("nan")
    return {"workers": workers, "trials": trials, "ok": len(ok), "unique": len({r.key for r in ok}),
            "records": len(records), "failed_workers": len(bad), "errors": bad[:1], "wall_s": round(wall, 1),
            "per_s": round(per_s, 2), "overhead_ms": round(1e3 * overhead, 1),
            "efficiency": round(args.gpu_seconds / (args.gpu_seconds + max(overhead, 0.0)), 3)}


def postgres_part(args, out: Path) -> dict | None:
    root = Path(tempfile.mkdtemp(prefix="autoprune-bench-pg-"))
    server = _pg_server(root)
    if server is None:
        print("no PostgreSQL server binary: skipping the shared-study part")
        return None
    url, stop = server
    try:
        one = _pg_study(url, "one", 1, args.pg_single, args, out)
        many = _pg_study(url, "many", args.workers, args.pg_trials, args, out)
    finally:
        stop()
        shutil.rmtree(root, ignore_errors=True)
    many["speedup"] = round(many["per_s"] / one["per_s"], 2) if one["per_s"] else None
    return {"one": one, "many": many}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=10000, help="candidates per method and storage (part 1)")
    p.add_argument("--methods", default="random,abc,tpe")
    p.add_argument("--storages", default="sqlite,journal")
    p.add_argument("--model", default="resnet56")
    p.add_argument("--budget", type=float, default=0.4)
    p.add_argument("--workers", type=int, default=8, help="worker processes on the PostgreSQL study (0: skip)")
    p.add_argument("--pg-trials", type=int, default=5000)
    p.add_argument("--pg-single", type=int, default=100, help="candidates of the one-worker reference run")
    p.add_argument("--sleep", type=float, default=0.2, help="seconds the shared study's objective sleeps")
    p.add_argument("--gpu-seconds", type=float, default=0.13, help="scoring time for the efficiency column")
    p.add_argument("--out", type=Path, default=Path("runs/bench_overhead"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for storage in [s for s in args.storages.split(",") if s]:
        for method in [m for m in args.methods.split(",") if m]:
            row = one_process(method, storage, args.trials, args.out / f"{method}-{storage}", args.model, args.budget)
            row["efficiency"] = round(args.gpu_seconds / (args.gpu_seconds + row["last_ms"] / 1e3), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    shared = postgres_part(args, args.out) if args.workers > 0 else None
    if shared:
        print(json.dumps(shared), flush=True)
    (args.out / "bench.json").write_text(json.dumps({"single": rows, "postgresql": shared}, indent=1))
    print("\n| method | storage | candidates | first 10 % (ms) | last 10 % (ms) | growth | CPU first / last (ms) "
          f"| efficiency at {args.gpu_seconds} s | best |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['storage']} | {r['scored']} | {r['first_ms']} | {r['last_ms']} | {r['growth']}x "
              f"| {r['first_cpu_ms']} / {r['last_cpu_ms']} | {100 * r['efficiency']:.1f} % | {r['best']:.4f} |")
    if shared:
        for k in ("one", "many"):
            s = shared[k]
            print(f"\nPostgreSQL, {s['workers']} worker(s), {s['trials']} candidates: {s['ok']} ok, {s['unique']} "
                  f"unique, {s['per_s']} candidates/s, overhead {s['overhead_ms']} ms per candidate per worker, "
                  f"efficiency {100 * s['efficiency']:.1f} %, {s['failed_workers']} worker(s) failed")
        print(f"speed-up over one worker: {shared['many']['speedup']}x")


if __name__ == "__main__":
    main()
