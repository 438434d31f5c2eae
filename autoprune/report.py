"""What a search leaves behind: ``OUT/arch.json``, ``OUT/trials.csv`` and the summary text.

:func:`search_record` builds the ``search`` section of the architecture JSON (how the winner
was found: candidates, objective, data split, base checkpoint, the method's own report) for
every method; :func:`write_result` writes the files and returns the :class:`SearchResult`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from autoprune import cost
from autoprune.arch import frozen_line, make_arch, save_arch
from autoprune.files import write_text
from autoprune.study import STATUS_FAILED, STATUS_OK, Record

TRIAL_FIELDS = ["trial", "status", "score", "macs", "params", "role", "seconds", "widths", "reason", "worker"]


@dataclass
class SearchResult:
    """The winner of a search and the record of how it was found.

    ``widths`` are the chosen widths (one per free group, in space order); ``arch`` the
    architecture JSON dict (rebuild with :func:`autoprune.arch.build`); ``trials`` one row per
    scored candidate of the study (all workers').
    """

    widths: list[int]
    arch: dict
    trials: list[dict]
    method: str
    score: float | None
    seconds: float
    out: Path | None = None
    info: dict = field(default_factory=dict)

    def save(self, path) -> Path:
        return save_arch(self.arch, path)

    def summary(self) -> dict:
        a = self.arch
        ok = [t for t in self.trials if t["status"] == STATUS_OK]
        failed = [t for t in self.trials if t["status"] == STATUS_FAILED]
        return {
            "method": self.method,
            "budget": a["budget"]["text"] if a.get("budget") else None,
            "macs": a["macs"]["pruned"], "macs_base": a["macs"]["base"],
            "macs_ratio": a["macs"]["pruned"] / a["macs"]["base"],
            "utilisation": a["macs"]["pruned"] / a["budget"]["max_macs"] if a.get("budget") else None,
            "params": a["params"]["pruned"], "params_base": a["params"]["base"],
            "score": self.score, "candidates": len(ok), "failed": len(failed),
            "reclaimed": len(self.info.get("reclaimed", [])),
            "seconds": round(self.seconds, 2),
            "candidates_per_min": round(self.info.get("scored_here", 0) / max(self.seconds, 1e-9) * 60, 2),
            "widths": list(self.widths),
            "base": a.get("search", {}).get("base"), "base_score": a.get("search", {}).get("base_score"),
            "latency": ({k: a["search"]["latency"].get(k) for k in ("max_ms", "predicted_ms", "measured_ms",
                                                                   "measured_base_ms", "measured_ratio", "within",
                                                                   "held_max_ms")}
                        if a.get("search", {}).get("latency") else None),
            "arch": str(self.out / "arch.json") if self.out else None,
            "frozen": list(a.get("frozen", [])),
        }

    def __str__(self) -> str:
        s = self.summary()
        rows = [("method", s["method"]),
                ("MACs", f"{cost.human(s['macs'])} ({s['macs_ratio']:.3f} of {cost.human(s['macs_base'])}, "
                         f"budget {s['budget']}, {100 * (s['utilisation'] or 0):.1f} % used)"),
                ("params", f"{cost.human(s['params'])} ({s['params'] / s['params_base']:.3f} of base)"),
                *([("latency", _latency_line(s["latency"]))] if s["latency"] else []),
                ("score", "-" if s["score"] is None else f"{s['score']:.4f} ({_scored_on(self.arch)})"),
                *([("base", _base_line(self.arch["search"]))] if s["base"] else []),
                ("candidates", f"{s['candidates']} scored, {s['failed']} failed"
                               + (f", {s['reclaimed']} claims of dead workers re-queued" if s["reclaimed"] else "")),
                ("wall time", f"{s['seconds']:.1f} s"),
                ("widths", " ".join(map(str, s["widths"])))]
        rows += _stripe_rows(self.arch)
        for i, f in enumerate(s["frozen"]):  # one line per submodule the tracer could not look into
            rows.append(("frozen" if i == 0 else "", frozen_line(f)))
        if s["arch"]:
            rows.append(("wrote", s["arch"]))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def search_record(records: list[Record], *, seconds: float, objective: str, evaluator: dict | None = None,
                  data=None, base: dict | None = None, study: str | None = None, latency: dict | None = None,
                  report: dict | None = None) -> dict:
    """The ``search`` section of ``arch.json``: the study and its scored candidates, what scored
    them, the data split and the base checkpoint, the latency hold and the method's report."""
    scored = [r for r in records if r.status in (STATUS_OK, STATUS_FAILED)]
    ok = sum(r.status == STATUS_OK for r in scored)
    record = {**({"study": study} if study is not None else {}), "candidates": ok, "failed": len(scored) - ok,
              "objective": objective, **({"evaluator": evaluator} if evaluator is not None else {}),
              "seconds": round(seconds, 2), **(report or {})}
    if data is not None:
        m = data.meta
        record["dataset"] = {"dataset": str(m.get("name")), "split_seed": m.get("seed"),
                             "val_size": m.get("val_size"), "limit": m.get("limit")}
    if base:
        record.update(base=base["path"], base_sha1=base["sha1"])
        if base.get("epochs") is not None:
            record["base_epochs"] = int(base["epochs"])
        record.update(_base_record(base))
    if latency is not None:
        record["latency"] = latency
    return record


def write_result(out: Path, records: list[Record], best: Record, *, model_name: str, model_kwargs: dict, space,
                 limits, method: str, seed: int, record: dict, seconds: float, info: dict,
                 stripes: dict | None = None) -> SearchResult:
    """The winner ``best`` as ``OUT/arch.json`` (with ``stripes``, schema ``autoprune.arch/2``)
    and every scored candidate as ``OUT/trials.csv``; the :class:`SearchResult`."""
    budget = {k: v for k, v in limits.to_dict().items() if k != "latency"}  # the latency record is the hold's
    arch = make_arch(model_name, model_kwargs, space, best.widths, stripes=stripes, budget=budget, method=method,
                     seed=seed, score=None if best.score is None else float(best.score), extra={"search": record})
    rows = [r.row() for r in records if r.status in (STATUS_OK, STATUS_FAILED)]
    save_arch(arch, out / "arch.json")
    _write_csv(rows, out / "trials.csv")
    return SearchResult(widths=list(best.widths), arch=arch, trials=rows, method=method,
                        score=None if best.score is None else float(best.score), seconds=seconds, out=out, info=info)


def _base_line(record: dict) -> str:
    """The summary's base line: where its weights came from and its measured validation score."""
    kind = {"pretrained": f"pretrained {record.get('base_weights')}", "weights": "weights file"}
    score = record.get("base_score")
    return (f"{record['base']} ({kind.get(record.get('base_kind'), 'checkpoint')}), "
            + ("score not measured (no validation data)" if score is None else f"{score:.4f} ({_scored_on(record)})"))


def _scored_on(record: dict) -> str:
    """What a score was measured on: the validation split, or a task's own held-out data."""
    record = record.get("search", record)
    task = (record.get("evaluator") or {}).get("task") or {}
    return "validation" if task.get("name", "classification") == "classification" else f"task {task['name']}"


def _base_record(base: dict) -> dict:
    """What the architecture file says about the base beyond its path and SHA-1."""
    out = {"base_score": base["score"]} if base.get("score") is not None else {}
    if base.get("kind"):
        out["base_kind"] = base["kind"]
    if base.get("weights"):
        out["base_weights"] = base["weights"]
    return out


def _stripe_rows(arch: dict) -> list[tuple[str, str]]:
    """The summary's lines about a stripe-pruned model: stripes kept, convs left whole."""
    if "stripes" not in arch:
        return []
    info = arch.get("search", {}).get("stripe", {})
    kept = sum(m["kept"] for m in arch["stripes"].values())
    total = sum(m["shape"][0] * m["shape"][1] * m["shape"][2] for m in arch["stripes"].values())
    removed = info.get("removed_channels")
    whole = info.get("left_whole") or {}
    return [("stripes", f"{kept} of {total} kept in {len(arch['stripes'])} convs"
                        + (f"; {removed} channels removed (filters with no stripe)" if removed else "")),
            ("left whole", ", ".join(f"{n} ({why})" for n, why in whole.items()) or "-")]


def _latency_line(latency: dict) -> str:
    """The summary's latency line: predicted and measured, a tightened limit, a broken budget."""
    ratio = latency.get("measured_ratio") or latency["measured_ms"] / latency["measured_base_ms"]
    text = (f"{latency['predicted_ms']:.3f} ms predicted, {latency['measured_ms']:.3f} ms measured, {ratio:.3f} of "
            f"the base's {latency['measured_base_ms']:.3f} ms (budget {latency['max_ms']:.3f} ms predicted)")
    if (latency.get("held_max_ms") or latency["max_ms"]) < latency["max_ms"]:
        text += f"; the table predicted the winner too fast here: limit tightened to {latency['held_max_ms']:.3f} ms"
    return text + ("; measured OVER the budget on this device" if latency["within"] is False else "")


def _write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TRIAL_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(buf.getvalue(), path)
