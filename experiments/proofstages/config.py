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
