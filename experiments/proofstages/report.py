"""OUT/proof.md: markdown tables with the aims beside the measured values."""

from __future__ import annotations

from .config import AIMS, PART1, PART2, PART3, SEARCHED
from .retrain import ok_rows


def fmt(v, spec="{:.4f}"):
    return "-" if v is None else spec.format(v)


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
             else [r["budget"], r["method"], f"{r['macs_ratio']:.3f}", f"{r['params'] / 1e6:.3f}M", fmt(r["val"]),
                   r["candidates"], r["search_s"], r["cand_per_min"], fmt(r.get("gpu_util"), "{:.0f}")]
             for r in s["rows"]]
    lines += _table(["budget", "method", "MACs ratio", "params", "val score", "candidates", "search s",
                     "cand/min", "GPU util %"], table) + [""]
    lines += ["Scorer processes sharing one study (one journal file or SQLite database) on one device:", ""]
    lines += _table(["workers", "budget", "method", "MACs ratio (mean)", "candidates", "s", "cand/min",
                     "GPU util %", "aim"],
                    [[c["workers"], "-", "-", "-", f"failed: {c['error'][:120]}", "-", "-", "-", "-"]
                     if c.get("error") else
                     [c["workers"], c["budget"], c["method"], f"{c['macs_ratio']:.3f}", c["candidates"], c["seconds"],
                      c["cand_per_min"], fmt(c.get("gpu_util"), "{:.0f}"), f"≥ {AIMS['cand_per_min']}"]
                     for c in s["concurrency"]]) + [""]
    best = max([r["cand_per_min"] for r in ok_rows(s["rows"]) if r["method"] in SEARCHED]
               + [c["cand_per_min"] for c in ok_rows(s["concurrency"])], default=None)
    aims.append([f"{st.get('base', {}).get('model', '')} candidates/min (search, one device)",
                 ", ".join(dict.fromkeys(r["budget"] for r in s["rows"])), f"≥ {AIMS['cand_per_min']}",
                 fmt(best, "{:.1f}"), _met(None if best is None else best >= AIMS["cand_per_min"])])
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
        table.append([x["budget"], x["method"], f"{x['macs_ratio']:.3f}", f"{x['params'] / 1e6:.3f}M", fmt(x["val"]),
                      fmt(x["test_mean"]), " / ".join(f"{t:.4f}" for t in x["tests"]), fmt(d, "{:+.2f}")])
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
                      f"{x['s_per_candidate']:.2f}", x["cand_per_min"], fmt(x["tau"], "{:.2f}"), fmt(x["p"], "{:.3f}"),
                      fmt(x["tau_per_s"], "{:.3f}"), "yes" if x["search_default"] else "", f"τ ≥ {AIMS['tau']}"]
                     for x in t["settings"]]) + [""]
    aims.append([f"Kendall τ (search default scorer), budget {t['budget']}", f"{t['macs_ratio_max']:.3f}",
                 f"≥ {AIMS['tau']}", fmt(t["tau"], "{:.2f}"), _met(None if t["tau"] is None else t["tau"] >= AIMS["tau"])])
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
                          fmt(ratio, "{:.2f}×"), aim])
            if r["model"] == "vgg16" and r["pipeline"] == "fast":
                aims.append(["VGG16 fast-path training", "1.000", f"≥ {AIMS['fast_img_s']:,} img/s",
                             f"{r['img_per_s_median']:,.0f} img/s", _met(r["img_per_s_median"] >= AIMS["fast_img_s"])])
        lines += _table(["model", "pipeline", "MACs ratio", "img/s", "fast / conventional", "aim"], table) + [""]
    if "base" in st:
        b = st["base"]
        lines += ["## Base model", ""] + _table(
            ["model", "MACs ratio", "params", "epochs", "test acc", "val acc", "train s", "aim"],
            [[b["model"], "1.000", f"{b['params'] / 1e6:.2f}M", b["config"]["epochs"], fmt(b["test"]), fmt(b["val"]),
              fmt(b.get("train_s"), "{:.1f}"), f"≥ {AIMS['base_acc']:.2f}"]]) + [""]
        aims.append([f"{b['model']} base test acc, {b['config']['epochs']} epochs", "1.000", f"≥ {AIMS['base_acc']:.2f}",
                     fmt(b["test"]), _met(b["test"] >= AIMS["base_acc"])])
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
                          [[f"`{x['rule']}`", f"{x['macs_ratio']:.3f}", fmt(x["tau"], "{:+.2f}"), fmt(x["p"], "{:.3f}"),
                            f"{x['s_per_candidate']:.2f}", f"{x['setup_s']:.1f}", fmt(x["proxy_mean"]), x["failed"]]
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
                      fmt(x["test_mean"]), " / ".join(f"{t:.4f}" for t in x["tests"]), fmt(d, "{:+.2f}")])
    lines = ["## One-shot producers, retrained from scratch", "",
             f"hrank, activation and ssl widths from the search API on the base, {pr['epochs']} epochs from scratch, "
             f"seeds {pr['seeds']}, beside the retrain stage's rows.", ""]
    again = meta.get("base_retrained", [])
    lines += [f"The base checkpoint was missing and was trained again for part 3 (test acc {fmt(b['test'])}, "
              f"run {b['run_id']}): the keep rules and these producers read that base." for b in again] + [""] * bool(again)
    return lines + _table(["budget", "method", "MACs ratio", "params", "test acc (mean)", "per seed", "vs uniform (pp)"],
                          table) + [""]
