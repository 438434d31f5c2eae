"""Settings of the proof run as data: the parts, the stage settings (full and smoke) and the aims."""

from __future__ import annotations

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

# The second proof (--config v2): where searched widths should beat a uniform multiplier, if
# anywhere: compact models at low budgets, with enough candidates, every winner retrained with
# three seeds and compared per seed with uniform-fill, and a tau test over vectors that differ
# on purpose (lopsided allocations) instead of random draws alone. Settings are stored under
# "settings" like the first proof's, so that neither config resumes a results file of the other.
V2_FULL = {
    "config": "v2",
    # MobileNetV2's smallest network is at 0.074 of its MACs (min_ratio 0.1): its 0.05 is
    # recorded as unreachable, with the smallest reachable ratio.
    "models": {"mobilenetv2": ["0.3", "0.1", "0.05"], "resnet56": ["0.3", "0.1", "0.05"], "vgg16": ["0.1"]},
    "data": FULL["data"], "test_limit": None, "threads": None,
    "train": FULL["train"],
    "eval": FULL["eval"], "search_cudnn_benchmark": False,
    "searched": ["abc", "tpe"], "candidates": 160, "scorers": 4,  # scorer processes per searched study
    "one_shot": ["uniform", "uniform-fill", "l1-global", "slimming", "dmcp", "hrank"],
    "dmcp": FULL["dmcp"],
    "seeds": [0, 1, 2], "reference": "uniform-fill",
    # Per model and budget: every winner, then the lopsided allocations (a profile over the groups
    # in network order, scaled onto the budget), then random equal-MACs draws up to `vectors`.
    "tau": {"vectors": 24, "seeds": [0, 1], "bootstrap": 2000,
            "lopsided": {"early-heavy": [2.0, 4.0], "late-heavy": [2.0, 4.0], "bottleneck": [0.5, 0.25]}},
}

V2_SMOKE = {
    **V2_FULL,
    "models": {"resnet20": ["0.3"]},
    "data": {"name": "synthetic", "val_size": 64, "limit": None,
             "options": {"image_size": 16, "n_train": 256, "n_test": 64}},
    "threads": 1,
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "max_steps": 2},
    "eval": SMOKE["eval"],
    # One searched method: each spawns a scorer process, seconds of start-up on a CPU; tpe and the
    # rest of the one-shot methods run the same code (and the first proof's smoke runs them all).
    "searched": ["abc"], "candidates": 2, "scorers": 2,
    "one_shot": ["uniform", "uniform-fill"],
    "dmcp": SMOKE["dmcp"],
    "tau": {"vectors": 5, "seeds": [0, 1], "bootstrap": 200, "lopsided": {"early-heavy": [2.0]}},
}


def v2_parts(settings: dict) -> dict:
    """--part of a v2 run: the stages each part runs, named STAGE/MODEL[/BUDGET[/sSEED]]. First the
    bases, then a search part per model and budget (the searches, then the tau vectors' proxy
    scores), then a retrain part per model and budget (every seed), then a tau part per model,
    budget and tau seed; each is sized to stay under 10 minutes on one H200 (estimated, not yet
    measured: --budget-minutes guards it)."""
    models = settings["models"]
    cells = [(m, b) for m, budgets in models.items() for b in budgets]
    parts = [[f"base/{m}" for m in models]]
    parts += [[f"search/{m}/{b}", f"proxy/{m}/{b}"] for m, b in cells]
    parts += [[f"retrain/{m}/{b}/s{s}" for s in settings["seeds"]] for m, b in cells]
    parts += [[f"tau/{m}/{b}/s{s}"] for m, b in cells for s in settings["tau"]["seeds"]]
    out = {i + 1: tuple(part) for i, part in enumerate(parts)}
    return {None: tuple(name for part in parts for name in part), **out}


def v2_needs(name: str) -> list[str]:
    """The stages a v2 stage reads: a search its model's base, proxy and retrain their search, a
    tau seed the proxy vectors and that seed's retrains (whose vectors it does not train again)."""
    kind, model, *rest = name.split("/")
    cell = "/".join([model, *rest[:1]])
    if kind == "tau":
        return [f"proxy/{cell}", f"retrain/{cell}/{rest[-1]}"]
    return {"base": [], "search": [f"base/{model}"], "proxy": [f"search/{cell}"], "retrain": [f"search/{cell}"]}[kind]
