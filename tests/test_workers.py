"""Several worker processes on one study, on PostgreSQL and on a journal file: an exact trial
count, no candidate scored twice, every worker ends on the same best, and a worker killed
mid-trial on "another host" loses nothing (its claim is re-queued after the heartbeat timeout).

The PostgreSQL tests start a throw-away cluster (initdb into a temporary folder, bound to
127.0.0.1 on a free port); they are skipped only when no PostgreSQL server binary is found
(``AUTOPRUNE_PG_BIN``, ``pg_ctl`` on PATH, or ``/usr/lib/postgresql/*/bin``).
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from autoprune.study import TrialStore

ROOT = Path(__file__).resolve().parent.parent
TRIALS = 16

WORKER = textwrap.dedent("""
    import json, socket, sys, time
    from autoprune.api import StudyConfig, search
    url, method, out, delay, host = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
    if host:  # pretend to run on another machine: its claims can only be judged by heartbeat
        socket.gethostname = lambda: host
    def slow(widths):
        print("scoring", flush=True)
        time.sleep(delay)
        return sum(w * (i % 3 + 1) for i, w in enumerate(widths)) / 1e4
    r = search("resnet20", 0.4, method, objective=slow, out=out, seed=0,
               study=StudyConfig(trials=TRIALS, storage=url, name="shared", heartbeat_timeout=3.0))
    print("RESULT", json.dumps({"widths": r.widths, "reclaimed": r.info["reclaimed"]}), flush=True)
""").replace("TRIALS", str(TRIALS))


def _pg_bin() -> Path | None:
    given = os.environ.get("AUTOPRUNE_PG_BIN")
    candidates = [given] if given else []
    if shutil.which("pg_ctl"):
        candidates.append(str(Path(shutil.which("pg_ctl")).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="module")
def postgres():
    """The URL of a fresh PostgreSQL cluster, removed afterwards."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binary (initdb, pg_ctl): install postgresql or set AUTOPRUNE_PG_BIN")
    pytest.importorskip("psycopg", reason="the postgres extra is not installed: pip install 'autoprune[postgres]'")
    root = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
    data = root / "data"
    # initdb refuses to run as root: run the server as the 'postgres' user the package creates.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *cmd: subprocess.run(as_user + [str(c) for c in cmd], check=True, capture_output=True)  # noqa: E731
    run(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust")
    run(bin_dir / "pg_ctl", "-D", data, "-w", "-l", root / "log", "start",
        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=100")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _fresh_database(server: str, name: str) -> str:
    import psycopg  # deferred on purpose: the postgres extra is optional

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"


def _start(url, method, out, delay=0.05, host=""):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", WORKER, url, method, str(out), str(delay), host], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_study(url, outs, results):
    store = TrialStore(url, "shared", meta={})
    records = store.records()
    ok = [r for r in records if r.status == "ok"]
    assert len(ok) == TRIALS and len(records) - len(ok) == sum(r.status == "interrupted" for r in records)
    assert len({r.key for r in ok}) == TRIALS, "no candidate may be scored twice"
    best = max(ok, key=lambda r: (r.score, -r.trial_id))
    for out in outs:
        arch = json.loads((Path(out) / "arch.json").read_text())
        assert arch["widths"] == list(best.widths), "every worker writes the study's best"
    assert all(r["widths"] == list(best.widths) for r in results)
    trial = store.study.get_trials()[ok[0].trial_id]
    assert len(trial.params) == len(ok[0].widths) and trial.distributions  # optuna-dashboard's views
    return records


def _result(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.split("RESULT", 1)[1])


@pytest.mark.parametrize("method", ["abc", "tpe"])
def test_four_workers_on_postgresql(postgres, tmp_path, method):
    url = _fresh_database(postgres, f"four_{method}")
    procs = [_start(url, method, tmp_path / f"out{i}") for i in range(4)]  # together, on a new database
    results = [_result(p) for p in procs]
    _check_study(url, [tmp_path / f"out{i}" for i in range(4)], results)


def _kill_mid_trial(url, tmp_path):
    victim = _start(url, "abc", tmp_path / "victim", delay=120, host="another-host")
    for line in victim.stdout:  # its first claim is being scored
        if line.startswith("scoring"):
            break
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    start = time.monotonic()
    survivors = [_start(url, "abc", tmp_path / f"out{i}") for i in range(2)]
    results = [_result(p) for p in survivors]
    records = _check_study(url, [tmp_path / f"out{i}" for i in range(2)], results)
    lost = [r for r in records if r.status == "interrupted"]
    assert len(lost) == 1 and "no heartbeat from worker another-host" in lost[0].reason
    assert sum(len(r["reclaimed"]) for r in results) == 1, "the rerun reports the claim it re-queued"
    assert time.monotonic() - start < 200


def test_worker_killed_on_another_host_postgresql(postgres, tmp_path):
    _kill_mid_trial(_fresh_database(postgres, "killed"), tmp_path)


def test_worker_killed_on_another_host_journal(tmp_path):
    _kill_mid_trial(f"journal:{tmp_path / 'study.log'}", tmp_path)
