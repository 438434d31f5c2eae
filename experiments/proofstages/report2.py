"""OUT/proof.md of the v2 proof: per model and budget, the searches, the winners retrained with
every seed against the reference (uniform-fill), and the tau test with its interval."""

from __future__ import annotations

from .cells import cell_summary
from .config import v2_parts
from .report import _table, fmt


def _pm(mean, std, scale: float = 100.0, spec: str = "{:.2f}") -> str:
    if mean is None:
        return "-"
    return spec.format(mean * scale) + ("" if std is None else " ± " + spec.replace("+", "").format(std * scale))


def _search_lines(c: dict) -> list[str]:
    rows = [[r["method"], "-", f"failed: {r['error'][:120]}", "-", "-", "-", "-"] if r.get("error") else
            [r["method"], f"{r['macs_ratio']:.3f}", f"{r['params'] / 1e6:.3f}M", fmt(r["val"]), r["candidates"],
             r.get("scorers", 1), r["cand_per_min"]] for r in c["search"]]
    return _table(["method", "MACs ratio", "params", "val score", "candidates", "scorers", "cand/min"], rows) + [""]


def _retrain_lines(c: dict, seeds: list[int]) -> list[str]:
    rows = []
    for r in sorted(c["retrained"], key=lambda r: -r["test_mean"]):
        vs = r["vs_reference"]
        rows.append([r["method"], f"{r['macs_ratio']:.3f}", _pm(r["test_mean"], r["test_std"]),
                     " / ".join(f"{t * 100:.2f}" for t in r["tests"]),
                     "reference" if vs is None else _pm(vs["mean"], vs["std"], spec="{:+.2f}"),
                     "-" if vs is None else fmt(vs["p"], "{:.3f}"),
                     "-" if vs is None else f"{vs['wins']}/{vs['n']}"])
    head = ["method", "MACs ratio", "test acc % (mean ± std)", "per seed", f"vs {c['reference']} (pp, paired)",
            "paired t p", "seeds won"]
    return [f"From scratch, seeds {seeds}:", ""] + _table(head, rows) + [""]


def _tau_lines(c: dict) -> list[str]:
    t = c["tau"]
    kinds = [k.split()[0] for k in t["kinds"]]
    count = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
    ci = "-" if t["lo"] is None else f"[{t['lo']:+.2f}, {t['hi']:+.2f}]"
    seeds = t["seeds"] or {}
    return _table(["vectors", "MACs ratio", "τ proxy vs seed mean", f"{t['level']:.0%} interval", "p",
                   "τ seed vs seed"],
                  [[f"{t['n']} ({count})", f"{t['macs_ratio_min']:.3f}-{t['macs_ratio_max']:.3f}",
                    fmt(t["tau"], "{:+.2f}"), ci, fmt(t["p"], "{:.3f}"), fmt(seeds.get("tau"), "{:+.2f}")]]) + [""]


def _tau_cell(t: dict | None) -> str:
    if not t or t["tau"] is None:
        return "-"
    ci = "" if t["lo"] is None else f" [{t['lo']:+.2f}, {t['hi']:+.2f}]"
    return f"{t['tau']:+.2f}{ci}, p {t['p']:.3f}"


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _proxy_lines(c: dict, cpu: bool) -> list[str]:
    """The proxies' table; ``cpu``: a CPU run, whose CPU seconds per candidate stand beside the wall
    seconds (on a shared machine the wall seconds measure the load as well)."""
    t = c["tau"] or {}
    ratio = f"{t['macs_ratio_min']:.3f}-{t['macs_ratio_max']:.3f}" if t else "-"
    rows = [[r["name"], ratio, fmt(r["s_per_candidate"], "{:.2f}")]
            + ([fmt(r.get("cpu_s_per_candidate"), "{:.2f}")] if cpu else [])
            + [_tau_cell(r["scratch"]), fmt(r["scratch_tau_per_s"], "{:.3f}"), _tau_cell(r["finetune"]),
               fmt(r["finetune_tau_per_s"], "{:.3f}")]
            for r in c["proxies"]]
    return _table(["proxy", "MACs ratio", "s/candidate"] + (["CPU s/candidate"] if cpu else [])
                  + ["τ vs from scratch [95 %], p", "τ/s", "τ vs fine-tuned [95 %], p", "τ/s"], rows) + [""]


def best_proxies(c: dict, alpha: float = 0.05) -> dict:
    """Per finish, the timed proxy with the most tau per second among those whose tau is above 0
    with p < ``alpha`` (None when none is)."""
    out = {}
    for finish in ("scratch", "finetune"):
        ok = [r for r in c["proxies"] if r[f"{finish}_tau_per_s"] is not None and r[finish]["tau"] > 0
              and r[finish]["p"] is not None and r[finish]["p"] < alpha]
        out[finish] = max(ok, key=lambda r: r[f"{finish}_tau_per_s"])["name"] if ok else None
    return out


def cell_lines(results: dict, model: str, budget: str) -> list[str]:
    c = cell_summary(results, model, budget)
    lines = [f"## {model} at budget {budget}", ""]
    if c["unreachable"]:
        return lines + [f"Not reachable: {c['unreachable']}", ""]
    if c["search"]:
        lines += _search_lines(c)
    if c["retrained"]:
        lines += _retrain_lines(c, results["settings"]["seeds"])
    if c["tau"]:
        lines += ["Evaluator fidelity over the tau vectors (proxy score against the mean test accuracy of the "
                  f"tau seeds {results['settings']['tau']['seeds']}; bootstrap over the vectors):", ""]
        lines += _tau_lines(c)
    if any(r["scratch"] or r["finetune"] for r in c["proxies"]):
        best = best_proxies(c)
        lines += [f"Proxies over the same vectors against each finish (from scratch: the tau seeds' mean; fine-tuned "
                  f"from the base, {_epochs(results['settings']['finetune']['epochs'])}: the mean of seeds "
                  f"{results['settings']['finetune']['seeds']}); τ/s is τ over the mean seconds per candidate. "
                  f"Most τ/s with τ > 0 at p < 0.05: {best['scratch'] or 'none'} (from scratch), "
                  f"{best['finetune'] or 'none'} (fine-tuned).", ""]
        lines += _proxy_lines(c, results["settings"].get("device") == "cpu")
    return lines


def best_lines(results: dict) -> list[str]:
    """One row per cell: the best searched winner against the reference, the headline."""
    s, rows = results["settings"], []
    for model, budgets in s["models"].items():
        for budget in budgets:
            c = cell_summary(results, model, budget)
            found = [r for r in c["retrained"] if r["method"] in s["searched"] and r["vs_reference"]]
            if not found:
                continue
            w = max(found, key=lambda r: r["test_mean"])
            vs = w["vs_reference"]
            rows.append([model, budget, w["method"], f"{w['macs_ratio']:.3f}", _pm(vs["mean"], vs["std"], spec="{:+.2f}"),
                         fmt(vs["p"], "{:.3f}"), f"{vs['wins']}/{vs['n']}"])
    if not rows:
        return []
    return ["## Searched against uniform-fill", ""] + _table(
        ["model", "budget", "best searched", "MACs ratio", f"vs {s['reference']} (pp)", "paired t p", "seeds won"],
        rows) + [""]


def report_v2(results: dict) -> str:
    st, meta, s = results["stages"], results.get("meta", {}), results["settings"]
    env = meta.get("environment", {})
    note = (" (smoke settings)" if meta.get("smoke") else
            " (rehearsal: the plan's counts, every training cut to a few steps; its accuracies mean nothing)"
            if s.get("rehearsal") else "")
    lines = [f"# autoprune proof run, config {s['config']}{note}", "",
             f"{env.get('date')}, commit {env.get('git_commit')}, torch {env.get('torch')}, "
             f"{env.get('gpu') or 'no GPU'}, {env.get('cpu')} ({env.get('cpu_cores')} cores), "
             f"device {env.get('device')}. Every setting is in results.json.", ""]
    bases = [(m, st[f"base/{m}"]) for m in s["models"] if f"base/{m}" in st]
    if bases:
        lines += ["## Bases", ""] + _table(
            ["model", "MACs ratio", "params", "epochs", "test acc", "val acc"],
            [[m, "1.000", f"{b['params'] / 1e6:.2f}M", b["config"]["epochs"], fmt(b["test"]), fmt(b["val"])]
             for m, b in bases]) + [""]
    lines += best_lines(results)
    for model, budgets in s["models"].items():
        for budget in budgets:
            if f"search/{model}/{budget}" in st:
                lines += cell_lines(results, model, budget)
    missing = [name for name in v2_parts(s)[None] if name not in st]
    if missing:
        lines += [f"Not yet run: {', '.join(missing)}.", ""]
    return "\n".join(lines)



def summary_v2(results: dict) -> dict:
    """What results.json says in brief: the models, seeds and proxies, and per model and budget each
    method's test accuracy per seed against the reference (uniform-fill) and each proxy's tau
    against both finishes, with its seconds per candidate."""
    s = results["settings"]
    cells = []
    for model, budgets in s["models"].items():
        for budget in budgets:
            c = cell_summary(results, model, budget)
            cells.append({
                "model": model, "budget": budget, "unreachable": c["unreachable"],
                "methods": {r["method"]: {"macs_ratio": r["macs_ratio"], "tests": r["tests"], "mean": r["test_mean"],
                                          "std": r["test_std"], "vs_reference": r["vs_reference"]}
                            for r in c["retrained"]},
                "proxies": {r["name"]: {k: r[k] for k in ("kind", "s_per_candidate", "cpu_s_per_candidate", "mean_s",
                                                          "scratch", "scratch_tau_per_s", "finetune",
                                                          "finetune_tau_per_s")}
                            for r in c["proxies"]},
                "tau_seed_vs_seed": (c["tau"] or {}).get("seeds"),
                "best_proxy": best_proxies(c) if c["proxies"] else None})
    return {"config": s["config"], "models": list(s["models"]), "budgets": s["models"], "reference": s["reference"],
            "seeds": s["seeds"], "tau_seeds": s["tau"]["seeds"], "finetune_seeds": s["finetune"]["seeds"],
            "proxies": {name: spec["kind"] for name, spec in s["proxies"].items()}, "cells": cells}
